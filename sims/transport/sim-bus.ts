import type { PrivateKey } from '@libp2p/interface'
import {
  EnvelopeRejected, MAX_CLOCK_SKEW_MS, REJECT_REASONS, ReplayGuard, encodeEnvelope, openEnvelope, sealEnvelope, topicFor, toBase64Url,
  type Envelope, type MessageKind, type RejectReason
} from '../../protocols/index.ts'
import type { GossipStats } from '../../runtime/node/gossip.ts'
import { TopicTable, type EnvelopeHandler, type ScopeOptions } from '../../runtime/node/topic-table.ts'
import type { SimClock } from '../core/clock.ts'
import type { Rng } from '../core/rng.ts'

/**
 * In-process transport for the simulator. A SimBus has the surface the market code uses on a node's
 * GossipBus (subscribe / unsubscribe / publish / topic / getStats), and goes through the same steps:
 * the publisher seals the envelope with its real Ed25519 key and encodes it to bytes; every receiver
 * runs the real `openEnvelope` on those bytes (schemas, network, signer, expiry against the simulated
 * clock, Ed25519 signature), the validator's topic and scope checks, and its own `ReplayGuard`, and
 * counts rejections by reason. Only gossipsub itself (mesh, relaying, scoring) is replaced by delivery
 * with a seeded latency on the simulated clock.
 *
 * Verification cache: every receiver of one publication gets the same byte array; `openEnvelope` on
 * identical bytes from the same publisher gives the same result, so it runs once per publication and
 * the other receivers reuse the result (the time-dependent checks — expiry, clock skew, and whether the
 * receiver knows the kind — are re-run per receiver at its delivery time; a time-dependent rejection is
 * never cached; bytes re-published by another peer are opened afresh). `verifyCache: false` turns it off.
 */

export interface SimNetworkOptions {
  networkId: string
  clock: SimClock
  rng: Rng
  latency: { baseMs: number, jitterMs: number }
  /**
   * 'full': every subscriber of a topic receives every message, like gossipsub. 'addressed': messages
   * with a single addressee (market replies carry `to`, receipt proposals `worker`, signatures `head`)
   * are delivered only to it; the skipped deliveries would have been validated and then dropped by the
   * desk's `to !== me` check, and are counted in `skippedDeliveries`.
   */
  fanout: 'full' | 'addressed'
  verifyCache: boolean
}

export interface NetworkStats {
  published: Record<string, number>
  publishedBytes: number
  deliveries: number
  skippedDeliveries: number
  accepted: Record<string, number>
  rejected: Record<RejectReason, number>
  seals: number
  sealMs: number
  opens: number
  openMs: number
  cacheHits: number
}

const ADDRESSEE: Record<string, (body: any) => string | undefined> = {
  'market-propose': (b) => b?.to,
  'market-counter': (b) => b?.to,
  'market-accept': (b) => b?.to,
  'market-reject': (b) => b?.to,
  'market-contract': (b) => b?.to,
  'receipt-proposal': (b) => b?.worker,
  'receipt-signature': (b) => b?.receipt?.head
}

type Cached = ({ env: Envelope } | { err: EnvelopeRejected }) & { signer: string, networkId: string }
const TIME_DEPENDENT: ReadonlySet<RejectReason> = new Set(['expired', 'from-future'])

