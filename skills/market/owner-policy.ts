import { z } from 'zod'
import type { AgentSettings } from '../../runtime/config.ts'
import { applyMigrations } from '../../runtime/store/migrations.ts'
import { DefaultControls, type OwnerPolicyView, type PolicyPort } from '../../runtime/node/controls.ts'
import type { MeshNode } from '../../runtime/node/node.ts'

const HOUR_MINUTE = /^([01]\d|2[0-3]):[0-5]\d$/
const Hours = z.object({ start: z.string().regex(HOUR_MINUTE), end: z.string().regex(HOUR_MINUTE) }).strict().nullable()

/**
 * The owner's bounds on the agent: the one copy. The board edits it (floor, memory share, hours),
 * config.json seeds it, and the agent's guard and perception read it on every move, so an edit on the
 * board binds the very next offer.
 */
export const OwnerBoundsSchema = z.object({
  /** As a worker: credits per million layer-tokens below which the agent never sells (what heartbeats advertise). */
  priceFloor: z.number().nonnegative().finite().max(1e9),
  /** As a worker: the largest share of this machine's free memory the agent may lend. */
  memoryShare: z.number().min(0).max(1),
  /** Local hours during which the agent may take work; start > end wraps midnight; null = always. */
  hours: Hours,
  /** As a head: never pay more than this per layer. */
  ceiling: z.number().nonnegative(),
  /** As a head: never pay more than this for a whole model (Σ price × layers). */
  budget: z.number().nonnegative(),
  /** As a worker: deals held at once. */
  maxDeals: z.number().int().min(0),
  /** As a worker: an absolute cap on lent memory, in bytes, on top of the share; null = none. */
  maxMemoryBytes: z.number().int().positive().nullable(),
  /** As a worker: the share of free GPU memory the agent may lend. */
  maxGpuShare: z.number().min(0).max(1),
  /** Work only while the machine is idle. */
  idleOnly: z.boolean()
}).strict()

export type OwnerBounds = z.infer<typeof OwnerBoundsSchema>

/**
 * What the board may change. Memory share has a lower limit of 5 % there, so that a slip on the
 * board cannot silently stop all lending (config.json may still say 0).
 */
export const OwnerPatchSchema = z.object({
  priceFloor: OwnerBoundsSchema.shape.priceFloor,
  memoryShare: z.number().min(0.05).max(1),
  hours: Hours
}).partial().strict()

export type OwnerPatch = z.infer<typeof OwnerPatchSchema>

// The board's contract (runtime) must stay a view of this policy: this fails to compile otherwise.
const _view: (b: OwnerBounds) => OwnerPolicyView = (b) => b
void _view

/** The bounds config.json (and ClawBot options) give before the owner touches the board. */
export function ownerBoundsFrom (settings: AgentSettings, priceFloor: number): OwnerBounds {
  return {
    // agent.floor survives only as what tests and simulations pass to a ClawBot directly.
    priceFloor: settings.floor ?? priceFloor,
    memoryShare: settings.maxMemoryShare,
    hours: settings.hours === undefined ? null : { start: settings.hours.from, end: settings.hours.to },
    ceiling: settings.ceiling,
    budget: settings.budget,
    maxDeals: settings.maxDeals,
    maxMemoryBytes: settings.maxMemoryBytes ?? null,
    maxGpuShare: settings.maxGpuShare,
    idleOnly: settings.idleOnly
  }
}

/** Is `now` inside the owner's hours? A window may wrap midnight (22:00-07:00); start = end is all day. */
export function withinHours (hours: OwnerBounds['hours'] | undefined, now: Date): boolean {
  if (hours === null || hours === undefined) return true
  const minutes = (hm: string): number => Number(hm.slice(0, 2)) * 60 + Number(hm.slice(3, 5))
  const t = now.getHours() * 60 + now.getMinutes()
  const start = minutes(hours.start)
  const end = minutes(hours.end)
  if (start === end) return true
  return start < end ? t >= start && t < end : t >= start || t < end
}

/** The owner's bounds applied to this machine right now: what the guard enforces and the LLM is told. */
export interface Bounds {
  floor: number
  ceiling: number
  budget: number
  maxDeals: number
  /** Bytes this agent may lend in total (share of free memory, capped by maxMemoryBytes). */
  lendableBytes: number
  idleOnly: boolean
  /** Absent or null: any hour. */
  hours?: OwnerBounds['hours']
}

export interface MachineView {
  freeMemory: number
  /** Free GPU memory when a GPU backend serves the layers; undefined on CPU. */
  freeGpu?: number
}

export function boundsOn (o: OwnerBounds, machine: MachineView): Bounds {
  const memShare = Math.floor(machine.freeMemory * o.memoryShare)
  const gpuShare = machine.freeGpu === undefined ? Infinity : Math.floor(machine.freeGpu * o.maxGpuShare)
  return {
    floor: o.priceFloor,
    ceiling: o.ceiling,
    budget: o.budget,
    maxDeals: o.maxDeals,
    lendableBytes: Math.min(memShare, gpuShare, o.maxMemoryBytes ?? Infinity),
    idleOnly: o.idleOnly,
    hours: o.hours
  }
}

