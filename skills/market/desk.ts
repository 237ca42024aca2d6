import { randomBytes } from 'node:crypto'
import type { PrivateKey } from '@libp2p/interface'
import {
  AcceptKind, CfpKind, CfpSchema, ContractEndKind, ContractKind, CounterKind, MARKET_KINDS, ProposeKind, RejectKind,
  contractFromTerms, contractId, marketScope, sameContract, signContract, verifyContract, verifyContractSig,
  type Accept, type Cfp, type ContractEnd, type ContractMsg, type Counter, type Envelope, type MessageKind, type ModelRef,
  type Propose, type Reject, type SignedContract, type Terms
} from '../../protocols/index.ts'
import type { GossipBus } from '../../runtime/node/gossip.ts'
import type { Logger } from '../../runtime/log.ts'
import { RateLimiter } from '../../runtime/gateway/rate-limit.ts'
import { NegotiationBook, type Negotiation, type Thread } from './book.ts'

/** What the desk tells the agent about; each event is a reason for the agent to deliberate. */
export type MarketEvent =
  | { type: 'cfp', cfpId: string, peer: string }
  | { type: 'deadline', cfpId: string }
  | { type: 'counter', cfpId: string, peer: string }
  | { type: 'accepted', cfpId: string, peer: string }
  | { type: 'rejected', cfpId: string, peer: string, reason: string }
  | { type: 'contracted', cfpId: string, peer: string, contractId: string }
  /** The other party ended a contract before its term (it is ended here too). */
  | { type: 'ended', cfpId: string, peer: string, contractId: string, reason: string }

/** A protocol rule broken by our own side: the tool turns it into a refusal for the LLM. */
export class MarketError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'MarketError'
  }
}

const scopeOf = (body: { model: string }): string => marketScope(body.model)

/** Calls for proposals taken from one peer: a burst, then one more every 60/perMinute s. */
export interface CallLimits { burst: number, perMinute: number }
export const DEFAULT_CALL_LIMITS: CallLimits = { burst: 5, perMinute: 12 }

/** Whether this agent could win a call at all (its bounds); a reason when not. */
export type CallScreen = (cfp: Cfp) => Promise<{ ok: true } | { ok: false, reason: string }>

const inRange = (t: { start: number, end: number }, want: { start: number, end: number }): boolean => t.start >= want.start && t.end <= want.end

/**
 * The market as the runtime sees it: signed messages on the model's topic in, state in the book,
 * events to the agent out; and the primitive moves (call, propose, counter, accept, reject, sign) that
 * the agent's tools make after policy has approved them. The desk enforces the protocol (whose turn it
 * is, what may be accepted, that a contract matches the terms on the table), not the owner's policy.
 */
export class MarketDesk {
  readonly book: NegotiationBook
  readonly me: string
  private readonly watched = new Set<string>()
  private readonly timers = new Map<string, NodeJS.Timeout>()
  private listener: (e: MarketEvent) => void = () => {}
  private stopped = false
  /** Every call may cost the agent an LLM turn: a peer gets only so many (see onCfp). */
  private readonly callLimiter = new RateLimiter()
  private screen: CallScreen | undefined

  constructor (
    private readonly bus: GossipBus,
    private readonly key: PrivateKey,
    me: string,
    private readonly networkId: string,
    book: NegotiationBook,
    private readonly log: Logger,
    private readonly callLimits: CallLimits = DEFAULT_CALL_LIMITS
  ) {
    this.me = me
    this.book = book
  }

  /** Calls this agent could not win (its bounds say so) are dropped before they cost an LLM turn. */
  screenCalls (screen: CallScreen): void {
    this.screen = screen
  }

  onEvent (listener: (e: MarketEvent) => void): void {
    this.listener = listener
  }

  /** Joins a model's market topic (all six kinds). */
  watchModel (sha256: string): void {
    if (this.watched.has(sha256)) return
    this.watched.add(sha256)
    const scope = marketScope(sha256)
    const on = <B extends { model: string }>(kind: MessageKind<B>, handler: (env: Envelope<B>) => Promise<void>): void => {
      this.bus.subscribe(kind, async (env) => {
        if (this.stopped) return
        await handler(env)
      }, { scope, scopeOf })
    }
    on(CfpKind, async (env) => { await this.onCfp(env) })
    on(ProposeKind, async (env) => { await this.onPropose(env) })
    on(CounterKind, async (env) => { await this.onCounter(env) })
    on(AcceptKind, async (env) => { await this.onAccept(env) })
    on(RejectKind, async (env) => { await this.onReject(env) })
    on(ContractKind, async (env) => { await this.onContract(env) })
    on(ContractEndKind, async (env) => { await this.onContractEnd(env) })
  }

