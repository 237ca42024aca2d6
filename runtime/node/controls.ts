import { z } from 'zod'
import type { SqliteDb } from '../store/sqlite.ts'
import { applyMigrations } from '../store/migrations.ts'
import type { ActivityEntry } from './activity.ts'
import type { MeshNode } from './node.ts'

/** The owner's limits on the agent. The agent may do anything inside them and nothing outside. */
export const PolicyBoundsSchema = z.object({
  /** Credits per million layer-tokens below which the agent never sells. */
  priceFloor: z.number().nonnegative().finite().max(1e9),
  /** The largest share of this machine's memory (RAM, or VRAM when it has a GPU) the agent may fill. */
  memoryShare: z.number().min(0.05).max(1),
  /** Local hours during which the agent may serve, 'HH:MM'; start > end wraps midnight; null = always. */
  hours: z.object({
    start: z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/),
    end: z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/)
  }).strict().nullable()
}).strict()

export type PolicyBounds = z.infer<typeof PolicyBoundsSchema>
export const PolicyPatchSchema = PolicyBoundsSchema.partial()
export type PolicyPatch = z.infer<typeof PolicyPatchSchema>

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
 * runs, so that pause/kill also reach its state machine. Every method may throw ControlRefused.
 */
export interface OwnerControls {
  pause (reason?: string): Promise<void>
  resume (): Promise<void>
  /** The kill switch: finish or hand back work in flight, then stop serving and leave gossip. Final until restart. */
  kill (reason?: string): Promise<void>
  policy (): PolicyBounds
  setPolicy (patch: PolicyPatch): Promise<PolicyBounds>
  lifecycle (): Promise<LifecycleView>
  accepting (now?: Date): boolean
  /**
   * Work in flight that the kill switch must finish (or hand back) before serving stops: the engine
   * registers here. Returns the unregister function.
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

const OWNER_MIGRATIONS: readonly string[] = [
  `
  -- One row: the owner's current policy bounds, as set from the board (JSON of PolicyBounds).
  CREATE TABLE owner_policy (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    bounds     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
  );
  `
]

export async function loadPolicy (db: SqliteDb, fallback: PolicyBounds): Promise<PolicyBounds> {
  await applyMigrations(db, 'owner', OWNER_MIGRATIONS, db.path)
  const row = await db.get<{ bounds: string }>('SELECT bounds FROM owner_policy WHERE id = 1')
  if (row === undefined) return fallback
  const parsed = PolicyBoundsSchema.safeParse({ ...fallback, ...JSON.parse(row.bounds) })
  if (!parsed.success) throw new Error(`owner_policy in ${db.path} is invalid: ${z.prettifyError(parsed.error)}`)
  return parsed.data
}

async function savePolicy (db: SqliteDb, bounds: PolicyBounds): Promise<void> {
  await db.run('INSERT INTO owner_policy (id, bounds, updated_at) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET bounds = excluded.bounds, updated_at = excluded.updated_at',
    [JSON.stringify(bounds), Date.now()])
}

export function withinHours (hours: PolicyBounds['hours'], now: Date): boolean {
  if (hours === null) return true
  const minutes = (hhmm: string): number => Number(hhmm.slice(0, 2)) * 60 + Number(hhmm.slice(3, 5))
  const t = now.getHours() * 60 + now.getMinutes()
  const start = minutes(hours.start)
  const end = minutes(hours.end)
  if (start === end) return true
  return start < end ? t >= start && t < end : t >= start || t < end
}

const NOT_WORKING = new Set(['paused', 'draining', 'stopped', 'offline', 'booting'])
const DRAIN_TIMEOUT_MS = 10_000

/**
 * Owner controls without an agent: pause and resume flip node.state (the heartbeat carries it, so peers
 * route around a paused node at once instead of timing it out); kill drains the registered drainers,
 * announces 'stopped', and leaves every gossip topic while the board stays up to show it.
 */
export class DefaultControls implements OwnerControls {
  private readonly drainers = new Set<() => Promise<void>>()
  private killed = false

  constructor (private readonly node: MeshNode, private bounds: PolicyBounds) {}

  onDrain (drain: () => Promise<void>): () => void {
    this.drainers.add(drain)
    return () => this.drainers.delete(drain)
  }

  async pause (reason = 'paused by the owner'): Promise<void> {
    if (this.killed) throw new ControlRefused('the kill switch was used: restart the node to serve again')
    if (this.node.state === 'paused') return
    this.node.setState('paused', reason)
    await this.node.presence?.publishNow()
  }

  async resume (): Promise<void> {
    if (this.killed) throw new ControlRefused('the kill switch was used: restart the node to serve again')
    if (this.node.state !== 'paused') return
    this.node.setState('idle', 'resumed by the owner')
    await this.node.presence?.publishNow()
  }

  async kill (reason = 'kill switch used by the owner'): Promise<void> {
    if (this.killed) return
    this.killed = true
    this.node.setState('draining', reason)
    await this.node.presence?.publishNow()
    const results = await Promise.allSettled([...this.drainers].map(async (drain) => await Promise.race([
      drain(),
      new Promise<never>((_resolve, reject) => setTimeout(() => reject(new Error(`a drainer took over ${DRAIN_TIMEOUT_MS} ms`)), DRAIN_TIMEOUT_MS).unref())
    ])))
    const failed = results.filter((r) => r.status === 'rejected').map((r) => ((r as PromiseRejectedResult).reason as Error).message)
    this.node.setState('stopped', failed.length > 0 ? `${reason}; drain failures: ${failed.join('; ')}` : reason)
    // The last heartbeat says 'stopped', so peers drop us from plans now rather than when it expires.
    await this.node.presence?.publishNow()
    this.node.leaveGossip()
  }

  policy (): PolicyBounds {
    return structuredClone(this.bounds)
  }

  async setPolicy (patch: PolicyPatch): Promise<PolicyBounds> {
    const parsed = PolicyBoundsSchema.safeParse({ ...this.bounds, ...patch })
    if (!parsed.success) throw new RangeError(`invalid policy bounds: ${z.prettifyError(parsed.error)}`)
    await savePolicy(this.node.store.db, parsed.data)
    this.bounds = parsed.data
    // The floor is also what the heartbeat advertises: peers must see the new one, not the config's.
    this.node.config.priceFloor = parsed.data.priceFloor
    await this.node.activity.record('control', 'policy bounds changed by the owner', { bounds: parsed.data })
    if (this.node.state !== 'stopped') await this.node.presence?.publishNow()
    return this.policy()
  }

  async lifecycle (): Promise<LifecycleView> {
    const history = this.node.stateHistory()
    return {
      state: this.node.state,
      since: history.at(-1)?.at ?? Date.now(),
      history,
      decisions: await this.node.activity.list({ limit: 50 }),
      accepting: this.accepting(),
      killed: this.killed
    }
  }

  accepting (now = new Date()): boolean {
    return !this.killed && !NOT_WORKING.has(this.node.state) && withinHours(this.bounds.hours, now)
  }
}