const OWNER_MIGRATIONS: readonly string[] = [
  `
  -- One row: what the owner changed on the board, over config.json (JSON of a partial OwnerBounds).
  CREATE TABLE owner_policy (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    bounds     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
  );
  `
]

/**
 * The one owner policy: config.json's bounds with the owner's board edits over them. Edits are stored
 * (they outlive restarts and win over the config file), and a node's heartbeat advertises the floor.
 */
export class OwnerPolicy implements PolicyPort {
  private bounds: OwnerBounds
  private readonly listeners = new Set<(b: OwnerBounds) => void>()

  private constructor (private readonly base: OwnerBounds, private edits: OwnerPatch, private readonly node?: MeshNode) {
    this.bounds = OwnerPolicy.merge(base, edits, node?.store.db.path ?? 'memory')
  }

  /** A policy kept in memory only (simulations, tests of the guard). */
  static inMemory (bounds: OwnerBounds): OwnerPolicy {
    return new OwnerPolicy(bounds, {})
  }

  /** The node's policy: config (or `settings`) under the owner's stored edits; the node then advertises its floor. */
  static async load (node: MeshNode, settings: AgentSettings): Promise<OwnerPolicy> {
    const db = node.store.db
    await applyMigrations(db, 'owner', OWNER_MIGRATIONS, db.path)
    const row = await db.get<{ bounds: string }>('SELECT bounds FROM owner_policy WHERE id = 1')
    // Rows written before the policy was one object hold the board's three fields: they read as edits.
    const edits = row === undefined ? {} : OwnerPatchSchema.loose().parse(JSON.parse(row.bounds)) as OwnerPatch
    const policy = new OwnerPolicy(ownerBoundsFrom(settings, node.config.priceFloor), pickPatch(edits), node)
    node.config.priceFloor = policy.bounds.priceFloor
    return policy
  }

  private static merge (base: OwnerBounds, edits: OwnerPatch, where: string): OwnerBounds {
    const parsed = OwnerBoundsSchema.safeParse({ ...base, ...edits })
    if (!parsed.success) throw new Error(`the owner's policy (${where}) is invalid: ${z.prettifyError(parsed.error)}`)
    return parsed.data
  }

  current (): OwnerBounds {
    return structuredClone(this.bounds)
  }

  /** The bounds on this machine now (free memory changes; the owner's numbers do not). */
  on (machine: MachineView): Bounds {
    return boundsOn(this.bounds, machine)
  }

  allowsWorkAt (now: Date): boolean {
    return withinHours(this.bounds.hours, now)
  }

  /** Called after every edit (the agent's observation changes; tests wait on it). */
  onChange (listener: (b: OwnerBounds) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  /** An edit from the board: validated, stored, advertised, recorded. RangeError when invalid. */
  async set (patch: unknown): Promise<OwnerBounds> {
    const parsed = OwnerPatchSchema.safeParse(patch)
    if (!parsed.success) throw new RangeError(`invalid policy bounds: ${z.prettifyError(parsed.error)}`)
    const edits = { ...this.edits, ...parsed.data }
    const next = OwnerPolicy.merge(this.base, edits, this.node?.store.db.path ?? 'memory')
    const node = this.node
    if (node !== undefined) {
      await node.store.db.run('INSERT INTO owner_policy (id, bounds, updated_at) VALUES (1, ?, ?) ON CONFLICT(id) DO UPDATE SET bounds = excluded.bounds, updated_at = excluded.updated_at',
        [JSON.stringify(edits), Date.now()])
    }
    this.edits = edits
    this.bounds = next
    if (node !== undefined) {
      // The floor is also what the heartbeat advertises: peers must see the new one, not the config's.
      node.config.priceFloor = next.priceFloor
      await node.activity.record('control', 'policy bounds changed by the owner', { changed: parsed.data, bounds: next })
      if (node.state !== 'stopped') await node.presence?.publishNow()
    }
    for (const l of this.listeners) l(this.current())
    return this.current()
  }
}

function pickPatch (edits: OwnerPatch): OwnerPatch {
  const out: OwnerPatch = {}
  if (edits.priceFloor !== undefined) out.priceFloor = edits.priceFloor
  if (edits.memoryShare !== undefined) out.memoryShare = edits.memoryShare
  if (edits.hours !== undefined) out.hours = edits.hours
  return out
}

/**
 * Gives a node without an agent (yet) the owner's policy on its board. The agent installs its own
 * controls over the same policy when it boots.
 */
export async function installOwnerPolicy (node: MeshNode, settings: AgentSettings): Promise<OwnerPolicy> {
  const policy = await OwnerPolicy.load(node, settings)
  node.controls = new DefaultControls(node, policy)
  return policy
}