  /** Peers subscribed to a model's calls for proposals: who would hear a call now. */
  listeners (sha256: string): number {
    return this.bus.subscribers(CfpKind, { scope: marketScope(sha256) })
  }

  watching (): string[] {
    return [...this.watched]
  }

  /** Re-arms deadline timers of our open calls after a restart; a passed deadline fires at once. */
  async resume (): Promise<void> {
    for (const n of await this.book.negotiations({ status: ['open', 'choosing'] })) {
      this.watchModel(n.model)
      if (n.role === 'head' && n.status === 'open') this.armDeadline(n.cfp)
    }
  }

  stop (): void {
    this.stopped = true
    for (const t of this.timers.values()) clearTimeout(t)
    this.timers.clear()
    for (const sha of this.watched) for (const kind of MARKET_KINDS) this.bus.unsubscribe(kind as MessageKind, { scope: marketScope(sha) })
    this.watched.clear()
  }

  // ---- moves (called by tools, after policy) ----

  async publishCfp (opts: { model: ModelRef, want: { start: number, end: number }, budget: number, windowMs: number, serveForMs: number, maxRounds: number, text: string }): Promise<Cfp> {
    const now = Date.now()
    const { sha256, name, nLayer, layerBytes } = opts.model
    const cfp: Cfp = CfpSchema.parse({
      cfpId: randomBytes(12).toString('base64url'),
      model: sha256,
      modelRef: { sha256, name, nLayer, layerBytes },
      want: opts.want,
      budget: opts.budget,
      deadline: now + opts.windowMs,
      serveUntil: now + opts.serveForMs,
      maxRounds: opts.maxRounds,
      text: opts.text
    })
    this.watchModel(cfp.model)
    // Recorded before sending: a quick proposal must find the negotiation it answers.
    await this.book.openNegotiation({ cfpId: cfp.cfpId, role: 'head', model: cfp.model, head: this.me, cfp, status: 'open' })
    try {
      await this.bus.publish(CfpKind, cfp, { scope: marketScope(cfp.model) })
    } catch (err) {
      await this.book.setNegotiationStatus(cfp.cfpId, 'closed')
      throw err
    }
    this.armDeadline(cfp)
    return cfp
  }

  async propose (cfpId: string, terms: Terms, text: string): Promise<void> {
    const n = await this.requireNegotiation(cfpId, 'worker')
    if (n.status !== 'open') throw new MarketError(`the call ${cfpId} is ${n.status}; proposals are closed`)
    if (Date.now() > n.cfp.deadline) throw new MarketError(`the call ${cfpId} stopped taking proposals ${Date.now() - n.cfp.deadline} ms ago`)
    if (!inRange(terms, n.cfp.want)) throw new MarketError(`layers [${terms.start}, ${terms.end}) are outside the called range [${n.cfp.want.start}, ${n.cfp.want.end})`)
    const existing = await this.book.thread(cfpId, n.head)
    if (existing !== undefined) throw new MarketError(`we already proposed in ${cfpId} (status ${existing.status}); counter instead`)
    await this.book.putThread({ cfpId, peer: n.head, status: 'proposed', terms, termsFrom: this.me, rounds: 0 })
    await this.send(ProposeKind, { cfpId, model: n.model, to: n.head, terms, text })
  }

  async counter (cfpId: string, peer: string, terms: Terms, text: string): Promise<void> {
    const { n, thread } = await this.requireThread(cfpId, peer)
    if (thread.termsFrom === this.me) throw new MarketError(`it is ${shortPeer(peer)}'s turn: our last terms in ${cfpId} are still on the table`)
    if (!['proposed', 'countered'].includes(thread.status)) throw new MarketError(`the thread with ${shortPeer(peer)} is ${thread.status}`)
    if (thread.rounds + 1 > n.cfp.maxRounds * 2) throw new MarketError(`no rounds left with ${shortPeer(peer)} (max ${n.cfp.maxRounds} each)`)
    if (!inRange(terms, n.cfp.want)) throw new MarketError(`layers [${terms.start}, ${terms.end}) are outside the called range [${n.cfp.want.start}, ${n.cfp.want.end})`)
    const round = thread.rounds + 1
    await this.book.putThread({ ...thread, status: 'countered', terms, termsFrom: this.me, rounds: round })
    await this.send(CounterKind, { cfpId, model: n.model, to: peer, round, terms, text })
  }

