import { readFileSync } from 'node:fs'
import { basename, extname, resolve } from 'node:path'
import { z } from 'zod'

/**
 * A scenario file: who is in the mesh, what they own and allow, what outside users want, who cheats.
 * JSON (or YAML) validated by this schema; errors name the offending path.
 */
const HM = z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'a time of day as HH:MM')
const range = z.tuple([z.number().nonnegative(), z.number().nonnegative()]).refine(([a, b]) => b >= a, 'a range [low, high] with high >= low')

export const HardwareProfileSchema = z.object({
  /** Free memory the agent sees (what its Perception passes to the owner's bounds), in GB. */
  freeMemoryGB: z.number().positive(),
  /** Share of it the owner lets the agent lend. */
  memoryShare: z.number().min(0).max(1),
  /** Memory bandwidth serving the layers (decoding is memory-bound), GB/s. */
  bandwidthGBs: z.number().positive(),
  /** The owner's running cost (power, wear), credits per million layer-tokens. */
  costPerLayer: z.number().nonnegative()
}).strict()
export type HardwareProfile = z.infer<typeof HardwareProfileSchema>

export const DEFAULT_PROFILES: Record<string, HardwareProfile> = {
  // A desktop with a 24 GB GPU; the agent sees ~26 GB free (RAM + VRAM it may use).
  'gaming-pc': { freeMemoryGB: 26, memoryShare: 0.5, bandwidthGBs: 900, costPerLayer: 1500 },
  laptop: { freeMemoryGB: 10, memoryShare: 0.5, bandwidthGBs: 60, costPerLayer: 2500 },
  'raspberry-pi': { freeMemoryGB: 6, memoryShare: 0.6, bandwidthGBs: 8, costPerLayer: 3500 },
  // A rented or lab box with 2x80 GB GPUs.
  'big-gpu': { freeMemoryGB: 150, memoryShare: 0.9, bandwidthGBs: 2000, costPerLayer: 900 }
}

export const ScenarioSchema = z.object({
  name: z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/),
  description: z.string().max(2000).default(''),
  seed: z.number().int().nonnegative().default(1),
  durationHours: z.number().positive().max(24 * 14),
  /** Sim clock start (UTC). Owners' hours are read in UTC. */
  startAt: z.string().datetime().default('2026-01-05T00:00:00Z'),
  agents: z.object({
    count: z.number().int().min(2).max(20_000),
    /** Hardware mix: profile name → weight. */
    mix: z.record(z.string(), z.number().nonnegative()),
    /** Extra or overriding hardware profiles. */
    profiles: z.record(z.string(), HardwareProfileSchema).default({})
  }).strict(),
  /** Agents that act as heads: they assemble the model and sell it to outside users. */
  heads: z.object({
    count: z.number().int().min(1),
    /** Most a head pays per layer (credits per million layer-tokens). */
    ceiling: z.number().positive(),
    /** The owner's budget for the whole model, per million tokens. */
    budget: z.number().positive(),
    /** What the head adds on top of its workers' prices when it sells. */
    markup: z.number().min(0).max(10).default(0.25),
    proposalWindowMs: z.number().int().min(100).max(600_000).default(5000),
    maxRounds: z.number().int().min(1).max(20).default(4),
    /** How long a contract binds; heads re-negotiate when it ends. */
    serveForMinutes: z.number().positive().default(120),
    /** Heads come online spread over this many minutes from the start (0: all at once). */
    startSpreadMinutes: z.number().nonnegative().default(0),
    /** Calls before a head gives up until the next hour. */
    maxCalls: z.number().int().min(1).default(8)
  }).strict(),
  /** The model: 405B as 126 layers; layerGB 6.5 ≈ fp16, 1.93 ≈ Q4_K_M. */
  model: z.object({
    name: z.string().default('llama-3.1-405b'),
    nLayer: z.number().int().positive().max(4096).default(126),
    layerGB: z.number().positive().default(6.5),
    quant: z.string().default('fp16')
  }).strict().prefault({}),
  owners: z.object({
    /** Floors are drawn as cost × uniform(floorMarkup). */
    floorMarkup: range.default([1.1, 1.8]),
    maxDeals: z.number().int().min(0).max(64).default(2),
    offerTtlMs: z.number().int().min(1000).max(600_000).default(60_000),
    /** Share of workers whose owners allow work only in these hours (UTC). */
    hours: z.object({ share: z.number().min(0).max(1), from: HM, to: HM }).strict().optional()
  }).strict().prefault({}),
  demand: z.object({
    requestsPerMinute: z.number().nonnegative(),
    tokensPerRequest: z.number().int().positive().default(800),
    /** Users' willingness to pay, credits per million tokens: log-normal around the median. */
    wtpMedian: z.number().positive(),
    wtpSpread: z.number().nonnegative().default(0.4),
    /** 24 multipliers of the rate, by UTC hour (a daily curve). */
    hourly: z.array(z.number().nonnegative()).length(24).optional()
  }).strict(),
  serving: z.object({
    /** Concurrent sequences a pipeline decodes together. */
    batch: z.number().int().positive().default(32),
    /** Network latency per pipeline hop, ms. */
    hopMs: z.number().nonnegative().default(20)
  }).strict().prefault({}),
  churn: z.object({
    crashPerHour: z.number().min(0).max(1).default(0),
    leavePerHour: z.number().min(0).max(1).default(0),
    rejoinAfterMinutes: range.default([20, 90])
  }).strict().prefault({}),
  adversaries: z.object({
    /** Workers whose owners price below their own cost. */
    dumpers: z.number().int().nonnegative().default(0),
    dumpFactor: z.number().positive().max(1).default(0.3),
    /** Agents that put prompt injections in their text and push out-of-bounds terms. */
    injectors: z.number().int().nonnegative().default(0),
    /** Agents that forge receipts and tamper with or replay envelopes. */
    forgers: z.number().int().nonnegative().default(0),
    /** Workers that agree a common, high floor. */
    cartel: z.object({ members: z.number().int().nonnegative(), floorMultiple: z.number().positive() }).strict().default({ members: 0, floorMultiple: 3 }),
    /** Share of honest agents whose brain obeys injected text (a compromised LLM); policy must still hold. */
    gullibleShare: z.number().min(0).max(1).default(0)
  }).strict().prefault({}),
  network: z.object({
    latencyMs: z.number().nonnegative().default(20),
    jitterMs: z.number().nonnegative().default(30),
    fanout: z.enum(['full', 'addressed', 'auto']).default('auto'),
    verifyCache: z.boolean().default(true)
  }).strict().prefault({}),
  settleEveryMinutes: z.number().positive().default(30),
  /** Agents' housekeeping period (expiry of stale offers), seconds. */
  tickSeconds: z.number().positive().default(30),
  /** Decision time of one agent turn, ms of sim time. */
  thinkMs: z.number().nonnegative().default(200),
  /** Also run the same seed with the cartel behaving honestly, to measure its price effect. */
  baseline: z.boolean().default(false)
}).strict()

