import { join } from 'node:path'
import { dueForRenewal, expireStaleOffers } from '../skills/market/expiry.ts'
import { exactCover } from '../skills/assembly/cover.ts'
import { SqliteSaver } from '@langchain/langgraph-checkpoint-sqlite'
import { contractId, coverage, type ModelRef, type SignedContract } from '../protocols/index.ts'
import { AgentSettingsSchema, type AgentSettings } from '../runtime/config.ts'
import type { MeshNode } from '../runtime/node/node.ts'
import type { Logger } from '../runtime/log.ts'
import { NegotiationBook } from '../skills/market/book.ts'
import { MarketDesk, type MarketEvent } from '../skills/market/desk.ts'
import { marketTools, threadFor } from '../skills/market/tools.ts'
import { PipelineStartError, type Pipeline, type PipelineFault, type PipelineRunner } from '../skills/assembly/pipeline.ts'
import { queryContracts } from '../runtime/node/contract-query.ts'
import { peerIdFromString } from '@libp2p/peer-id'
import { buildAgentGraph, type AgentGraph } from './graph.ts'
import { startLifecycle, stateOf, type LifecycleActor, type LifecycleState } from './lifecycle.ts'
import { migrateAgentTables } from './migrations.ts'
import { systemPrompt, type AgentEvent } from './observation.ts'
import { Perception } from './perception.ts'
import { AGENT_NAME_META } from './transcript.ts'
import { PolicyGuard } from '../skills/market/policy-guard.ts'
import { OwnerPolicy } from '../skills/market/owner-policy.ts'
import { KILLED, runDrainers } from '../runtime/node/controls.ts'
import { AgentControls } from './controls.ts'
import { AgentRecords } from './records.ts'
import { createBrain, publicLabel, type Brain } from './brains/providers.ts'
import { OfflineNegotiator } from './brains/offline.ts'

export const THREADS_DB_FILE = 'agent-threads.db'

export interface ClawBotOptions {
  /** The LLM; default: from the node's config (agent.llm), the offline negotiator when none is set. */
  brain?: Brain
  /** Starts the pipeline once a head's contracts cover a model. */
  runner?: PipelineRunner
  /** Overrides applied over the config's agent settings. */
  settings?: Partial<AgentSettings>
  /** Free memory as the agent should see it (tests, demo); default: the OS's. */
  freeMemory?: () => number
  /** A worker not heard from for this long has left (default: 3 presence intervals). */
  departAfterMs?: number
  /** How long contracts bind (default one hour). */
  serveForMs?: number
  /** Calls for proposals a head makes for one model before it rests (default 8). */
  maxCalls?: number
  /** How long a head rests after maxCalls calls without full coverage, before calling again (default 60 s). */
  callRestMs?: number
}

export interface Assembly {
  model: ModelRef & { path?: string }
  contracts: SignedContract[]
  pipeline?: Pipeline
  /** Why the pipeline did not start, when it did not. */
  pipelineError?: string
}

interface Goal {
  model: ModelRef & { path?: string }
  calls: number
  assembled?: Assembly
  /** A pipeline start is in flight: do not start another. */
  starting: boolean
  since: number
  /** Failed pipeline starts, and when to try again (workers may still be starting their servers). */
  pipelineFailures: number
  retryAt: number
  /** Out of calls: no new call before then (0: not resting). */
  restUntil: number
}

/**
 * A pipeline that did not start is tried again after 2 s, then 4, 8, … up to a minute: the first try
 * often races a worker's rpc-server start, and a long-lived head must not give up on a covered model.
 */
const PIPELINE_RETRY_MS = 2000
const PIPELINE_RETRY_MAX_MS = 60_000
/** Contract states are compared with each counterpart this often (and whenever it connects). */
const RECONCILE_EVERY_MS = 30_000
/** A counterpart with no record of a contract this old has lost it (a contract just signed may still be on its way). */
const UNKNOWN_AFTER_MS = 120_000

/**
 * One ClawBot: a MeshNode's agent. Market events become turns of its LangGraph graph (one thread per
 * negotiation, checkpointed in the home); its lifecycle (xstate) follows what the market does and is
 * persisted in the node's database; as a head it watches coverage and departures and re-negotiates.
 * Turns run one at a time: one agent, one train of thought.
 */