  /** Accepts the counterpart's terms exactly as they stand, and signs the contract they imply. */
  async accept (cfpId: string, peer: string, text: string): Promise<Terms> {
    const { n, thread } = await this.requireThread(cfpId, peer)
    if (thread.termsFrom === this.me) throw new MarketError(`the terms on the table with ${shortPeer(peer)} are our own; wait for an answer`)
    if (!['proposed', 'countered'].includes(thread.status)) throw new MarketError(`the thread with ${shortPeer(peer)} is ${thread.status}`)
    if (thread.terms.expiresAt < Date.now()) throw new MarketError(`the offer from ${shortPeer(peer)} expired ${Date.now() - thread.terms.expiresAt} ms ago`)
    const contract = this.draft(n, thread)
    const { sig } = await signContract(this.key, contract)
    await this.book.putThread({ ...thread, status: 'accepted', acceptance: { by: this.me, contract, sig } })
    await this.send(AcceptKind, { cfpId, model: n.model, to: peer, terms: thread.terms, contract, sig, text })
    return thread.terms
  }

  async reject (cfpId: string, peer: string, reason: string, text: string): Promise<void> {
    const n = await this.requireNegotiation(cfpId)
    const thread = await this.book.thread(cfpId, peer)
    if (thread !== undefined) {
      if (thread.status === 'contracted') throw new MarketError(`the deal with ${shortPeer(peer)} is already signed`)
      await this.book.putThread({ ...thread, status: 'rejected' })
    }
    await this.send(RejectKind, { cfpId, model: n.model, to: peer, reason: reason.slice(0, 300), text })
  }

  /** Countersigns what the counterpart accepted and signed; both then hold the same contract. */
  async signContract (cfpId: string, peer: string, text: string): Promise<{ id: string, signed: SignedContract }> {
    const { n, thread } = await this.requireThread(cfpId, peer)
    const acc = thread.acceptance
    if (thread.status !== 'accepted' || acc === undefined || acc.by !== peer) {
      throw new MarketError(`${shortPeer(peer)} has not accepted any terms in ${cfpId}; nothing to sign`)
    }
    const { role, sig } = await signContract(this.key, acc.contract)
    const signed: SignedContract = role === 'head'
      ? { doc: acc.contract, headSig: sig, workerSig: acc.sig }
      : { doc: acc.contract, headSig: acc.sig, workerSig: sig }
    const id = await this.book.saveContract(signed)
    await this.book.putThread({ ...thread, status: 'contracted' })
    await this.send(ContractKind, { cfpId, model: n.model, to: peer, contract: signed, text })
    // The side that countersigns holds the contract now too (a worker starts serving on it).
    this.listener({ type: 'contracted', cfpId, peer, contractId: id })
    return { id, signed }
  }

  async closeNegotiation (cfpId: string): Promise<void> {
    clearTimeout(this.timers.get(cfpId))
    this.timers.delete(cfpId)
    await this.book.setNegotiationStatus(cfpId, 'closed')
  }

  // ---- incoming ----

  private async onCfp (env: Envelope<Cfp>): Promise<void> {
    if (env.from === this.me) return
    const cfp = env.body
    if (cfp.deadline < Date.now()) return
    if (cfp.want.end > cfp.modelRef.nLayer) return this.log.warn('ignoring a call for layers the model does not have', { cfpId: cfp.cfpId })
    // Each call the agent hears may cost an LLM turn: a peer flooding calls is cut off here, before
    // anything is stored or deliberated.
    if (this.callLimiter.take(env.from, this.callLimits.perMinute, this.callLimits.burst) > 0) {
      return this.log.warn('call for proposals over the per-peer limit ignored', { cfpId: cfp.cfpId, from: env.from })
    }
    if (await this.book.negotiation(cfp.cfpId) !== undefined) return
    const verdict = await this.screen?.(cfp)
    if (verdict !== undefined && !verdict.ok) return this.log.info('call we could not win ignored', { cfpId: cfp.cfpId, reason: verdict.reason })
    await this.book.openNegotiation({ cfpId: cfp.cfpId, role: 'worker', model: cfp.model, head: env.from, cfp, status: 'open' })
    this.listener({ type: 'cfp', cfpId: cfp.cfpId, peer: env.from })
  }

