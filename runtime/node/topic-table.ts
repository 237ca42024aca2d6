import { EnvelopeRejected, type Envelope, type MessageKind } from '../../protocols/index.ts'

export type EnvelopeHandler<B> = (env: Envelope<B>, ctx: { topic: string, scope?: string }) => void | Promise<void>

export interface ScopeOptions<B = unknown> {
  /** Splits the kind over one topic per scope (e.g. per model); omitted = the kind's one topic. */
  scope?: string
  /**
   * Where the body says which scope it belongs to. When given, an envelope whose body names another
   * scope than its topic is rejected, so nobody can smuggle one model's terms into another model's market.
   */
  scopeOf?: (body: B) => string
}

interface TopicEntry {
  kind: string
  scope?: string
  scopeOf?: (body: unknown) => string
}

/**
 * Which kinds a bus knows, which topics it joined (and which kind and scope each carries), and who
 * handles them. The gossipsub bus and the simulator's in-process bus keep the same books and apply the
 * same topic check, so both reject exactly the same envelopes.
 */
export class TopicTable {
  readonly kinds = new Map<string, MessageKind>()
  private readonly topics = new Map<string, TopicEntry>()
  private readonly handlers = new Map<string, Array<EnvelopeHandler<unknown>>>()

  /** Records a subscription; returns true when the topic is new (the caller joins it on the wire). */
  add<B> (topic: string, kind: MessageKind<B>, handler: EnvelopeHandler<B> | undefined, opts: ScopeOptions<B>): boolean {
    const known = this.kinds.get(kind.kind)
    if (known !== undefined && known !== kind) throw new Error(`two different definitions of message kind ${kind.kind}`)
    this.kinds.set(kind.kind, kind as MessageKind)
    const isNew = !this.topics.has(topic)
    if (isNew) this.topics.set(topic, { kind: kind.kind, scope: opts.scope, scopeOf: opts.scopeOf as TopicEntry['scopeOf'] })
    if (handler !== undefined) {
      const list = this.handlers.get(topic) ?? []
      list.push(handler as EnvelopeHandler<unknown>)
      this.handlers.set(topic, list)
    }
    return isNew
  }

  /** Forgets a topic and its handlers; returns false when it was not joined. */
  remove (topic: string): boolean {
    if (!this.topics.delete(topic)) return false
    this.handlers.delete(topic)
    return true
  }

  has (topic: string): boolean {
    return this.topics.has(topic)
  }

  joined (): IterableIterator<string> {
    return this.topics.keys()
  }

  scopeOf (topic: string): string | undefined {
    return this.topics.get(topic)?.scope
  }

  handlersFor (topic: string): ReadonlyArray<EnvelopeHandler<unknown>> {
    return this.handlers.get(topic) ?? []
  }

  /** Throws EnvelopeRejected when an opened envelope does not belong on the topic it arrived on. */
  checkTopic (topic: string, env: Envelope): void {
    const entry = this.topics.get(topic)
    if (entry?.kind !== env.kind) throw new EnvelopeRejected('malformed', `a ${env.kind} envelope on topic ${topic}`)
    if (entry.scopeOf !== undefined && entry.scopeOf(env.body) !== entry.scope) {
      throw new EnvelopeRejected('malformed', `a ${env.kind} envelope for scope ${entry.scopeOf(env.body)} on topic ${topic}`)
    }
  }
}
