import type { ActivityEntry, ActivityLog } from './activity.ts'

/**
 * The owner's bounds as the board shows and edits them. The policy itself (its schema, its storage,
 * what it means to the market) lives in skills/market/owner-policy.ts; the runtime only carries it
 * between the board and whoever installed it, so this is the board's contract, not a second copy.
 */
export interface OwnerPolicyView {
  /** Credits per million layer-tokens below which the agent never sells. */
  priceFloor: number
  /** The largest share of this machine's free memory the agent may lend. */
  memoryShare: number
  /** Local hours during which the agent may take work, 'HH:MM'; start > end wraps midnight; null = always. */
  hours: { start: string, end: string } | null
}

/** The owner's policy as installed on a node (by skills/market): the board reads and patches it. */
export interface PolicyPort {
  current (): OwnerPolicyView
  /** Validates and applies a patch from the board; throws RangeError (the board answers 400) when invalid. */
  set (patch: unknown): Promise<OwnerPolicyView>
  /** Whether the owner's hours allow work at `now`. */
  allowsWorkAt (now: Date): boolean
}

export interface StateChange { state: string, at: number, reason?: string }

export interface LifecycleView {
  state: string
  since: number
  history: StateChange[]
  /** The agent's latest recorded decisions and actions, newest first (the activity log). */
  decisions: ActivityEntry[]
  /** Whether the agent takes new work right now (not paused, not stopped, inside its hours). */
  accepting: boolean
  killed: boolean
}

/**
 * What the owner can do to a running agent from the board. The runtime ships DefaultControls, which
 * works with no agent at all; the agents layer replaces it (node.controls = its own) once its lifecycle
 * runs, so that pause/kill reach its state machine. Every method may throw ControlRefused.
 */
export interface OwnerControls {
  pause (reason?: string): Promise<void>
  resume (): Promise<void>
  /** The kill switch: finish or hand back work in flight, then stop serving and leave gossip. Final until restart. */
  kill (reason?: string): Promise<void>
  policy (): OwnerPolicyView
  /** Applies a patch from the board (unvalidated input: the policy validates it, RangeError when invalid). */
  setPolicy (patch: unknown): Promise<OwnerPolicyView>
  lifecycle (): Promise<LifecycleView>
  accepting (now?: Date): boolean
  /**
   * Work in flight that the kill switch must finish (or hand back) before serving stops. Returns the
   * unregister function.
   */
  onDrain (drain: () => Promise<void>): () => void
}

/** A control the agent cannot carry out in its current state (the board answers 409). */
export class ControlRefused extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'ControlRefused'
  }
}

/**
 * What the controls need of a node. A narrow view rather than MeshNode itself: node.ts creates the
 * default controls, so importing it here would make the two modules import each other.
 */
export interface ControlledNode {
  readonly state: string
  setState (state: string, reason?: string): void
  stateHistory (): StateChange[]
  leaveGossip (): void
  readonly presence?: { publishNow: () => Promise<void> }
  readonly activity: ActivityLog
  readonly config: { priceFloor: number }
}

const NOT_WORKING = new Set(['paused', 'draining', 'stopped', 'offline', 'booting'])
const DRAIN_TIMEOUT_MS = 10_000

/** Runs every drainer, each within DRAIN_TIMEOUT_MS; returns why those that failed failed. */
export async function runDrainers (drainers: Iterable<() => Promise<void>>): Promise<string[]> {
  const results = await Promise.allSettled([...drainers].map(async (drain) => await Promise.race([
    drain(),
    new Promise<never>((_resolve, reject) => setTimeout(() => reject(new Error(`a drainer took over ${DRAIN_TIMEOUT_MS} ms`)), DRAIN_TIMEOUT_MS).unref())
  ])))
  return results.filter((r) => r.status === 'rejected').map((r) => ((r as PromiseRejectedResult).reason as Error).message)
}

export const KILLED = 'the kill switch was used: restart the node to serve again'

/**
 * Owner controls without an agent: pause and resume flip node.state (the heartbeat carries it, so peers
 * route around a paused node at once instead of timing it out); kill drains the registered drainers,
 * announces 'stopped', and leaves every gossip topic while the board stays up to show it. The policy is
 * whatever skills/market installed (installOwnerPolicy); before that the board can read the config's
 * floor but not edit a policy that nobody obeys.
 */
export class DefaultControls implements OwnerControls {
  private readonly drainers = new Set<() => Promise<void>>()
  private killed = false

  constructor (private readonly node: ControlledNode, private readonly owner?: PolicyPort) {}

  onDrain (drain: () => Promise<void>): () => void {
    this.drainers.add(drain)
    return () => this.drainers.delete(drain)
  }

  async pause (reason = 'paused by the owner'): Promise<void> {
    if (this.killed) throw new ControlRefused(KILLED)
    if (this.node.state === 'paused') return
    this.node.setState('paused', reason)
    await this.node.presence?.publishNow()
  }

  async resume (): Promise<void> {
    if (this.killed) throw new ControlRefused(KILLED)
    if (this.node.state !== 'paused') return
    this.node.setState('idle', 'resumed by the owner')
    await this.node.presence?.publishNow()
  }

  async kill (reason = 'kill switch used by the owner'): Promise<void> {
    if (this.killed) return
    this.killed = true
    this.node.setState('draining', reason)
    await this.node.presence?.publishNow()
    const failed = await runDrainers(this.drainers)
    this.node.setState('stopped', failed.length > 0 ? `${reason}; drain failures: ${failed.join('; ')}` : reason)
    // The last heartbeat says 'stopped', so peers drop us from plans now rather than when it expires.
    await this.node.presence?.publishNow()
    this.node.leaveGossip()
  }

  policy (): OwnerPolicyView {
    return this.owner?.current() ?? { priceFloor: this.node.config.priceFloor, memoryShare: 1, hours: null }
  }

  async setPolicy (patch: unknown): Promise<OwnerPolicyView> {
    if (this.owner === undefined) throw new ControlRefused('no owner policy is installed on this node yet (the agent is not up)')
    return await this.owner.set(patch)
  }

  async lifecycle (): Promise<LifecycleView> {
    return await lifecycleView(this.node, this.accepting(), this.killed)
  }

  accepting (now = new Date()): boolean {
    return !this.killed && !NOT_WORKING.has(this.node.state) && (this.owner?.allowsWorkAt(now) ?? true)
  }
}

/** The board's view of a node's lifecycle (shared with the agent's controls). */
export async function lifecycleView (node: ControlledNode, accepting: boolean, killed: boolean): Promise<LifecycleView> {
  const history = node.stateHistory()
  return {
    state: node.state,
    since: history.at(-1)?.at ?? Date.now(),
    history,
    decisions: await node.activity.list({ limit: 50 }),
    accepting,
    killed
  }
}