export class ClawBot {
  readonly book: NegotiationBook
  readonly records: AgentRecords
  readonly desk: MarketDesk
  readonly settings: AgentSettings
  readonly perception: Perception
  readonly lifecycle: LifecycleActor
  /** The owner's policy: the board edits it, the guard and the observations read it. */
  readonly owner: OwnerPolicy
  /** The state a crash interrupted, when this run resumed from a snapshot. */
  readonly resumedFrom?: string
  private readonly goals = new Map<string, Goal>()
  private readonly goalModels = new Map<string, ModelRef>()
  private queue: Promise<void> = Promise.resolve()
  private pending = 0
  private ticker: NodeJS.Timeout | undefined
  private stopping = false
  private snapshotWrite: Promise<void> = Promise.resolve()
  private readonly assembledListeners = new Set<(a: Assembly) => void>()
  private readonly contractListeners = new Set<(c: SignedContract, role: 'head' | 'worker') => void>()
  private readonly brokenListeners = new Set<(model: ModelRef, why: string) => void>()
  private readonly log: Logger
  /** Departures are judged from here at the earliest: a restarted agent first waits to hear its peers. */
  private readonly startedAt = Date.now()
  private readonly reconciledAt = new Map<string, number>()
  private readonly reconciling = new Set<string>()
  private onPeerConnect: ((evt: CustomEvent<{ toString: () => string }>) => void) | undefined
  /** The owner's pause (its reason) or kill switch: while set, the guard refuses every move. */
  private haltedBy: string | undefined
  private killedFlag = false
  /** Why the next lifecycle transition happens, when the owner caused it (node.state's history shows it). */
  private transitionReason: string | undefined
  graph!: AgentGraph
  brain!: Brain
  private checkpointer!: SqliteSaver

  private constructor (readonly node: MeshNode, private readonly opts: ClawBotOptions, persisted: unknown, settings: AgentSettings, owner: OwnerPolicy) {
    this.log = node.log.child('agent')
    this.settings = settings
    this.owner = owner
    this.book = new NegotiationBook(node.store)
    this.records = new AgentRecords(node.store)
    if (node.bus === undefined) throw new Error('start the node before its agent')
    this.desk = new MarketDesk(node.bus, node.key, node.peerId.toString(), node.config.networkId, this.book, this.log.child('market'))
    this.perception = new Perception(node, this.book, this.settings, owner, this.goalModels, opts.freeMemory)
    const { actor, resumedFrom } = startLifecycle(persisted)
    this.lifecycle = actor
    this.resumedFrom = resumedFrom
  }

  /** Boots the agent on a started node: restores its lifecycle and threads, joins the market. */
  static async start (node: MeshNode, opts: ClawBotOptions = {}): Promise<ClawBot> {
    await migrateAgentTables(node.store)
    await node.store.setMeta(AGENT_NAME_META, node.config.name)
    const saved = await new AgentRecords(node.store).loadSnapshot()
    const settings = AgentSettingsSchema.parse({ ...node.config.agent, ...opts.settings })
    const owner = await OwnerPolicy.load(node, settings)
    const bot = new ClawBot(node, opts, saved?.snapshot, settings, owner)
    await bot.boot()
    return bot
  }

