import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import type { PrivateKey, PeerId } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import type { Presence } from '../../protocols/index.ts'
import { DATABASE_FILE, loadConfig, type Config, type ConfigInput } from '../config.ts'
import { createLogger, type Logger } from '../log.ts'
import { Store } from '../store/store.ts'
import { SOFTWARE_VERSION } from '../version.ts'
import { resolveModelPath, scanModelFiles, scanModels } from '../engine/catalog.ts'
import { createHost, type Host, type HostExtras } from './host.ts'
import { loadOrCreateIdentity } from './identity.ts'
import { GossipBus } from './gossip.ts'
import { hasOpenInvites, serveInvites } from './invites.ts'
import { Admissions } from './admission.ts'
import { Probation, UNADMITTED_SCORE, admissionGater } from './admission-gate.ts'
import { announceAdmission, listenForAdmissions, serveAdmissions, syncAdmissions } from './admission-sync.ts'
import { serveContractQueries } from './contract-query.ts'
import { PresenceService } from './presence.ts'
import { probeHardware } from './hardware.ts'
import { clearStatus, readLiveStatus, writeStatus, type NodeStatus } from './status-file.ts'
import { ActivityLog } from './activity.ts'
import { DefaultControls, type OwnerControls, type StateChange } from './controls.ts'
import { ServingMeter } from './serving.ts'
import { TrafficCounter } from './traffic.ts'
import { PipelineStates } from './pipelines.ts'

export { DATABASE_FILE }

export interface OpenNodeOptions {
  home: string
  /** Applied over the config file and environment (CLI flags, tests). */
  overrides?: Partial<ConfigInput>
  env?: NodeJS.ProcessEnv
  log?: Logger
  host?: HostExtras
}

/**
 * One ClawBot's node: identity, database, libp2p host, signed gossip and presence. Opening it reads
 * the home (creating identity and database on first use); start() joins the mesh; stop() leaves cleanly.
 */
export class MeshNode {
  host: Host | undefined
  bus: GossipBus | undefined
  presence: PresenceService | undefined
  /** What the agent did and why; any layer records here, the board shows it. */
  readonly activity: ActivityLog
  /**
   * The owner's controls (board): DefaultControls until a higher layer installs its own (the owner's
   * policy, skills/market; the agent's lifecycle, agents/controls.ts).
   */
  controls: OwnerControls
  /** Tokens served per model, recorded by the engine. */
  readonly serving = new ServingMeter()
  /** Streams and connections the host opened (status.json carries the counts). */
  readonly traffic = new TrafficCounter()
  /** The head's pipelines per model, as its agent reports them (board, status file). */
  readonly pipelines = new PipelineStates()
  /** Who may be in this private mesh (undefined on an open mesh). */
  admissions: Admissions | undefined
  private probation: Probation | undefined
  private currentState = 'offline'
  private readonly history: StateChange[] = [{ state: 'offline', at: Date.now() }]
  private readonly startedAt = Date.now()
  private statusTimer: NodeJS.Timeout | undefined
  private statusDirty: NodeJS.Timeout | undefined
  private readonly dialing = new Set<string>()
  private statusWrite: Promise<void> = Promise.resolve()
  private stopping = false
  private rejoinTimer: NodeJS.Timeout | undefined

  private constructor (
    readonly home: string,
    readonly config: Config,
    readonly key: PrivateKey,
    readonly peerId: PeerId,
    readonly store: Store,
    readonly log: Logger,
    private readonly hostExtras: HostExtras = {},
    activity: ActivityLog
  ) {
    this.activity = activity
    this.controls = new DefaultControls(this)
  }