  /** Proposals are recorded, not acted on: the head chooses once the deadline has passed. */
  private async onPropose (env: Envelope<Propose>): Promise<void> {
    const p = env.body
    if (p.to !== this.me) return
    const n = await this.book.negotiation(p.cfpId)
    if (n?.role !== 'head' || n.status !== 'open') return
    if (env.ts > n.cfp.deadline + 1000) return this.log.info('late proposal ignored', { cfpId: p.cfpId, from: env.from })
    if (await this.book.thread(p.cfpId, env.from) !== undefined) return
    if (!inRange(p.terms, n.cfp.want)) return this.log.warn('proposal outside the called range ignored', { cfpId: p.cfpId, from: env.from })
    await this.book.putThread({ cfpId: p.cfpId, peer: env.from, status: 'proposed', terms: p.terms, termsFrom: env.from, rounds: 0 })
  }

  private async onCounter (env: Envelope<Counter>): Promise<void> {
    const c = env.body
    if (c.to !== this.me) return
    const n = await this.book.negotiation(c.cfpId)
    const thread = await this.book.thread(c.cfpId, env.from)
    if (n === undefined || thread === undefined || n.status === 'closed') return
    if (thread.termsFrom !== this.me || !['proposed', 'countered'].includes(thread.status)) return this.log.warn('counter out of turn ignored', { cfpId: c.cfpId })
    if (c.round !== thread.rounds + 1 || c.round > n.cfp.maxRounds * 2) return this.log.warn('counter with a wrong round ignored', { cfpId: c.cfpId, round: c.round })
    if (!inRange(c.terms, n.cfp.want)) return this.log.warn('counter outside the called range ignored', { cfpId: c.cfpId, from: env.from })
    await this.book.putThread({ ...thread, status: 'countered', terms: c.terms, termsFrom: env.from, rounds: c.round })
    this.listener({ type: 'counter', cfpId: c.cfpId, peer: env.from })
  }

  /** An acceptance counts only if it accepts exactly our terms and its contract is the one they imply. */
  private async onAccept (env: Envelope<Accept>): Promise<void> {
    const a = env.body
    if (a.to !== this.me) return
    const n = await this.book.negotiation(a.cfpId)
    const thread = await this.book.thread(a.cfpId, env.from)
    if (n === undefined || thread === undefined || n.status === 'closed') return
    if (thread.termsFrom !== this.me || !['proposed', 'countered'].includes(thread.status)) return this.log.warn('acceptance of terms we did not offer ignored', { cfpId: a.cfpId })
    const expected = this.draft(n, thread)
    if (!sameContract(expected, a.contract)) return this.log.warn('acceptance whose contract differs from our terms ignored', { cfpId: a.cfpId })
    if (!await verifyContractSig(a.contract, env.from, a.sig)) return this.log.warn('acceptance with a bad contract signature ignored', { cfpId: a.cfpId })
    await this.book.putThread({ ...thread, status: 'accepted', acceptance: { by: env.from, contract: a.contract, sig: a.sig } })
    this.listener({ type: 'accepted', cfpId: a.cfpId, peer: env.from })
  }

  private async onReject (env: Envelope<Reject>): Promise<void> {
    const r = env.body
    if (r.to !== this.me) return
    const thread = await this.book.thread(r.cfpId, env.from)
    if (thread !== undefined && thread.status !== 'contracted') await this.book.putThread({ ...thread, status: 'rejected' })
    if (await this.book.negotiation(r.cfpId) !== undefined) this.listener({ type: 'rejected', cfpId: r.cfpId, peer: env.from, reason: r.reason })
  }

  /** The countersigned contract: it must be the very document we accepted and signed. */
  private async onContract (env: Envelope<ContractMsg>): Promise<void> {
    const m = env.body
    if (m.to !== this.me) return
    const thread = await this.book.thread(m.cfpId, env.from)
    const acc = thread?.acceptance
    if (thread === undefined || acc === undefined || acc.by !== this.me) return this.log.warn('contract for terms we never accepted ignored', { cfpId: m.cfpId })
    if (!sameContract(acc.contract, m.contract.doc)) return this.log.warn('contract differing from what we signed ignored', { cfpId: m.cfpId })
    // Binding only while our acceptance stands: one that lapsed, was declined or whose negotiation closed
    // was already let go of (its memory and deal slot freed), and a late countersignature must not
    // revive it past the owner's bounds. A contract-end notice tells the head, which ends its copy too:
    // such a contract is active nowhere.
    const n = await this.book.negotiation(m.cfpId)
    if (thread.status !== 'accepted' || n === undefined || n.status === 'closed') {
      const why = `our acceptance had ${thread.status === 'accepted' ? 'closed' : thread.status} before your countersignature arrived`
      this.log.warn('countersignature after our acceptance ended ignored', { cfpId: m.cfpId, thread: thread.status, negotiation: n?.status })
      if (thread.status !== 'contracted') {
        await this.send(ContractEndKind, { cfpId: m.cfpId, model: m.model, to: env.from, contractId: contractId(m.contract.doc), status: 'ended', reason: why, text: `No contract: ${why}.` })
      }
      return
    }
    const check = await verifyContract(m.contract)
    if (!check.ok) return this.log.warn('contract with bad signatures ignored', { cfpId: m.cfpId, reason: check.reason })
    const id = await this.book.saveContract(m.contract)
    await this.book.putThread({ ...thread, status: 'contracted' })
    this.listener({ type: 'contracted', cfpId: m.cfpId, peer: env.from, contractId: id })
  }

