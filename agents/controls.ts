import { ControlRefused, KILLED, lifecycleView, type LifecycleView, type OwnerControls, type OwnerPolicyView } from '../runtime/node/controls.ts'
import type { MeshNode } from '../runtime/node/node.ts'
import type { OwnerPolicy } from '../skills/market/owner-policy.ts'

/** What the board's controls need of a running ClawBot (clawbot.ts). */
export interface ControlledAgent {
  readonly node: MeshNode
  readonly owner: OwnerPolicy
  /** Why the agent takes no new work (paused, killed), or undefined while it does. */
  readonly halted: string | undefined
  readonly killed: boolean
  pause (reason: string): void
  resume (reason: string): void
  /** Drains (running `drainers` alongside its own shutdown), stops, and leaves the mesh's gossip. */
  kill (reason: string, drainers: Iterable<() => Promise<void>>): Promise<void>
}

/**
 * The owner's controls once a ClawBot runs: pause, resume and the kill switch go to the agent's
 * lifecycle (so the next market event cannot undo them: the lifecycle is what writes node.state), and
 * the policy is the one the agent's guard reads on every move.
 */
export class AgentControls implements OwnerControls {
  private readonly drainers = new Set<() => Promise<void>>()

  constructor (private readonly bot: ControlledAgent) {}

  onDrain (drain: () => Promise<void>): () => void {
    this.drainers.add(drain)
    return () => this.drainers.delete(drain)
  }

  async pause (reason = 'paused by the owner'): Promise<void> {
    if (this.bot.killed) throw new ControlRefused(KILLED)
    this.bot.pause(reason)
    // Peers route around a paused node at once instead of timing it out.
    await this.bot.node.presence?.publishNow()
  }

  async resume (): Promise<void> {
    if (this.bot.killed) throw new ControlRefused(KILLED)
    this.bot.resume('resumed by the owner')
    await this.bot.node.presence?.publishNow()
  }

  async kill (reason = 'kill switch used by the owner'): Promise<void> {
    if (this.bot.killed) return
    await this.bot.kill(reason, this.drainers)
  }

  policy (): OwnerPolicyView {
    return this.bot.owner.current()
  }

  async setPolicy (patch: unknown): Promise<OwnerPolicyView> {
    if (this.bot.killed) throw new ControlRefused(KILLED)
    return await this.bot.owner.set(patch)
  }

  async lifecycle (): Promise<LifecycleView> {
    return await lifecycleView(this.bot.node, this.accepting(), this.bot.killed)
  }

  accepting (now = new Date()): boolean {
    return this.bot.halted === undefined && this.bot.owner.allowsWorkAt(now) && ['idle', 'negotiating', 'serving'].includes(this.bot.node.state)
  }
}