  private async boot (): Promise<void> {
    this.lifecycle.subscribe((snap) => {
      this.node.setState(String(snap.value), this.transitionReason)
      const persisted = this.lifecycle.getPersistedSnapshot()
      this.snapshotWrite = this.snapshotWrite.then(async () => await this.records.saveSnapshot(String(snap.value), persisted))
        .catch((err: unknown) => this.log.error('could not persist the lifecycle', { error: (err as Error).message }))
    })
    try {
      this.brain = this.opts.brain ?? await createBrain(this.settings.llm)
      this.checkpointer = SqliteSaver.fromConnString(join(this.node.home, THREADS_DB_FILE))
      const policy = new PolicyGuard({ me: this.perception.me, book: this.book, bounds: () => this.perception.bounds(), renewBeforeMs: this.settings.renewBeforeMs, halted: () => this.haltedBy })
      this.desk.screenCalls(async (cfp) => await policy.screenCall(cfp))
      const tools = marketTools({
        desk: this.desk,
        guard: policy,
        offerTtlMs: this.settings.offerTtlMs,
        cfpWindowMs: this.settings.proposalWindowMs,
        serveForMs: this.opts.serveForMs ?? 3_600_000,
        maxRounds: this.settings.maxRounds,
        modelFor: (sha) => this.goalModels.get(sha),
        nameOf: (id) => this.perception.nameOf(id),
        record: (a) => { void this.records.logAction(a).catch((err: unknown) => this.log.warn('could not log an action', { error: (err as Error).message })) }
      })
      this.graph = buildAgentGraph({
        model: this.brain.model,
        tools,
        systemPrompt: systemPrompt(this.node.config.name),
        perceive: async (event) => await this.perception.perceive(event),
        checkpointer: this.checkpointer,
        label: publicLabel(this.brain.label),
        // An LLM that fails, hangs or answers garbage must not leave a negotiation unanswered.
        fallback: this.brain.model instanceof OfflineNegotiator ? undefined : new OfflineNegotiator(),
        llmTimeoutMs: this.settings.llm.timeoutMs,
        onFallback: (why) => {
          this.log.warn('the LLM failed; the offline negotiator plays this turn', { brain: this.brain.label, kind: why.kind, detail: why.detail })
          void this.node.activity.record('decision', `LLM ${why.kind === 'timeout' ? 'timed out' : why.kind === 'garbage' ? 'answered garbage' : 'failed'}; the offline negotiator played the turn`, { brain: this.brain.label, ...why })
            .catch((err: unknown) => this.log.warn('could not record the fallback', { error: (err as Error).message }))
        }
      })
      this.lifecycle.send({ type: 'BOOTED' })
      this.desk.onEvent((e) => { this.onMarket(e) })
      // Models we hold are markets we may be asked to serve in; so are the models peers advertise.
      for (const m of (await this.node.describe()).models) this.desk.watchModel(m.sha256)
      for (const p of this.node.presence?.peers() ?? []) for (const m of p.presence.models) this.desk.watchModel(m.sha256)
      this.node.presence?.onPresence((p) => { for (const m of p.presence.models) this.desk.watchModel(m.sha256) })
      for (const goal of await this.records.goals()) this.adoptGoal(goal)
      await this.desk.resume()
      // Contracts have one state on both sides: compare notes with every counterpart we meet.
      this.onPeerConnect = (evt) => { void this.reconcileWith(evt.detail.toString()) }
      this.node.host?.addEventListener('peer:connect', this.onPeerConnect as unknown as EventListener)
      for (const c of this.node.host?.getConnections() ?? []) void this.reconcileWith(c.remotePeer.toString())
      await this.syncLifecycle()
      this.lifecycle.send({ type: 'JOINED' })
      // From here the board's controls act on this agent (its lifecycle, its policy), not on the bare node.
      this.node.controls = new AgentControls(this)
      this.ticker = setInterval(() => { this.ticked = this.tick() }, 250)
      this.log.info('agent up', { brain: this.brain.label, state: this.state, resumedFrom: this.resumedFrom })
    } catch (err) {
      this.lifecycle.send({ type: 'FAIL', error: (err as Error).message })
      throw err
    }
  }

  get state (): LifecycleState {
    return stateOf(this.lifecycle)
  }

  get name (): string {
    return this.node.config.name
  }

  /** Subscribes to a model's market without holding it (a worker told what to look for). */
  watchModel (sha256: string): void {
    this.desk.watchModel(sha256)
  }

  /** As a head: get this model served by the mesh, layer by layer, and run it once covered. */
  async assemble (model: ModelRef & { path?: string }): Promise<void> {
    await this.records.saveGoal(model)
    this.adoptGoal(model)
  }

  /** Stops assembling a model (contracts already signed stay as they are). */
  async abandon (sha256: string): Promise<void> {
    await this.records.dropGoal(sha256)
    this.goals.delete(sha256)
  }

  private adoptGoal (model: ModelRef & { path?: string }): void {
    this.goalModels.set(model.sha256, model)
    if (!this.goals.has(model.sha256)) this.goals.set(model.sha256, { model, calls: 0, starting: false, since: Date.now(), pipelineFailures: 0, retryAt: 0, restUntil: 0 })
    this.desk.watchModel(model.sha256)
  }

  onAssembled (listener: (a: Assembly) => void): () => void {
    this.assembledListeners.add(listener)
    return () => this.assembledListeners.delete(listener)
  }

  /** A head's assembly fell apart (a worker left, a term ended): its pipeline is stopped and the range is bought again. */
  onBroken (listener: (model: ModelRef, why: string) => void): () => void {
    this.brokenListeners.add(listener)
    return () => this.brokenListeners.delete(listener)
  }