  /**
   * Ends one of our active contracts before its term and tells the other party, so that the contract
   * has one state on both sides (the worker frees the memory and the deal slot, the head stops billing
   * and buys the range again). The notice travels by gossip; a party that misses it learns the state
   * when the two next compare notes (runtime/node/contract-query.ts).
   */
  async endContract (id: string, status: 'broken' | 'ended', reason: string): Promise<boolean> {
    const ended = await this.book.endContract(id, status)
    if (ended === undefined) return false
    const doc = ended.signed.doc
    const other = doc.head === this.me ? doc.worker : doc.head
    await this.send(ContractEndKind, { cfpId: doc.cfpId, model: doc.model, to: other, contractId: id, status, reason: reason.slice(0, 300), text: `Contract for layers [${doc.start}, ${doc.end}) ends: ${reason}`.slice(0, 2000) })
      .catch((err: unknown) => this.log.warn('could not send a contract-end notice', { contract: id, error: (err as Error).message }))
    return true
  }

  private async onContractEnd (env: Envelope<ContractEnd>): Promise<void> {
    const m = env.body
    if (m.to !== this.me) return
    const [c] = await this.book.contracts({ id: m.contractId, cfpId: m.cfpId })
    if (c === undefined) return
    const { head, worker } = c.signed.doc
    // Only the other party may end it: the envelope's author is authenticated, the body's claims are not.
    if (!((head === this.me && worker === env.from) || (worker === this.me && head === env.from))) return this.log.warn('contract-end notice from a non-party ignored', { contract: m.contractId, from: env.from })
    if (await this.book.endContract(m.contractId, m.status) === undefined) return
    this.listener({ type: 'ended', cfpId: m.cfpId, peer: env.from, contractId: m.contractId, reason: m.reason })
  }

  // ---- helpers ----

  private draft (n: Negotiation, thread: Thread): ReturnType<typeof contractFromTerms> {
    const head = n.head
    const worker = n.role === 'head' ? thread.peer : this.me
    return contractFromTerms({ net: this.networkId, cfp: n.cfp, head, worker, terms: thread.terms })
  }

  private armDeadline (cfp: Cfp): void {
    clearTimeout(this.timers.get(cfp.cfpId))
    const fire = (): void => {
      this.timers.delete(cfp.cfpId)
      if (this.stopped) return
      void this.book.setNegotiationStatus(cfp.cfpId, 'choosing')
        .then(() => this.listener({ type: 'deadline', cfpId: cfp.cfpId }))
        .catch((err: unknown) => this.log.error('could not close a call for proposals', { cfpId: cfp.cfpId, error: (err as Error).message }))
    }
    this.timers.set(cfp.cfpId, setTimeout(fire, Math.max(0, cfp.deadline - Date.now())))
  }

  private async requireNegotiation (cfpId: string, role?: 'head' | 'worker'): Promise<Negotiation> {
    const n = await this.book.negotiation(cfpId)
    if (n === undefined) throw new MarketError(`no negotiation ${cfpId}`)
    if (role !== undefined && n.role !== role) throw new MarketError(`we are the ${n.role} in ${cfpId}, not the ${role}`)
    return n
  }

  private async requireThread (cfpId: string, peer: string): Promise<{ n: Negotiation, thread: Thread }> {
    const n = await this.requireNegotiation(cfpId)
    if (n.status === 'closed') throw new MarketError(`the negotiation ${cfpId} is closed`)
    const thread = await this.book.thread(cfpId, peer)
    if (thread === undefined) throw new MarketError(`no offers exchanged with ${shortPeer(peer)} in ${cfpId}`)
    return { n, thread }
  }

  private async send<B extends { model: string }> (kind: MessageKind<B>, body: B): Promise<void> {
    await this.bus.publish(kind, body, { scope: marketScope(body.model) })
  }
}

export function shortPeer (peerId: string): string {
  return peerId.length > 12 ? `…${peerId.slice(-8)}` : peerId
}