  static async open (opts: OpenNodeOptions): Promise<MeshNode> {
    const config = await loadConfig(opts.home, opts.overrides, opts.env)
    await mkdir(opts.home, { recursive: true, mode: 0o700 })
    const log = opts.log ?? createLogger(config.name, config.logLevel)
    const { key, created } = await loadOrCreateIdentity(opts.home)
    const peerId = peerIdFromPrivateKey(key)
    if (created) log.info('created a new identity', { peerId: peerId.toString(), home: opts.home })
    const store = await Store.open(join(opts.home, DATABASE_FILE))
    await store.setMeta('peer_id', peerId.toString())
    const activity = await ActivityLog.open(store.db)
    return new MeshNode(opts.home, config, key, peerId, store, log, opts.host, activity)
  }

  /** What the node is doing; the agent's lifecycle sets it (setState records why). */
  get state (): string {
    return this.currentState
  }

  set state (state: string) {
    this.setState(state)
  }

  setState (state: string, reason?: string): void {
    if (state === this.currentState) return
    this.currentState = state
    this.history.push({ state, at: Date.now(), ...(reason !== undefined ? { reason } : {}) })
    if (this.history.length > 200) this.history.splice(0, this.history.length - 200)
    void this.activity.record('lifecycle', `state ${state}${reason !== undefined ? ': ' + reason : ''}`, { state, reason })
      .catch(() => {}) // the database may already be closed when stop() sets 'stopped'
    if (this.host !== undefined) this.markStatusDirty()
  }

  /** State changes since the node opened, oldest first. */
  stateHistory (): StateChange[] {
    return this.history.map((h) => ({ ...h }))
  }

  /** Stops heartbeats and leaves every gossip topic, keeping the host (and the board) up. */
  leaveGossip (): void {
    this.presence?.stop()
    const pubsub = this.host?.services.pubsub
    if (pubsub !== undefined) for (const topic of pubsub.getTopics()) pubsub.unsubscribe(topic)
    void this.bus?.stop()
  }

  get modelsDir (): string {
    return this.config.modelsDir ?? join(this.home, 'models')
  }

  async start (): Promise<void> {
    const running = await readLiveStatus(this.home)
    if (running !== undefined && running.pid !== process.pid) {
      throw new Error(`a node is already running from ${this.home} (pid ${running.pid}); stop it first`)
    }
    this.state = 'booting'
    const extras: HostExtras = { metrics: this.traffic.metrics(), ...this.hostExtras }
    const admissionLog = this.log.child('admission')
    const admissions = this.config.meshKey !== undefined ? await Admissions.open(this.store, this.peerId.toString()) : undefined
    this.admissions = admissions
    if (admissions !== undefined) {
      // Extras given by the caller win (a test plays an intruder whose software lets everyone in).
      extras.connectionGater ??= admissionGater(admissions, async () => await hasOpenInvites(this.store), admissionLog)
      extras.appScore ??= (peer) => admissions.has(peer) ? 0 : UNADMITTED_SCORE
    }
    const host = await createHost(this.key, this.config, extras)
    this.host = host
    if (admissions !== undefined) this.probation = new Probation(host, admissions, this.config.admissionGraceMs, admissionLog)
    host.addEventListener('peer:connect', (evt) => {
      const addrs = host.getConnections(evt.detail).map((c) => c.remoteAddr.toString())
      // A peer on probation is not a peer we know: nothing of it is recorded until it is admitted.
      if (admissions === undefined || admissions.has(evt.detail.toString())) void this.store.touchPeer(evt.detail.toString(), addrs).catch(() => {})
      if (admissions !== undefined) this.admitOnConnect(evt.detail, admissions)
      this.markStatusDirty()
    })
    host.addEventListener('peer:disconnect', () => { this.markStatusDirty() })
    await serveInvites(host, this.store, this.log.child('invites'), admissions === undefined
      ? undefined
      : async (peer, invite) => {
        if (!await admissions.admit(peer, 'redemption', this.peerId.toString(), invite)) return
        admissionLog.info('admitted a peer that redeemed an invite', { peer, invite })
        if (this.bus !== undefined) await announceAdmission(this.bus, peer, invite).catch((err: unknown) => admissionLog.warn('could not announce an admission', { peer, error: (err as Error).message }))
      })
    if (admissions !== undefined) await serveAdmissions(host, admissions, this.config.networkId, admissionLog)
    await serveContractQueries(host, this.store, this.config.networkId, this.log.child('contracts'))
    this.bus = new GossipBus(host.services.pubsub, this.key, this.config.networkId, this.store, this.log.child('gossip'))
    if (admissions !== undefined) listenForAdmissions(this.bus, admissions, admissionLog)
    this.presence = new PresenceService(this.bus, host.services.pubsub, this.store, this.log.child('presence'), async () => await this.describe(), this.config.presenceIntervalMs)
    this.presence.onPresence((p) => {
      this.markStatusDirty()
      void this.meshWith(p.peerId, p.presence.addrs)
    })
    this.state = 'idle'
    await this.presence.start()
    await this.writeStatusNow()
    this.statusTimer = setInterval(() => { void this.writeStatusNow() }, Math.min(this.config.presenceIntervalMs, 5000))
    this.scheduleRejoin(1000)
    this.log.info('node started', {
      peerId: this.peerId.toString(),
      network: this.config.networkId,
      private: this.config.meshKey !== undefined,
      addrs: this.multiaddrs()
    })
  }