  /** Every contract this agent signs or receives countersigned (a worker starts serving on its first). */
  onContract (listener: (c: SignedContract, role: 'head' | 'worker') => void): () => void {
    this.contractListeners.add(listener)
    return () => this.contractListeners.delete(listener)
  }

  assembly (sha256: string): Assembly | undefined {
    return this.goals.get(sha256)?.assembled
  }

  // ---- the owner's controls (agents/controls.ts calls these) ----

  /** Why the agent takes no new work (the owner paused it, or used the kill switch); undefined while it does. */
  get halted (): string | undefined {
    return this.haltedBy
  }

  get killed (): boolean {
    return this.killedFlag
  }

  /** A turn is queued or running (work beside the market, such as a pull request, waits for none). */
  get busy (): boolean {
    return this.pending > 0
  }

  /** No new work until resume(): calls are not answered, no move passes the guard, a head calls for nothing. */
  pause (reason: string): void {
    if (this.killedFlag) return
    this.haltedBy = `the owner paused this agent (${reason})`
    this.ownerTransition({ type: 'PAUSE' }, reason)
  }

  resume (reason: string): void {
    if (this.killedFlag || this.haltedBy === undefined) return
    this.haltedBy = undefined
    this.ownerTransition({ type: 'RESUME' }, reason)
  }

  /**
   * The kill switch: no new move from now on; the turn at hand and the `drainers` (the engine's work in
   * flight) finish, pipelines stop, and the agent leaves gossip. Final until the node restarts.
   */
  async kill (reason: string, drainers: Iterable<() => Promise<void>> = []): Promise<void> {
    if (this.killedFlag) return
    this.killedFlag = true
    this.haltedBy = KILLED
    this.ownerTransition({ type: 'DRAIN' }, reason)
    await this.node.presence?.publishNow()
    const failed = await runDrainers(drainers)
    await this.shutdown()
    this.ownerTransition({ type: 'DRAINED' }, failed.length > 0 ? `${reason}; drain failures: ${failed.join('; ')}` : reason)
    await this.snapshotWrite
    this.lifecycle.stop()
    // The last heartbeat says 'stopped', so peers drop us from plans now rather than when it expires.
    await this.node.presence?.publishNow()
    this.node.leaveGossip()
  }

  private ownerTransition (event: { type: 'PAUSE' | 'RESUME' | 'DRAIN' | 'DRAINED' }, reason: string): void {
    this.transitionReason = reason
    try {
      this.lifecycle.send(event)
    } finally {
      this.transitionReason = undefined
    }
  }

  /** Waits until queued turns have run (tests, drain). */
  async idle (): Promise<void> {
    while (this.pending > 0) await this.queue
  }

  /** Leaves cleanly: finishes the turn at hand, stops pipelines, persists `stopped`. */
  async stop (): Promise<void> {
    if (this.stopping) return
    this.lifecycle.send({ type: 'DRAIN' })
    await this.shutdown()
    this.lifecycle.send({ type: 'DRAINED' })
    await this.snapshotWrite
    this.lifecycle.stop()
  }

  /** Stops without draining, as a crash would: the lifecycle snapshot keeps the state it was in. */
  async halt (): Promise<void> {
    await this.shutdown()
    await this.snapshotWrite
    this.lifecycle.stop()
  }

  private async shutdown (): Promise<void> {
    this.stopping = true
    clearInterval(this.ticker)
    if (this.onPeerConnect !== undefined) this.node.host?.removeEventListener('peer:connect', this.onPeerConnect as unknown as EventListener)
    this.desk.stop()
    await this.ticked
    await this.idle().catch(() => {})
    for (const goal of this.goals.values()) await goal.assembled?.pipeline?.stop().catch(() => {})
    try { (this.checkpointer as unknown as { db: { close: () => void } }).db.close() } catch {}
  }

  // ---- market events → turns ----

