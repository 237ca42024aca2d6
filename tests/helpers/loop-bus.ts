import type { Envelope, MessageKind } from '../../protocols/index.ts'
import type { GossipBus } from '../../runtime/node/gossip.ts'

type Handler = (env: Envelope<any>) => Promise<void>

/**
 * The part of GossipBus the market desk uses, delivered in process: every publish reaches every other
 * bus subscribed to the kind and scope, as an envelope from the publisher (signatures and gossipsub are
 * tested elsewhere; these tests are about what the desk does with what arrives). `deliver` can be
 * paused to hold messages back (a late countersignature), and `inject` delivers an envelope as if a
 * peer had sent it.
 */
export class LoopNet {
  private readonly subs = new Map<string, Array<{ peer: string, handler: Handler }>>()
  held: Array<() => Promise<void>> | undefined
  /** Deliveries in flight: tests await them before looking. */
  private readonly inflight = new Set<Promise<void>>()

  bus (peer: string): GossipBus {
    const topic = (kind: MessageKind<any>, scope?: string): string => `${kind.kind}/${scope ?? ''}`
    return {
      subscribe: (kind: MessageKind<any>, handler: Handler, opts: { scope?: string } = {}) => {
        const list = this.subs.get(topic(kind, opts.scope)) ?? []
        list.push({ peer, handler })
        this.subs.set(topic(kind, opts.scope), list)
      },
      unsubscribe: (kind: MessageKind<any>, opts: { scope?: string } = {}) => {
        this.subs.set(topic(kind, opts.scope), (this.subs.get(topic(kind, opts.scope)) ?? []).filter((s) => s.peer !== peer))
      },
      subscribers: (kind: MessageKind<any>, opts: { scope?: string } = {}) => (this.subs.get(topic(kind, opts.scope)) ?? []).filter((s) => s.peer !== peer).length,
      publish: async (kind: MessageKind<any>, body: unknown, opts: { scope?: string } = {}) => {
        const env = { v: 1, net: 'test', kind: kind.kind, from: peer, ts: Date.now(), ttl: kind.ttlMs, nonce: String(Math.random()), body, sig: '' } as unknown as Envelope<any>
        this.inject(kind, env, opts.scope)
        return env
      }
    } as unknown as GossipBus
  }

  /** Delivers an envelope to every subscriber but its sender. */
  inject (kind: MessageKind<any>, env: Envelope<any>, scope?: string): void {
    for (const s of this.subs.get(`${kind.kind}/${scope ?? ''}`) ?? []) {
      if (s.peer === env.from) continue
      const run = async (): Promise<void> => { await s.handler(env) }
      if (this.held !== undefined) { this.held.push(run); continue }
      const p = run().finally(() => this.inflight.delete(p))
      this.inflight.add(p)
    }
  }

  async settle (): Promise<void> {
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight])
  }
}