export class SimNetwork {
  readonly buses = new Map<string, SimBus>()
  private readonly subs = new Map<string, Set<SimBus>>()
  private readonly cache = new WeakMap<Uint8Array, Cached>()
  /** Recent publications, as anyone listening on the public market could capture them. */
  /** Handler failures (GossipBus logs them); kept for the report. */
  readonly handlerErrors: string[] = []
  readonly captured: Array<{ bytes: Uint8Array, from: string, topic: string, kind: string }> = []
  readonly stats: NetworkStats = {
    published: {}, publishedBytes: 0, deliveries: 0, skippedDeliveries: 0, accepted: {},
    rejected: Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])) as Record<RejectReason, number>,
    seals: 0, sealMs: 0, opens: 0, openMs: 0, cacheHits: 0
  }

  private readonly rows = new WeakMap<Envelope, { envelope: string }>()

  constructor (readonly opts: SimNetworkOptions) {}

  /** The envelope as a `messages` row (JSON text), built once per envelope for all receivers. */
  row (env: Envelope): { envelope: string } {
    let r = this.rows.get(env)
    if (r === undefined) { r = { envelope: JSON.stringify(env) }; this.rows.set(env, r) }
    return r
  }

  get clock (): SimClock {
    return this.opts.clock
  }

  bus (key: PrivateKey, peerId: string): SimBus {
    const bus = new SimBus(this, key, peerId)
    this.buses.set(peerId, bus)
    return bus
  }

  join (topic: string, bus: SimBus): void {
    let set = this.subs.get(topic)
    if (set === undefined) { set = new Set(); this.subs.set(topic, set) }
    set.add(bus)
  }

  leave (topic: string, bus: SimBus): void {
    this.subs.get(topic)?.delete(bus)
  }

  subscribers (topic: string): number {
    return this.subs.get(topic)?.size ?? 0
  }

  private latency (): number {
    const { baseMs, jitterMs } = this.opts.latency
    return Math.max(0, baseMs + this.opts.rng.next() * jitterMs)
  }

  /** Sends bytes as gossipsub would: published by `from`, to every subscriber of the topic but the sender. */
  send (from: string, topic: string, bytes: Uint8Array, kind: string, body: unknown): void {
    this.stats.published[kind] = (this.stats.published[kind] ?? 0) + 1
    this.stats.publishedBytes += bytes.byteLength
    this.captured.push({ bytes, from, topic, kind })
    if (this.captured.length > 200) this.captured.splice(0, 100)
    const subs = this.subs.get(topic)
    if (subs === undefined) return
    const to = this.opts.fanout === 'addressed' ? ADDRESSEE[kind]?.(body) : undefined
    if (to !== undefined) {
      const target = this.buses.get(to)
      const reach = target !== undefined && subs.has(target) && to !== from
      this.stats.skippedDeliveries += subs.size - (subs.has(this.buses.get(from)!) ? 1 : 0) - (reach ? 1 : 0)
      if (reach) this.schedule(target, from, topic, bytes)
      return
    }
    for (const bus of subs) if (bus.peerId !== from) this.schedule(bus, from, topic, bytes)
  }

  private schedule (bus: SimBus, from: string, topic: string, bytes: Uint8Array): void {
    this.stats.deliveries++
    this.opts.clock.after(this.latency(), async () => { await bus.receive(from, topic, bytes) })
  }

  /** The validator's `openEnvelope`, once per byte array when the cache is on. */
  async open (bytes: Uint8Array, bus: SimBus, signer: string): Promise<Envelope> {
    const now = this.opts.clock.now()
    if (this.opts.verifyCache) {
      const hit = this.cache.get(bytes)
      // The same bytes re-published by someone else (or seen on another network) are opened afresh.
      if (hit !== undefined && hit.signer === signer && hit.networkId === bus.networkId) {
        this.stats.cacheHits++
        if ('err' in hit) throw hit.err
        const env = hit.env
        if (env.ts > now + MAX_CLOCK_SKEW_MS) throw new EnvelopeRejected('from-future', `timestamp ${env.ts - now} ms ahead`)
        if (env.exp <= now) throw new EnvelopeRejected('expired', `expired ${now - env.exp} ms ago`)
        if (bus.kinds.get(env.kind) === undefined) throw new EnvelopeRejected('unknown-kind', `kind ${env.kind}`)
        return env
      }
    }
    const t0 = performance.now()
    this.stats.opens++
    try {
      const env = await openEnvelope(bytes, { networkId: bus.networkId, kinds: bus.kinds, now, signer })
      if (this.opts.verifyCache) this.cache.set(bytes, { env, signer, networkId: bus.networkId })
      return env
    } catch (err) {
      if (this.opts.verifyCache && err instanceof EnvelopeRejected && !TIME_DEPENDENT.has(err.reason) && err.reason !== 'unknown-kind') this.cache.set(bytes, { err, signer, networkId: bus.networkId })
      throw err
    } finally {
      this.stats.openMs += performance.now() - t0
    }
  }
}