  private onMarket (e: MarketEvent): void {
    if (this.stopping) return
    switch (e.type) {
      case 'cfp':
        this.lifecycle.send({ type: 'NEGOTIATION_OPENED', cfpId: e.cfpId })
        this.enqueue({ type: 'cfp', cfpId: e.cfpId })
        break
      case 'deadline':
      case 'counter':
      case 'accepted':
      case 'rejected':
        this.enqueue(e.type === 'deadline' ? { type: 'deadline', cfpId: e.cfpId } : e)
        break
      case 'contracted':
        this.enqueueWork(async () => { await this.afterContract(e.cfpId, e.peer) })
        break
      case 'ended':
        this.log.info('the other party ended a contract', { peer: this.perception.nameOf(e.peer), contract: e.contractId, reason: e.reason })
        this.enqueueWork(async () => { await this.afterContractEnded() })
        break
    }
  }

  private enqueue (event: AgentEvent): void {
    this.enqueueWork(async () => { await this.turn(event) })
  }

  private enqueueWork (work: () => Promise<void>): void {
    this.pending++
    this.queue = this.queue.then(async () => {
      if (!this.stopping) await work()
    }).catch((err: unknown) => {
      this.log.error('agent turn failed', { error: (err as Error).message })
      this.lifecycle.send({ type: 'FAIL', error: (err as Error).message })
      // Recovery: the book and the threads are intact; rejoin and carry on with the next event.
      this.lifecycle.send({ type: 'RECOVER' })
      this.lifecycle.send({ type: 'JOINED' })
      // Recovering does not undo the owner's pause.
      if (this.haltedBy !== undefined && !this.killedFlag) this.ownerTransition({ type: 'PAUSE' }, this.haltedBy)
    }).finally(() => { this.pending-- })
  }

  /** One turn of the graph on the event's thread, then bookkeeping. */
  private async turn (event: AgentEvent): Promise<void> {
    const thread = event.type === 'assemble' ? threadFor({ assemble: event.model }) : threadFor({ cfpId: event.cfpId })
    await this.graph.invoke({ event }, { configurable: { thread_id: thread }, recursionLimit: 30 })
    if (event.type !== 'assemble') await this.settle(event.cfpId)
    await this.syncLifecycle()
  }

  /** A negotiation with nothing left in play is closed, so the lifecycle can move on. */
  private async settle (cfpId: string): Promise<void> {
    const n = await this.book.negotiation(cfpId)
    if (n === undefined || n.status === 'closed') return
    const threads = await this.book.threads(cfpId)
    const live = threads.filter((t) => ['proposed', 'countered', 'accepted'].includes(t.status))
    if (n.role === 'worker' && live.length === 0) await this.desk.closeNegotiation(cfpId)
    if (n.role === 'head' && n.status === 'choosing' && live.length === 0) await this.desk.closeNegotiation(cfpId)
  }

  private async afterContract (cfpId: string, peer: string): Promise<void> {
    await this.settle(cfpId)
    await this.syncLifecycle()
    const n = await this.book.negotiation(cfpId)
    const me = this.perception.me
    const signed = (await this.book.contracts({ cfpId })).find((c) => c.signed.doc.head === (n?.role === 'head' ? me : peer) && c.signed.doc.worker === (n?.role === 'head' ? peer : me))
    if (n !== undefined && signed !== undefined) for (const l of this.contractListeners) l(signed.signed, n.role)
    if (n?.role === 'head') await this.reviewGoal(n.model)
  }

  /** A contract ended under us (notice or reconciliation): the lifecycle follows, a head re-plans at once. */
  private async afterContractEnded (): Promise<void> {
    await this.syncLifecycle()
    for (const sha of this.goals.keys()) await this.reviewGoal(sha)
  }

  /**
   * Compares our active contracts with one counterpart and ends here what has ended there: a notice
   * sent while we were down (or while it was) is never heard, so the parties compare notes whenever
   * they meet, and every RECONCILE_EVERY_MS while connected.
   */
  private async reconcileWith (peer: string): Promise<void> {
    const host = this.node.host
    if (host === undefined || this.stopping || this.reconciling.has(peer)) return
    this.reconciling.add(peer)
    this.reconciledAt.set(peer, Date.now())
    try {
      const me = this.perception.me
      const mine = (await this.book.contracts({ status: 'active' })).filter((c) =>
        (c.signed.doc.head === me && c.signed.doc.worker === peer) || (c.signed.doc.worker === me && c.signed.doc.head === peer))
      if (mine.length === 0) return
      const states = await queryContracts(host, peerIdFromString(peer), this.node.config.networkId, mine.map((c) => c.id))
      let ended = 0
      for (const c of mine) {
        const there = states[c.id]
        const gone = there === 'broken' || there === 'ended' || (there === 'unknown' && Date.now() - c.createdAt > UNKNOWN_AFTER_MS)
        if (!gone || this.stopping) continue
        if (await this.book.endContract(c.id, there === 'broken' ? 'broken' : 'ended') === undefined) continue
        ended++
        this.log.info('contract ended by reconciliation', { peer: this.perception.nameOf(peer), layers: `${c.signed.doc.start}-${c.signed.doc.end}`, there })
      }
      if (ended > 0) this.enqueueWork(async () => { await this.afterContractEnded() })
    } catch (err) {
      this.log.debug('could not reconcile contracts', { peer, error: (err as Error).message })
    } finally {
      this.reconciling.delete(peer)
    }
  }