  async stop (): Promise<void> {
    this.stopping = true
    clearTimeout(this.rejoinTimer)
    clearInterval(this.statusTimer)
    clearTimeout(this.statusDirty)
    await this.statusWrite
    this.presence?.stop()
    this.probation?.stop()
    await this.bus?.stop()
    if (this.host !== undefined) await this.host.stop()
    this.host = undefined
    this.state = 'stopped'
    await clearStatus(this.home)
    await this.store.close()
    this.log.info('node stopped')
  }

  /** Dialable addresses of this node, each ending in /p2p/<peerId>. */
  multiaddrs (): string[] {
    return (this.host?.getMultiaddrs() ?? []).map((a) => a.toString()).filter((a) => !a.includes('/p2p-circuit'))
  }

  async describe (): Promise<Presence> {
    const warn = (msg: string): void => this.log.warn(msg)
    const models = await scanModels(this.modelsDir, this.store, warn)
    // The model agent.assemble names is announced wherever it lives: workers watch the market of the
    // models heads advertise, so a head that kept it outside modelsDir would call for proposals unheard.
    const assemble = this.config.agent?.assemble
    if (assemble !== undefined) {
      for (const m of await scanModelFiles([resolveModelPath(assemble, this.modelsDir)], this.store, warn)) {
        if (!models.some((held) => held.sha256 === m.sha256)) models.push(m)
      }
    }
    return {
      name: this.config.name,
      software: SOFTWARE_VERSION,
      hardware: await probeHardware({ gpu: this.config.probeGpu }),
      models,
      priceFloor: this.config.priceFloor,
      addrs: this.multiaddrs().slice(0, 16),
      uptimeS: Math.floor((Date.now() - this.startedAt) / 1000),
      state: this.state
    }
  }

  status (): NodeStatus {
    const host = this.host
    return {
      pid: process.pid,
      name: this.config.name,
      peerId: this.peerId.toString(),
      networkId: this.config.networkId,
      privateMesh: this.config.meshKey !== undefined,
      startedAt: this.startedAt,
      updatedAt: Date.now(),
      addrs: this.multiaddrs(),
      connections: (host?.getConnections() ?? []).map((c) => ({ peerId: c.remotePeer.toString(), addr: c.remoteAddr.toString(), direction: c.direction })),
      presentPeers: this.presence?.peers().length ?? 0,
      gossip: this.bus?.getStats() ?? { accepted: {}, published: {}, rejected: {} as NodeStatus['gossip']['rejected'] },
      state: this.state,
      traffic: this.traffic.counts(),
      memory: { rss: process.memoryUsage().rss },
      pipelines: this.pipelines.all(),
      serving: { tokens: Object.fromEntries(this.serving.total()), perSecond: Object.fromEntries(this.serving.rates()) }
    }
  }

