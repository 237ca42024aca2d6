import { TopicValidatorResult, type GossipSub, type Message } from '@libp2p/gossipsub'
import { createTopicScoreParams, type TopicScoreParams } from '@libp2p/gossipsub/score'
import type { PeerId, PrivateKey } from '@libp2p/interface'
import {
  EnvelopeRejected, REJECT_REASONS, ReplayGuard, encodeEnvelope, openEnvelope, sealEnvelope, topicFor,
  type Envelope, type MessageKind, type RejectReason
} from '../../protocols/index.ts'
import type { Store } from '../store/store.ts'
import { TopicTable, type EnvelopeHandler, type ScopeOptions } from './topic-table.ts'
import type { Logger } from '../log.ts'

export type { EnvelopeHandler, ScopeOptions }

export interface GossipStats {
  accepted: Record<string, number>
  published: Record<string, number>
  rejected: Record<RejectReason, number>
}

/**
 * Typed, signed gossip over gossipsub. Every incoming message passes openEnvelope inside gossipsub's
 * topic validator, so an invalid one is Rejected there: gossipsub then neither delivers nor forwards
 * it and lowers the relaying peer's score. Accepted envelopes are stored (the transcript) before
 * handlers see them; rejected ones are counted and logged, never stored.
 */
export class GossipBus {
  /** The topics we joined, which kind (and scope) each carries, and their handlers. */
  private readonly table = new TopicTable()
  private readonly replay = new ReplayGuard()
  // The validator has already decoded the message; the 'message' event hands us the same object.
  private readonly decoded = new WeakMap<Message, Envelope>()
  private readonly stats: GossipStats = { accepted: {}, published: {}, rejected: Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])) as Record<RejectReason, number> }
  /** Deliveries still running their handlers: stop() waits for them before the store may close. */
  private readonly inflight = new Set<Promise<void>>()
  private stopped = false
  private readonly onMessage = (evt: CustomEvent<Message>): void => {
    if (this.stopped) return
    const p = this.deliver(evt.detail)
    this.inflight.add(p)
    void p.finally(() => this.inflight.delete(p))
  }

  constructor (
    private readonly pubsub: GossipSub,
    private readonly key: PrivateKey,
    private readonly networkId: string,
    private readonly store: Store,
    private readonly log: Logger
  ) {
    pubsub.addEventListener('message', this.onMessage)
  }

  topic (kind: string, scope?: string): string {
    return topicFor(this.networkId, kind, scope)
  }

  /** Joins the topic of a message kind (and scope); handlers run for every accepted envelope on it. */
  subscribe<B> (kind: MessageKind<B>, handler?: EnvelopeHandler<B>, opts: ScopeOptions<B> = {}): void {
    const topic = this.topic(kind.kind, opts.scope)
    if (this.table.add(topic, kind, handler, opts)) {
      this.pubsub.topicValidators.set(topic, async (peer, msg) => await this.validate(peer, msg))
      this.scoreTopic(topic)
      this.pubsub.subscribe(topic)
    }
  }

  /** How many peers we know to be subscribed to a kind's topic (and scope): who would hear a publish now. */
  subscribers (kind: MessageKind, opts: { scope?: string } = {}): number {
    return this.pubsub.getSubscribers(this.topic(kind.kind, opts.scope)).length
  }

  /** Leaves a topic and drops its handlers (a model the agent no longer trades). */
  unsubscribe (kind: MessageKind, opts: { scope?: string } = {}): void {
    const topic = this.topic(kind.kind, opts.scope)
    if (!this.table.remove(topic)) return
    this.pubsub.topicValidators.delete(topic)
    this.pubsub.unsubscribe(topic)
  }

  /** Signs, stores and publishes. Returns the envelope as sent. */
  async publish<B> (kind: MessageKind<B>, body: B, opts: { ttlMs?: number, scope?: string } = {}): Promise<Envelope<B>> {
    const env = await sealEnvelope(this.key, kind, body, { networkId: this.networkId, ttlMs: opts.ttlMs })
    const bytes = encodeEnvelope(env)
    this.replay.admit(env.from, env.id, env.exp)
    await this.store.saveMessage(env, true)
    await this.pubsub.publish(this.topic(kind.kind, opts.scope), bytes)
    this.stats.published[kind.kind] = (this.stats.published[kind.kind] ?? 0) + 1
    return env
  }

  getStats (): GossipStats {
    return structuredClone(this.stats)
  }

  /** Stops delivering; resolves once the handlers of messages already accepted have run. */
  async stop (): Promise<void> {
    this.stopped = true
    this.pubsub.removeEventListener('message', this.onMessage)
    for (const topic of this.table.joined()) this.pubsub.topicValidators.delete(topic)
    await Promise.allSettled([...this.inflight])
  }

  /**
   * Gossipsub only penalises invalid messages on topics that have score parameters. Ours: each rejected
   * message costs the relaying peer -10 (squared as they accumulate, so three put it on the graylist),
   * and the penalty fades with a half-life of about a minute, so an honest peer with a skewed clock
   * recovers. Quiet topics (a heartbeat every 15 s) must not be penalised for being quiet.
   */
  private scoreTopic (topic: string): void {
    const score = (this.pubsub as unknown as { score?: { params: { topics: Record<string, TopicScoreParams> } } }).score
    if (score === undefined) return
    score.params.topics[topic] = createTopicScoreParams({
      topicWeight: 1,
      timeInMeshWeight: 0.01,
      timeInMeshQuantum: 1000,
      timeInMeshCap: 100,
      firstMessageDeliveriesWeight: 0.5,
      firstMessageDeliveriesDecay: 0.9,
      firstMessageDeliveriesCap: 20,
      meshMessageDeliveriesWeight: 0,
      meshFailurePenaltyWeight: 0,
      invalidMessageDeliveriesWeight: -10,
      invalidMessageDeliveriesDecay: 0.99
    })
  }

  /** The gossipsub score we give a peer (negative after it relayed invalid messages). */
  scoreOf (peerId: string): number {
    return (this.pubsub as unknown as { getScore (id: string): number }).getScore(peerId)
  }

  private async validate (relayedBy: PeerId, msg: Message): Promise<TopicValidatorResult> {
    try {
      if (msg.type !== 'signed') throw new EnvelopeRejected('malformed', 'gossipsub message is unsigned')
      const env = await openEnvelope(msg.data, { networkId: this.networkId, kinds: this.table.kinds, signer: msg.from.toString() })
      this.table.checkTopic(msg.topic, env)
      if (!this.replay.admit(env.from, env.id, env.exp)) throw new EnvelopeRejected('replayed', `envelope ${env.id} from ${env.from} was already seen`)
      this.decoded.set(msg, env)
      return TopicValidatorResult.Accept
    } catch (err) {
      if (!(err instanceof EnvelopeRejected)) {
        this.log.error('validator failed', { topic: msg.topic, error: (err as Error).message })
        return TopicValidatorResult.Ignore
      }
      this.stats.rejected[err.reason]++
      this.log.warn('rejected gossip', {
        reason: err.reason,
        topic: msg.topic,
        relayedBy: relayedBy.toString(),
        author: msg.type === 'signed' ? msg.from.toString() : 'unsigned',
        detail: err.message.slice(0, 200)
      })
      return TopicValidatorResult.Reject
    }
  }

  private async deliver (msg: Message): Promise<void> {
    const env = this.decoded.get(msg)
    if (env === undefined) return // not one of our topics, or not validated by us
    this.decoded.delete(msg)
    this.stats.accepted[env.kind] = (this.stats.accepted[env.kind] ?? 0) + 1
    try {
      await this.store.saveMessage(env, false)
    } catch (err) {
      this.log.error('could not store an accepted message', { kind: env.kind, error: (err as Error).message })
      return
    }
    const scope = this.table.scopeOf(msg.topic)
    for (const handler of this.table.handlersFor(msg.topic)) {
      try {
        await handler(env, { topic: msg.topic, scope })
      } catch (err) {
        this.log.error('gossip handler failed', { kind: env.kind, error: (err as Error).message })
      }
    }
  }
}