  /** Keeps the lifecycle's context in step with the book (which is the truth after any restart). */
  private async syncLifecycle (): Promise<void> {
    const open = new Set((await this.book.negotiations({ status: ['open', 'choosing'] })).map((n) => n.cfpId))
    const ctx = this.lifecycle.getSnapshot().context
    for (const id of open) if (!ctx.negotiations.includes(id)) this.lifecycle.send({ type: 'NEGOTIATION_OPENED', cfpId: id })
    for (const id of ctx.negotiations) if (!open.has(id)) this.lifecycle.send({ type: 'NEGOTIATION_CLOSED', cfpId: id })
    const me = this.perception.me
    const active = (await this.book.contracts({ status: 'active' })).filter((c) => c.signed.doc.head === me || c.signed.doc.worker === me).length
    for (let i = this.lifecycle.getSnapshot().context.contracts; i < active; i++) this.lifecycle.send({ type: 'CONTRACTED' })
    for (let i = this.lifecycle.getSnapshot().context.contracts; i > active; i--) this.lifecycle.send({ type: 'CONTRACT_ENDED' })
  }

  // ---- housekeeping: expiry, departures, coverage ----

  private ticking = false
  /** The housekeeping round in progress: shutdown waits for it, so it never meets a closed database. */
  private ticked: Promise<void> = Promise.resolve()

  private async tick (): Promise<void> {
    if (this.ticking || this.stopping || this.pending > 0) return
    this.ticking = true
    try {
      await this.expireStale()
      await this.endLapsed()
      await this.detectDepartures()
      for (const sha of this.goals.keys()) await this.reviewGoal(sha)
      const now = Date.now()
      for (const c of this.node.host?.getConnections() ?? []) {
        const peer = c.remotePeer.toString()
        if (now - (this.reconciledAt.get(peer) ?? 0) >= RECONCILE_EVERY_MS) void this.reconcileWith(peer)
      }
    } catch (err) {
      this.log.warn('housekeeping failed', { error: (err as Error).message })
    } finally {
      this.ticking = false
    }
  }

  /** Offers nobody answered lapse; an acceptance nobody countersigned lapses after the offer time. */
  private async expireStale (): Promise<void> {
    await expireStaleOffers(this.book, this.desk, this.settings.offerTtlMs, async (cfpId) => { await this.settle(cfpId) })
    await this.syncLifecycle()
  }

  /** Contracts whose term is over end; a worker's memory and deal slot are free again. */
  private async endLapsed (): Promise<void> {
    const ended = await this.book.endLapsedContracts()
    if (ended.length === 0) return
    for (const c of ended) this.log.info('contract term over', { layers: `${c.signed.doc.start}-${c.signed.doc.end}`, head: this.perception.nameOf(c.signed.doc.head), worker: this.perception.nameOf(c.signed.doc.worker) })
    await this.syncLifecycle()
  }

  /** A head's pipeline lost a contract (its worker left, or its term ended unrenewed): stop it and buy the range again. */
  private async teardown (goal: Goal, why: string): Promise<void> {
    if (goal.assembled === undefined) return
    await goal.assembled.pipeline?.stop().catch(() => {})
    goal.assembled = undefined
    goal.calls = 0
    goal.pipelineFailures = 0
    goal.retryAt = 0
    this.node.pipelines.set(goal.model.sha256, 'rebuilding', why.slice(0, 300))
    for (const l of this.brokenListeners) l(goal.model, why)
  }