  /**
   * libp2p's bootstrap dials once. If that dial fails (the peer was restarting, or refused us under its
   * inbound rate limit when many joined at once), a node would stay alone forever. So while we have no
   * connection at all, we redial the bootstrap list with backoff (1 s doubling to 30 s).
   */
  private scheduleRejoin (delayMs: number): void {
    if (this.config.bootstrap.length === 0 || this.stopping) return
    this.rejoinTimer = setTimeout(() => {
      void (async () => {
        const host = this.host
        if (host === undefined || this.stopping) return
        if (host.getConnections().length > 0) { this.scheduleRejoin(1000); return }
        this.log.info('no peers: dialling the bootstrap list again', { retryInMs: delayMs })
        await Promise.allSettled(this.config.bootstrap.map(async (a) => await host.dial(multiaddr(a), { signal: AbortSignal.timeout(5000) })))
        // Jitter: nodes refused together should not all come back in the same instant.
        this.scheduleRejoin(host.getConnections().length > 0 ? 1000 : Math.min(delayMs * 2, 30_000) * (0.75 + Math.random() / 2))
      })()
    }, delayMs)
  }

  /**
   * Bootstrap gives every node the same first neighbour; left alone the mesh would be a star that dies
   * with its hub. So while we have fewer than meshTarget connections, we dial peers we hear from. Only
   * addresses that name the announcing peer itself are dialled: a heartbeat cannot aim us at a third party.
   */
  private async meshWith (peerId: string, addrs: string[]): Promise<void> {
    const host = this.host
    if (host === undefined || peerId === this.peerId.toString()) return
    if (host.getConnections().length >= this.config.meshTarget) return
    if (host.getConnections().some((c) => c.remotePeer.toString() === peerId)) return
    if (this.dialing.has(peerId)) return
    const own = addrs.filter((a) => a.endsWith(`/p2p/${peerId}`)).slice(0, 4)
    if (own.length === 0) return
    this.dialing.add(peerId)
    try {
      await host.dial(own.map((a) => multiaddr(a)), { signal: AbortSignal.timeout(5000) })
    } catch (err) {
      this.log.debug('could not dial a present peer', { peer: peerId, error: (err as Error).message })
    } finally {
      this.dialing.delete(peerId)
    }
  }

  /**
   * Private mesh: a member that connects tells us whom it admitted (so a newcomer, or a member that was
   * down, catches up); a peer that is not admitted is on probation until it is, or is disconnected.
   */
  private admitOnConnect (peer: PeerId, admissions: Admissions): void {
    if (!admissions.has(peer.toString())) { this.probation?.watch(peer); return }
    const host = this.host
    if (host === undefined) return
    syncAdmissions(host, admissions, peer, this.config.networkId)
      .then((added) => { if (added > 0) this.log.child('admission').info('learned admitted peers from a member', { member: peer.toString(), added }) })
      .catch((err: unknown) => this.log.child('admission').debug('could not sync admissions', { member: peer.toString(), error: (err as Error).message }))
  }

  private markStatusDirty (): void {
    if (this.statusDirty !== undefined) return
    this.statusDirty = setTimeout(() => { this.statusDirty = undefined; void this.writeStatusNow() }, 250)
  }

  /** Status writes run one after another, so that stop() can wait for the last one before removing the file. */
  private async writeStatusNow (): Promise<void> {
    this.statusWrite = this.statusWrite.then(async () => {
      if (this.host === undefined || this.stopping) return
      try {
        await writeStatus(this.home, this.status())
      } catch (err) {
        this.log.warn('could not write status', { error: (err as Error).message })
      }
    })
    await this.statusWrite
  }
}
