import { PresenceKind, type Envelope, type Presence } from '../../protocols/index.ts'
import type { GossipSub, SubscriptionChangeData } from '@libp2p/gossipsub'
import type { GossipBus } from './gossip.ts'
import type { Store } from '../store/store.ts'
import type { Logger } from '../log.ts'

export interface PeerPresence {
  peerId: string
  presence: Presence
  /** When we received it, by our clock. */
  receivedAt: number
  /** When it expires, by the sender's clock (bounded by our skew check). */
  expiresAt: number
}

/**
 * The heartbeat: every interval the node publishes what it has (hardware, models, floor) and records
 * what others publish. A peer that newly subscribes gets a heartbeat from us right away instead of
 * waiting up to a whole interval, which is what makes a fresh mesh converge in about a second.
 */
export class PresenceService {
  private readonly live = new Map<string, PeerPresence>()
  private readonly lastTs = new Map<string, number>()
  private readonly listeners = new Set<(p: PeerPresence) => void>()
  private timer: NodeJS.Timeout | undefined
  private soon: NodeJS.Timeout | undefined
  private last: Envelope<Presence> | undefined
  private readonly onSubscriptionChange = (evt: CustomEvent<SubscriptionChangeData>): void => {
    const topic = this.bus.topic(PresenceKind.kind)
    if (evt.detail.subscriptions.some((s) => s.subscribe && s.topic === topic)) this.publishSoon()
  }

  constructor (
    private readonly bus: GossipBus,
    private readonly pubsub: GossipSub,
    private readonly store: Store,
    private readonly log: Logger,
    private readonly describe: () => Promise<Presence>,
    private readonly intervalMs: number
  ) {}

  async start (): Promise<void> {
    this.bus.subscribe(PresenceKind, async (env) => { await this.receive(env) })
    this.pubsub.addEventListener('subscription-change', this.onSubscriptionChange)
    await this.publishNow()
    this.timer = setInterval(() => { void this.publishNow() }, this.intervalMs)
  }

  stop (): void {
    clearInterval(this.timer)
    clearTimeout(this.soon)
    this.pubsub.removeEventListener('subscription-change', this.onSubscriptionChange)
  }

  /** Peers whose last heartbeat has not expired, newest first. */
  peers (now = Date.now()): PeerPresence[] {
    return [...this.live.values()].filter((p) => p.expiresAt > now).sort((a, b) => b.receivedAt - a.receivedAt)
  }

  lastPublished (): Envelope<Presence> | undefined {
    return this.last
  }

  onPresence (listener: (p: PeerPresence) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  async publishNow (): Promise<void> {
    try {
      this.last = await this.bus.publish(PresenceKind, await this.describe())
    } catch (err) {
      this.log.warn('could not publish presence', { error: (err as Error).message })
    }
  }

  private publishSoon (): void {
    if (this.soon !== undefined) return
    this.soon = setTimeout(() => { this.soon = undefined; void this.publishNow() }, 150)
  }

  private async receive (env: Envelope<Presence>): Promise<void> {
    const now = Date.now()
    const known = this.live.get(env.from)
    // Gossip can deliver heartbeats out of order; keep the newest by the author's own clock.
    if ((this.lastTs.get(env.from) ?? -1) > env.ts) return
    this.lastTs.set(env.from, env.ts)
    const entry: PeerPresence = { peerId: env.from, presence: env.body, receivedAt: now, expiresAt: now + (env.exp - env.ts) }
    this.live.set(env.from, entry)
    await this.store.recordPresence(env.from, env.body, now)
    if (known === undefined) this.log.info('peer present', { peer: env.body.name, id: shortId(env.from) })
    for (const listener of this.listeners) listener(entry)
  }
}

export function shortId (peerId: string): string {
  return peerId.length > 12 ? `…${peerId.slice(-8)}` : peerId
}