export class SimBus {
  private readonly table = new TopicTable()
  get kinds (): ReadonlyMap<string, MessageKind> { return this.table.kinds }
  private replay = new ReplayGuard()
  private readonly stats: GossipStats = { accepted: {}, published: {}, rejected: Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])) as Record<RejectReason, number> }
  /** Crashed or departed agents neither send nor receive. */
  online = true
  readonly networkId: string
  /** Accepted envelopes by author, newest last (what Perception's `lastSaid` reads). */
  readonly heard = new Map<string, Array<{ envelope: string }>>()
  private idCounter = 0

  constructor (readonly network: SimNetwork, private readonly key: PrivateKey, readonly peerId: string) {
    this.networkId = network.opts.networkId
  }

  topic (kind: string, scope?: string): string {
    return topicFor(this.networkId, kind, scope)
  }

  subscribe<B> (kind: MessageKind<B>, handler?: EnvelopeHandler<B>, opts: ScopeOptions<B> = {}): void {
    const topic = this.topic(kind.kind, opts.scope)
    if (this.table.add(topic, kind, handler, opts)) this.network.join(topic, this)
  }

  unsubscribe (kind: MessageKind, opts: { scope?: string } = {}): void {
    const topic = this.topic(kind.kind, opts.scope)
    if (!this.table.remove(topic)) return
    this.network.leave(topic, this)
  }

  async publish<B> (kind: MessageKind<B>, body: B, opts: { ttlMs?: number, scope?: string } = {}): Promise<Envelope<B>> {
    if (!this.online) throw new Error('this agent is offline')
    const now = this.network.clock.now()
    const t0 = performance.now()
    const id = toBase64Url(new TextEncoder().encode(`${this.peerId.slice(-10)}.${(this.idCounter++).toString(36)}`)).slice(0, 43)
    const env = await sealEnvelope(this.key, kind, body, { networkId: this.networkId, now, ttlMs: opts.ttlMs, id: id.length >= 16 ? id : id.padEnd(16, 'A') })
    const bytes = encodeEnvelope(env)
    this.network.stats.seals++
    this.network.stats.sealMs += performance.now() - t0
    this.replay.admit(env.from, env.id, env.exp, now)
    this.stats.published[kind.kind] = (this.stats.published[kind.kind] ?? 0) + 1
    this.network.send(this.peerId, this.topic(kind.kind, opts.scope), bytes, kind.kind, env.body)
    return env
  }

  /** Publishes bytes as they are (adversaries: tampered or replayed envelopes); they still go through every receiver's validator. */
  injectRaw (topic: string, bytes: Uint8Array, kind: string): void {
    this.network.send(this.peerId, topic, bytes, kind, undefined)
  }

  getStats (): GossipStats {
    return structuredClone(this.stats)
  }

  /** A restart forgets the replay memory, like a node process that crashed. */
  restart (): void {
    this.replay = new ReplayGuard()
  }

  /** Validation and delivery, as GossipBus.validate + deliver. */
  async receive (from: string, topic: string, bytes: Uint8Array): Promise<void> {
    if (!this.online) return
    if (!this.table.has(topic)) return
    const now = this.network.clock.now()
    let env: Envelope
    try {
      env = await this.network.open(bytes, this, from)
      this.table.checkTopic(topic, env)
      if (!this.replay.admit(env.from, env.id, env.exp, now)) throw new EnvelopeRejected('replayed', `envelope ${env.id} from ${env.from} was already seen`)
    } catch (err) {
      if (!(err instanceof EnvelopeRejected)) throw err
      this.stats.rejected[err.reason]++
      this.network.stats.rejected[err.reason]++
      return
    }
    this.stats.accepted[env.kind] = (this.stats.accepted[env.kind] ?? 0) + 1
    this.network.stats.accepted[env.kind] = (this.network.stats.accepted[env.kind] ?? 0) + 1
    if (env.kind.startsWith('market-')) {
      const list = this.heard.get(env.from) ?? []
      list.push(this.network.row(env))
      if (list.length > 50) list.shift()
      this.heard.set(env.from, list)
    }
    for (const handler of this.table.handlersFor(topic)) {
      try {
        await handler(env, { topic, scope: this.table.scopeOf(topic) })
      } catch (err) {
        this.network.handlerErrors.push(`${env.kind}: ${(err as Error).message}`.slice(0, 300))
      }
    }
  }
}