  /**
   * The other party silent for departAfterMs has left: the contract breaks on our side, the other is
   * told (and a head buys the range again). Silence is counted from the contract's signing or from
   * this agent's start, whichever is later: a restarted agent waits to hear its peers before it judges.
   */
  private async detectDepartures (): Promise<void> {
    const me = this.perception.me
    const silentAfter = this.opts.departAfterMs ?? 3 * this.node.config.presenceIntervalMs
    const now = Date.now()
    const heard = new Map((this.node.presence?.peers() ?? []).map((p) => [p.peerId, p.receivedAt]))
    for (const c of await this.book.contracts({ status: 'active' })) {
      const { head, worker } = c.signed.doc
      if (head !== me && worker !== me) continue
      const other = head === me ? worker : head
      const last = heard.get(other) ?? Math.max(c.createdAt, this.startedAt)
      if (now - last < silentAfter) continue
      const role = head === me ? 'worker' : 'head'
      this.log.info(`${role} left; its contract is broken`, { [role]: this.perception.nameOf(other), layers: `${c.signed.doc.start}-${c.signed.doc.end}` })
      // The pipeline, when this contract is one of its own, is torn down by reviewGoal right after.
      await this.desk.endContract(c.id, 'broken', `${role} not heard from for ${Math.round((now - last) / 1000)} s`)
    }
    await this.syncLifecycle()
  }

  /**
   * Contracts tile the model → run the pipeline on them; gaps (or contracts due for renewal) and nothing
   * in play → call for proposals again. Renewals are bought before the old terms end, and the pipeline
   * moves onto them once they tile the model (make before break).
   */
  private async reviewGoal (sha: string): Promise<void> {
    const goal = this.goals.get(sha)
    if (goal === undefined || this.stopping) return
    const now = Date.now()
    const active = await this.book.contracts({ model: sha, head: this.perception.me, status: 'active' })
    const activeIds = new Set(active.map((c) => c.id))
    const gone = goal.assembled?.contracts.find((c) => !activeIds.has(contractId(c.doc)))
    if (gone !== undefined && !goal.starting) await this.teardown(goal, `the contract of ${this.perception.nameOf(gone.doc.worker)} for layers [${gone.doc.start}, ${gone.doc.end}) is over (broken or lapsed)`)
    const lasting = exactCover(active.filter((c) => !dueForRenewal(c, this.settings.renewBeforeMs, now)).map((c) => c.signed), goal.model.nLayer)
    const cover = lasting ?? exactCover(active.map((c) => c.signed), goal.model.nLayer)
    if (cover !== undefined && !goal.starting) {
      const failed = goal.assembled?.pipeline === undefined && goal.assembled?.pipelineError !== undefined
      if (failed && now >= goal.retryAt) goal.assembled = undefined
      const move = lasting !== undefined && goal.assembled?.pipeline !== undefined && !sameContracts(goal.assembled.contracts, lasting) && now >= goal.retryAt
      if (goal.assembled === undefined || move) await this.startPipeline(goal, cover)
    }
    if (lasting !== undefined) return
    // A paused head keeps what it has running but buys nothing new.
    if (this.haltedBy !== undefined) return
    const inPlay = (await this.book.negotiations({ role: 'head', model: sha, status: ['open', 'choosing'] })).length > 0
    if (inPlay || this.pending > 0) return
    // Workers learn of a model from our presence and then subscribe: a call made while nobody listens is
    // wasted, and used to spend the head's calls (then a 60 s rest) before its first workers had started.
    if (this.desk.listeners(sha) === 0) return
    const held = await this.perception.headHoldings(sha)
    const missing = coverage(held.ranges, goal.model.nLayer).gaps
    if (missing.length === 0) return
    if (goal.calls >= (this.opts.maxCalls ?? 8)) {
      // Out of calls: rest, then try again (workers come and go; a long-lived agent must not give up for good).
      const restMs = this.opts.callRestMs ?? 60_000
      if (goal.restUntil === 0) {
        goal.restUntil = Date.now() + restMs
        this.log.warn('no full coverage after the allowed calls; resting before trying again', { model: goal.model.name, missing, restS: Math.round(restMs / 1000) })
      }
      if (Date.now() < goal.restUntil) return
      goal.calls = 0
      goal.restUntil = 0
    }
    goal.calls++
    this.enqueue({ type: 'assemble', model: sha, missing })
  }