export type Scenario = z.infer<typeof ScenarioSchema>
export type ScenarioInput = z.input<typeof ScenarioSchema>

export class ScenarioError extends Error {
  constructor (file: string, detail: string) {
    super(`invalid scenario ${file}:\n${detail}`)
    this.name = 'ScenarioError'
  }
}

export function parseScenario (input: unknown, file = '<inline>'): Scenario {
  const parsed = ScenarioSchema.safeParse(input)
  if (!parsed.success) throw new ScenarioError(file, z.prettifyError(parsed.error))
  const s = parsed.data
  const profiles = { ...DEFAULT_PROFILES, ...s.agents.profiles }
  const unknown = Object.keys(s.agents.mix).filter((k) => profiles[k] === undefined)
  if (unknown.length > 0) throw new ScenarioError(file, `✖ unknown hardware profile(s) ${unknown.join(', ')} in agents.mix; known: ${Object.keys(profiles).join(', ')}\n  → at agents.mix`)
  const special = s.heads.count + s.adversaries.dumpers + s.adversaries.injectors + s.adversaries.forgers + s.adversaries.cartel.members
  if (special > s.agents.count) throw new ScenarioError(file, `✖ heads and adversaries (${special}) outnumber the agents (${s.agents.count})\n  → at agents.count`)
  return s
}

export const SCENARIO_DIR = resolve(import.meta.dirname, 'scenarios')

/** Loads a scenario by path or by name (sims/scenarios/<name>.json|yaml). */
export async function loadScenario (nameOrPath: string): Promise<{ scenario: Scenario, file: string }> {
  const candidates = [nameOrPath, resolve(SCENARIO_DIR, nameOrPath), ...['.json', '.yaml', '.yml'].map((e) => resolve(SCENARIO_DIR, nameOrPath + e))]
  for (const file of candidates) {
    let text: string
    try { text = readFileSync(file, 'utf8') } catch { continue }
    let data: unknown
    const ext = extname(file)
    try {
      if (ext === '.yaml' || ext === '.yml') data = (await import('yaml')).parse(text)
      else data = JSON.parse(text)
    } catch (err) {
      throw new ScenarioError(basename(file), `✖ not valid ${ext === '.json' ? 'JSON' : 'YAML'}: ${(err as Error).message}`)
    }
    return { scenario: parseScenario(data, basename(file)), file }
  }
  throw new Error(`no scenario ${nameOrPath} (looked in ${SCENARIO_DIR})`)
}
