import { loadavg, cpus } from 'node:os'
import { dealCost, overlapsAny, type Cfp, type LayerRange, type Terms } from '../../protocols/index.ts'
import { headCommitments } from './holdings.ts'
import type { NegotiationBook } from './book.ts'
import type { MarketAction, MarketGuard, Verdict } from './guard.ts'
import { withinHours, type Bounds } from './owner-policy.ts'

export function machineIsIdle (): boolean {
  return loadavg()[0] / Math.max(1, cpus().length) < 0.5
}

export interface PolicyDeps {
  me: string
  book: NegotiationBook
  bounds: () => Bounds
  now?: () => number
  isIdle?: () => boolean
  /** A head's contracts this close to their end are being renewed: buying their layers again is allowed (see dueForRenewal). */
  renewBeforeMs?: number
  /** Why the owner has stopped all new work (paused, kill switch), or undefined while work is allowed. */
  halted?: () => string | undefined
}

/**
 * The owner's policy (owner-policy.ts) enforced outside the LLM: every market move is checked here
 * before it is made, and a refusal carries the reason (fed back to the LLM). It reads only binding
 * terms, our own records and the owner's current bounds, never what a peer wrote, so no text can argue
 * it out of a bound. While the owner has paused the agent (or used the kill switch) every move is refused.
 */
export class PolicyGuard implements MarketGuard {
  constructor (private readonly deps: PolicyDeps) {}

  async check (a: MarketAction): Promise<Verdict> {
    const halted = this.deps.halted?.()
    if (halted !== undefined) return no(halted)
    const b = this.deps.bounds()
    switch (a.type) {
      case 'publish_cfp':
        if (a.budget > b.budget) return no(`budget ${a.budget} is above the owner's budget of ${b.budget} per million tokens`)
        if (a.budget > b.ceiling * (a.want.end - a.want.start)) return no(`budget ${a.budget} would allow more than the ceiling of ${b.ceiling} per layer`)
        return yes
      case 'propose':
        return await this.asWorker(a.cfp, a.terms, b, false)
      case 'counter':
      case 'accept':
        if (a.role === 'worker') return await this.asWorker(a.cfp, a.terms, b, false)
        return await this.asHead(a.cfp.cfpId, a.cfp.model, a.cfp.want, a.cfp.budget, a.peer, a.terms, b)
      case 'sign_contract': {
        const terms: Terms = { start: a.contract.start, end: a.contract.end, price: a.contract.price, expiresAt: Number.MAX_SAFE_INTEGER }
        if (a.role === 'worker') return await this.asWorker(a.cfp, terms, b, true)
        return await this.asHead(a.cfp.cfpId, a.cfp.model, a.cfp.want, a.cfp.budget, a.peer, terms, b)
      }
    }
  }

  /**
   * Could this worker win the call at all? The cheapest proposal it may make (one layer of the called
   * range at its floor) must pass its bounds (hours, idleness, deals, memory) and fit the call's budget.
   * Calls that fail are dropped before they cost an LLM turn.
   */
  async screenCall (cfp: Cfp): Promise<Verdict> {
    const halted = this.deps.halted?.()
    if (halted !== undefined) return no(halted)
    const b = this.deps.bounds()
    if (b.floor > cfp.budget) return no(`the call's budget of ${cfp.budget} is below our floor of ${b.floor} for a single layer`)
    const now = this.deps.now?.() ?? Date.now()
    return await this.asWorker(cfp, { start: cfp.want.start, end: cfp.want.start + 1, price: b.floor, expiresAt: now + 60_000 }, b, false)
  }

  /**
   * A worker never sells below its floor, never lends more memory than the owner allows (counting
   * deals already made), holds at most maxDeals, and works only in the owner's hours (and idle time).
   */
  private async asWorker (cfp: Cfp, t: Terms, b: Bounds, signing: boolean): Promise<Verdict> {
    const want = cfp.want
    // When signing, this call's own acceptance is already among the commitments: do not count it twice.
    const excludeCfp = signing ? cfp.cfpId : undefined
    const now = this.deps.now?.() ?? Date.now()
    if (!withinHours(b.hours, new Date(now))) return no(`the owner allows work only between ${b.hours?.start} and ${b.hours?.end}`)
    if (b.idleOnly && !(this.deps.isIdle ?? machineIsIdle)()) return no('the owner allows work only while this machine is idle, and it is busy')
    if (t.price < b.floor) return no(`price ${t.price} is below the floor of ${b.floor}`)
    if (t.start < want.start || t.end > want.end) return no(`layers [${t.start}, ${t.end}) are outside the called range [${want.start}, ${want.end})`)
    if (!signing && t.expiresAt <= now) return no('the terms have already expired')
    const committed = (await this.deps.book.committedThreads()).filter((th) => th.cfpId !== excludeCfp)
    if (!signing && committed.length >= b.maxDeals) return no(`already holding ${committed.length} deals, the owner allows ${b.maxDeals}`)
    if (signing && committed.length > b.maxDeals) return no(`signing would exceed the owner's ${b.maxDeals} deals`)
    const layerBytes = cfp.modelRef.layerBytes
    let usedBytes = 0
    for (const th of committed) {
      const n = await this.deps.book.negotiation(th.cfpId)
      usedBytes += (th.terms.end - th.terms.start) * (n?.cfp.modelRef.layerBytes ?? 0)
    }
    const need = (t.end - t.start) * layerBytes
    if (usedBytes + need > b.lendableBytes) {
      const fit = Math.max(0, Math.floor((b.lendableBytes - usedBytes) / Math.max(1, layerBytes)))
      return no(`${t.end - t.start} layers need ${mib(need)} but only ${mib(Math.max(0, b.lendableBytes - usedBytes))} may be lent (at most ${fit} layers)`)
    }
    return yes
  }

  /**
   * A head never pays above its ceiling per layer, never beyond its budget (the owner's, and the one it
   * announced) counting deals already made for this model, and never buys a layer twice (except to
   * renew a contract due for renewal: then the new deal takes the old one's place in the budget).
   */
  private async asHead (cfpId: string, model: string, want: LayerRange, cfpBudget: number, peer: string, t: Terms, b: Bounds): Promise<Verdict> {
    if (t.price > b.ceiling) return no(`price ${t.price} is above the ceiling of ${b.ceiling} per layer`)
    if (t.start < want.start || t.end > want.end) return no(`layers [${t.start}, ${t.end}) are outside the called range [${want.start}, ${want.end})`)
    const held = await headCommitments(this.deps.book, this.deps.me, model, { renewBeforeMs: this.deps.renewBeforeMs ?? 0, now: this.deps.now?.(), except: { cfpId, peer } })
    if (overlapsAny(t, held.map((h) => h.range))) return no(`layers [${t.start}, ${t.end}) overlap layers already bought or being bought`)
    const spentInCall = held.filter((h) => h.cfpId === cfpId).reduce((s, h) => s + h.cost, 0)
    const spentOnModel = held.reduce((s, h) => s + h.cost, 0)
    if (spentInCall + dealCost(t) > cfpBudget) return no(`this deal (${dealCost(t)}) would take the call past its budget of ${cfpBudget} (${spentInCall} committed)`)
    if (spentOnModel + dealCost(t) > b.budget) return no(`this deal (${dealCost(t)}) would take the model past the owner's budget of ${b.budget} (${spentOnModel} committed)`)
    return yes
  }
}

const yes: Verdict = { ok: true }
function no (reason: string): Verdict {
  return { ok: false, reason }
}

function mib (bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(1)} MiB`
}