  /**
   * A running pipeline failed (a worker died, hung or left): the paid API answers 503 at once, and the
   * next housekeeping round rebuilds, on the same contracts when their workers still answer, else
   * without the contract at fault (its range is bought again).
   */
  private onPipelineFailed (goal: Goal, assembly: Assembly, fault: PipelineFault): void {
    if (this.stopping || goal.assembled !== assembly || assembly.pipeline === undefined) return
    const why = describeFault(fault)
    assembly.pipeline = undefined
    assembly.pipelineError = `pipeline failed: ${why}`
    goal.retryAt = 0
    this.node.pipelines.set(goal.model.sha256, 'rebuilding', why.slice(0, 300))
    this.log.warn('pipeline failed; rebuilding', { model: goal.model.name, fault: fault.kind, reason: why })
    void this.node.activity.record('pipeline', `pipeline of ${goal.model.name} failed, rebuilding: ${why}`, { model: goal.model.sha256, kind: fault.kind }).catch(() => {})
    for (const l of this.brokenListeners) l(goal.model, why)
    if (fault.kind !== 'other') void this.dropFaultyContract(fault)
  }

  /** Ends the contract a fault names when it cannot serve again; true when it did. */
  private async dropFaultyContract (fault: PipelineFault): Promise<boolean> {
    if (fault.kind === 'other' || fault.contractId === undefined) return false
    const ended = await this.desk.endContract(fault.contractId, 'broken', fault.kind === 'gone' ? `worker unreachable: ${fault.reason}` : `worker refused the contract: ${fault.reason}`)
    if (ended) this.log.info('contract broken after a pipeline fault', { contract: fault.contractId, kind: fault.kind })
    return ended
  }

  private async startPipeline (goal: Goal, contracts: SignedContract[]): Promise<void> {
    goal.starting = true
    const sorted = [...contracts].sort((a, b) => a.doc.start - b.doc.start)
    const assembly: Assembly = { model: goal.model, contracts: sorted }
    const previous = goal.assembled
    if (previous?.pipeline === undefined) this.node.pipelines.set(goal.model.sha256, 'starting')
    try {
      if (this.opts.runner !== undefined) assembly.pipeline = await this.opts.runner.run(sorted, goal.model)
      else {
        assembly.pipelineError = 'no pipeline runner configured'
        goal.retryAt = Infinity // nothing would change by trying again
      }
    } catch (err) {
      assembly.pipelineError = (err as Error).message
      const fault = err instanceof PipelineStartError ? err.fault : undefined
      if (fault !== undefined && await this.dropFaultyContract(fault)) {
        // That contract cannot serve again: re-plan now (the range is bought again) instead of backing off.
        goal.retryAt = 0
      } else {
        goal.pipelineFailures++
        const wait = Math.min(PIPELINE_RETRY_MAX_MS, PIPELINE_RETRY_MS * 2 ** (goal.pipelineFailures - 1))
        goal.retryAt = Date.now() + wait
        this.log.warn('pipeline did not start', { model: goal.model.name, attempt: goal.pipelineFailures, retryS: wait / 1000, error: assembly.pipelineError })
      }
      if (previous?.pipeline === undefined) this.node.pipelines.set(goal.model.sha256, 'rebuilding', assembly.pipelineError.slice(0, 300))
    } finally {
      goal.starting = false
    }
    if (assembly.pipeline === undefined && previous?.pipeline !== undefined && goal.assembled === previous) {
      // Moving onto renewed contracts failed: keep serving on the old ones while they last.
      return
    }
    goal.assembled = assembly
    if (assembly.pipeline !== undefined) {
      goal.pipelineFailures = 0
      this.node.pipelines.set(goal.model.sha256, 'running')
      assembly.pipeline.onFailure?.((fault) => { this.onPipelineFailed(goal, assembly, fault) })
      if (previous?.pipeline !== undefined) await previous.pipeline.stop().catch(() => {})
    }
    this.log.info('model assembled', { model: goal.model.name, contracts: sorted.length, pipeline: assembly.pipeline !== undefined, renewed: previous?.pipeline !== undefined })
    for (const l of this.assembledListeners) l(assembly)
  }

}

/** How a fault reads in logs and on the board. */
function describeFault (f: PipelineFault): string {
  return f.worker !== undefined ? `worker ${f.worker.slice(-8)} failed: ${f.reason}` : f.reason
}

function sameContracts (a: readonly SignedContract[], b: readonly SignedContract[]): boolean {
  const ids = new Set(a.map((c) => contractId(c.doc)))
  return a.length === b.length && b.every((c) => ids.has(contractId(c.doc)))
}
