import { freemem } from 'node:os'
import { type Envelope, type LayerRange, type ModelRef } from '../protocols/index.ts'
import type { MeshNode } from '../runtime/node/node.ts'
import type { AgentSettings } from '../runtime/config.ts'
import type { NegotiationBook } from '../skills/market/book.ts'
import { headCommitments } from '../skills/market/holdings.ts'
import type { Bounds, OwnerPolicy } from '../skills/market/owner-policy.ts'
import { peerName } from '../protocols/peer-text.ts'
import { observationMessage, type AgentEvent, type Observation, type ThreadView } from './observation.ts'
import type { HumanMessage } from '@langchain/core/messages'

/**
 * What a ClawBot perceives: its machine (free memory, through the owner's bounds), the mesh (names from
 * presence) and the market (the book). Built fresh for every decision.
 */
export class Perception {
  constructor (
    private readonly node: MeshNode,
    private readonly book: NegotiationBook,
    private readonly settings: AgentSettings,
    /** The owner's policy, read afresh for every decision: a bound changed on the board shows at once. */
    private readonly owner: Pick<OwnerPolicy, 'on'>,
    private readonly goals: ReadonlyMap<string, ModelRef>,
    /** Lets tests and the demo pretend to have a given amount of free memory. */
    private readonly freeMemory: () => number = freemem
  ) {}

  get me (): string {
    return this.node.peerId.toString()
  }

  bounds (): Bounds {
    return this.owner.on({ freeMemory: this.freeMemory() })
  }

  nameOf (peerId: string): string {
    if (peerId === this.me) return this.node.config.name
    const p = this.node.presence?.peers().find((x) => x.peerId === peerId)
    // Presence names are chosen by peers and reach the LLM (observations, tool results) and terminals.
    return p?.presence.name === undefined ? `…${peerId.slice(-8)}` : peerName(p.presence.name, `…${peerId.slice(-8)}`)
  }

  /**
   * Ranges this head holds or is buying for a model, and what they cost per million tokens. Contracts
   * due for renewal count as gone: their ranges are bought again, and the budget pays for the new deals
   * rather than for both at once.
   */
  async headHoldings (model: string, cfpId?: string): Promise<{ ranges: LayerRange[], spent: number, spentInCall: number }> {
    const held = await headCommitments(this.book, this.me, model, { renewBeforeMs: this.settings.renewBeforeMs })
    return {
      ranges: held.map((h) => h.range),
      spent: held.reduce((s, h) => s + h.cost, 0),
      spentInCall: held.filter((h) => h.cfpId === cfpId).reduce((s, h) => s + h.cost, 0)
    }
  }

  /** The counterpart's latest words in a negotiation, from the stored dialogue. */
  private async lastSaid (cfpId: string, peer: string): Promise<string> {
    const rows = await this.node.store.db.all<{ envelope: string }>(
      "SELECT envelope FROM messages WHERE author = ? AND kind LIKE 'market-%' ORDER BY ts DESC LIMIT 50", [peer])
    for (const r of rows) {
      const env = JSON.parse(r.envelope) as Envelope<{ cfpId?: string, text?: string }>
      if (env.body.cfpId === cfpId) return env.body.text ?? ''
    }
    return ''
  }

  async observe (event: AgentEvent): Promise<Observation> {
    const bounds = this.bounds()
    const committed = await this.book.committedThreads()
    let committedBytes = 0
    for (const t of committed) {
      const n = await this.book.negotiation(t.cfpId)
      committedBytes += (t.terms.end - t.terms.start) * (n?.cfp.modelRef.layerBytes ?? 0)
    }
    const base = { event, me: { name: this.node.config.name, peerId: this.me }, bounds, committedBytes, deals: committed.length, now: Date.now() }
    if (event.type === 'assemble') {
      const held = await this.headHoldings(event.model)
      return { ...base, role: 'head', model: this.goals.get(event.model), threads: [], heldRanges: held.ranges, spent: held.spent }
    }
    const n = await this.book.negotiation(event.cfpId)
    if (n === undefined) throw new Error(`no negotiation ${event.cfpId} to observe`)
    const { text, ...cfp } = n.cfp
    const threads: ThreadView[] = []
    for (const t of await this.book.threads(n.cfpId)) {
      threads.push({
        peer: t.peer,
        name: this.nameOf(t.peer),
        status: t.status,
        terms: t.terms,
        from: t.termsFrom === this.me ? 'us' : 'them',
        rounds: t.rounds,
        said: t.termsFrom === this.me && t.status !== 'rejected' ? '' : await this.lastSaid(n.cfpId, t.peer)
      })
    }
    const held = n.role === 'head' ? await this.headHoldings(n.model, n.cfpId) : { ranges: [], spent: 0, spentInCall: 0 }
    return {
      ...base,
      role: n.role,
      model: n.cfp.modelRef,
      cfp,
      cfpText: n.role === 'worker' ? text : undefined,
      headName: this.nameOf(n.head),
      threads,
      heldRanges: held.ranges,
      spent: held.spent,
      callBudgetLeft: n.role === 'head' ? Math.max(0, n.cfp.budget - held.spentInCall) : undefined
    }
  }

  async perceive (event: AgentEvent): Promise<HumanMessage> {
    return observationMessage(await this.observe(event))
  }
}
