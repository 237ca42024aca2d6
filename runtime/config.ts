import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { join, resolve } from 'node:path'
import { z } from 'zod'
import { NETWORK_ID_PATTERN } from '../protocols/index.ts'
import { MAX_VOTING_PERIOD_MS, MIN_VOTING_PERIOD_MS, PARAMETER_NAMES, type NetworkParameter } from '../protocols/governance.ts'

export const DEFAULT_NETWORK = 'clawmesh'
export const DEFAULT_PORT = 4011
export const DEFAULT_BOARD_PORT = 4012
export const DEFAULT_GATEWAY_PORT = 4013
/**
 * Prices are credits per million layer-tokens: a worker serving L layers of a request of T tokens at
 * price P earns T × L × P / 1e6 credits. The defaults make a small paid mesh pay out: at the floor, a
 * 37-token request through 2 layers earns the worker 1 credit (1.48 before rounding down), where the
 * old floor of 1 gave it 0.00007 and every receipt was 0.
 */
export const DEFAULT_PRICE_FLOOR = 20_000
/** A head pays at most 5x the default floor per layer. */
export const DEFAULT_CEILING = 100_000
/** Enough for 80 layers at 3x the default floor, or 50 at the ceiling. */
export const DEFAULT_BUDGET = 5_000_000

const HOUR_MINUTE = /^([01][0-9]|2[0-3]):[0-5][0-9]$/

/**
 * What the owner lets the ClawBot do (read by agents/; kept here so that one file configures a home).
 * Money is in credits per million layer-tokens. The agent decides everything inside these bounds and
 * code refuses anything outside them, whatever its LLM says.
 */
export const AgentSettingsSchema = z.object({
  llm: z.object({
    /** offline: the built-in deterministic negotiator (no model needed). */
    provider: z.enum(['offline', 'ollama', 'openai', 'llama-cpp']).default('offline'),
    /** Model name (ollama, openai) or GGUF path (llama-cpp). */
    model: z.string().max(500).optional(),
    /** Ollama URL, or any OpenAI-compatible endpoint (a clawmesh gateway included). */
    baseUrl: z.string().url().optional(),
    /** Name of the environment variable that holds the API key: keys never live in config.json. */
    apiKeyEnv: z.string().regex(/^[A-Z_][A-Z0-9_]*$/).default('OPENAI_API_KEY'),
    temperature: z.number().min(0).max(2).default(0.2),
    /** One LLM call that takes longer is abandoned and the offline negotiator plays that turn. */
    timeoutMs: z.number().int().positive().default(90_000)
  }).strict().prefault({}),
  /**
   * Deprecated in config.json: the floor is the top-level priceFloor (one knob, which the board's
   * policy also sets). loadConfig moves an agent.floor from the file or environment onto priceFloor,
   * with a warning. Code that starts a ClawBot itself (tests, simulations) may still pass it.
   */
  floor: z.number().nonnegative().optional(),
  /** As a head: never pay more than this per layer, in credits per million layer-tokens. */
  ceiling: z.number().nonnegative().default(DEFAULT_CEILING),
  /** As a head: never pay more than this for a whole model, in credits per million tokens (Σ price × layers). */
  budget: z.number().nonnegative().default(DEFAULT_BUDGET),
  /** Deals (signed or being signed) the agent may hold at once as a worker. */
  maxDeals: z.number().int().min(0).max(64).default(2),
  /** Share of free memory the agent may lend. */
  maxMemoryShare: z.number().min(0).max(1).default(0.5),
  /** An absolute cap on lent memory, in bytes, on top of the share. */
  maxMemoryBytes: z.number().int().positive().optional(),
  /** Share of free GPU memory the agent may lend (used when a GPU backend is present). */
  maxGpuShare: z.number().min(0).max(1).default(0.5),
  /** Only work while the machine is idle (load average per core below 0.5). */
  idleOnly: z.boolean().default(false),
  /** Local hours when the agent may take work, e.g. {"from": "22:00", "to": "07:00"}; omitted = always. */
  hours: z.object({ from: z.string().regex(HOUR_MINUTE), to: z.string().regex(HOUR_MINUTE) }).strict().optional(),
  /** As a head: how long to collect proposals before choosing. */
  proposalWindowMs: z.number().int().min(100).max(600_000).default(3000),
  /** Counter-offers allowed per side before a negotiation fails. */
  maxRounds: z.number().int().min(1).max(20).default(4),
  /** How long our offers stay open. */
  offerTtlMs: z.number().int().min(1000).max(600_000).default(60_000),
  /** As a head: renew a contract this long before it ends (at most a third of its term before). */
  renewBeforeMs: z.number().int().min(0).max(86_400_000).default(300_000),
  /** As a head: a GGUF (path, or file name in modelsDir) to assemble when the agent starts. */
  assemble: z.string().max(1000).optional()
}).strict()

export type AgentSettings = z.infer<typeof AgentSettingsSchema>
export type AgentSettingsInput = z.input<typeof AgentSettingsSchema>

/**
 * The owner's configuration of one agent, kept in `<home>/config.json`. Every field has a default,
 * so an empty file (or none) is a working configuration; environment variables override the file.
 */
/**
 * Self-governance (governance/): the shared repository agents propose pull requests to, and the human
 * review quorum that merges them. The forge token is read from CLAWMESH_GITHUB_TOKEN or GITHUB_TOKEN
 * first; `token` here is a fallback for owners who keep it in the (0600) config file.
 */
export const GovernanceSettingsSchema = z.object({
  owner: z.string().regex(/^[A-Za-z0-9_.-]{1,100}$/),
  repo: z.string().regex(/^[A-Za-z0-9_.-]{1,100}$/),
  /** GitHub's REST API; a GitHub Enterprise URL or a local stand-in also work. */
  baseUrl: z.string().url().default('https://api.github.com'),
  /** What `git clone` uses for the temporary clone; defaults to https://github.com/<owner>/<repo>.git. */
  cloneUrl: z.string().optional(),
  baseBranch: z.string().default('main'),
  /** Issues with this label are tasks agents may take. */
  label: z.string().default('clawmesh-task'),
  /** GitHub logins of the humans whose reviews count. */
  allowList: z.array(z.string()).default([]),
  /** Distinct allow-listed approvals of the head commit a PR needs; a network vote may raise it. */
  requiredApprovals: z.number().int().min(1).max(20).default(2),
  /** GitHub logins of agent accounts: their reviews never count. */
  agentLogins: z.array(z.string()).default([]),
  /** A head with no check or status at all is pending rather than green. */
  requireChecks: z.boolean().default(true),
  /** The project's own tests, run in the clone before a PR is opened. */
  testCommand: z.string().default('npm test'),
  /**
   * Where the machine has no sandbox (Linux namespaces), run the agent's LLM-written tests anyway,
   * with the owner's file access and network. Off: the agent does not run generated code there.
   */
  allowUnsandboxedTests: z.boolean().default(false),
  token: z.string().optional(),
  /** Run the quorum keeper in `clawmesh start` (only on the node holding the keeper's token). */
  keeper: z.boolean().default(false),
  keeperIntervalMs: z.number().int().min(5_000).default(60_000),
  /**
   * The running agent takes labelled issues and opens pull requests (agents/contributor.ts). Default:
   * on, except on the keeper's node, whose token must never author what it merges.
   */
  propose: z.boolean().optional(),
  /** How often an idle agent looks for a task issue (one at a time; it never works on two at once). */
  proposeIntervalMs: z.number().int().min(1_000).default(300_000)
}).strict().superRefine((g, ctx) => {
  if (g.keeper && g.propose === true) ctx.addIssue({ code: 'custom', path: ['propose'], message: 'the keeper\'s node cannot propose: its token merges, and must never author what it merges (run the proposing agent on another node, with an agent token)' })
  const agents = new Set(g.agentLogins.map((l) => l.toLowerCase()))
  const both = g.allowList.filter((l) => agents.has(l.toLowerCase()))
  if (both.length > 0) ctx.addIssue({ code: 'custom', path: ['allowList'], message: `${both.join(', ')} cannot be both a human reviewer and an agent` })
})

/**
 * The owners' rules for network-parameter votes (governance/rules.ts applies them). Proposers choose
 * none of them: a proposal that breaks them is invalid wherever these rules hold, so every owner of a
 * mesh should set the same ones (nodes with different rules may finalize differently).
 */
export const VotingSettingsSchema = z.object({
  /**
   * Owner-attested voters: peer id → weight. Only these votes count; a fresh key weighs nothing, so a
   * thousand keys are no votes at all. Attest the agents of owners you know.
   */
  voters: z.record(z.string().min(40).max(80), z.number().int().min(1).max(1000)).default({}),
  /** Attested weight that must take part (yes, no or abstain) for a result to bind. */
  quorum: z.number().int().min(1).max(1_000_000).default(2),
  /** How long every vote stays open, from the moment the proposal is signed. */
  votingPeriodMs: z.number().int().min(MIN_VOTING_PERIOD_MS).max(MAX_VOTING_PERIOD_MS).default(24 * 3600_000),
  /** Narrower bounds than the protocol's for some parameters, e.g. {"review-quorum": {"min": 1, "max": 3}}. */
  bounds: z.partialRecord(z.enum(PARAMETER_NAMES as [NetworkParameter, ...NetworkParameter[]]), z.object({ min: z.number(), max: z.number() }).strict()).default({})
}).strict()

export const ConfigSchema = z.object({
  name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/).default('default'),
  networkId: z.string().regex(NETWORK_ID_PATTERN).default(DEFAULT_NETWORK),
  listen: z.array(z.string().startsWith('/')).default([`/ip4/0.0.0.0/tcp/${DEFAULT_PORT}`]),
  /** Addresses to advertise instead of the listen addresses (a port forward, a public IP). */
  announce: z.array(z.string().startsWith('/')).default([]),
  bootstrap: z.array(z.string().startsWith('/')).default([]),
  /** Private mesh: a 32-byte pre-shared key in hex; peers without it cannot even finish a handshake. */
  meshKey: z.string().regex(/^[0-9a-f]{64}$/).optional(),
  /** Private mesh: how long a peer that is not admitted may stay connected to redeem an invite. */
  admissionGraceMs: z.number().int().min(100).max(600_000).default(10_000),
  mdns: z.boolean().default(true),
  dht: z.boolean().default(true),
  nat: z.object({
    /** Dial peers through circuit relays, and reserve a slot on each of `relays`. */
    relayClient: z.boolean().default(true),
    /**
     * Relays (multiaddrs ending in /p2p/<id>) to reserve a slot on, so that peers can reach this node
     * behind NAT through them. Only named relays: searching the network for one costs a DHT walk that
     * never ends when no peer relays.
     */
    relays: z.array(z.string().regex(/^\/.*\/p2p\/[A-Za-z0-9]+(\/p2p-circuit)?$/)).max(8).default([]),
    /** Act as a circuit relay for others (for nodes with a public address). */
    relayServer: z.boolean().default(false),
    autonat: z.boolean().default(true),
    dcutr: z.boolean().default(true)
  }).prefault({}),
  maxConnections: z.number().int().positive().default(200),
  /** How many peers to stay directly connected to; beyond this, gossip relays the rest. */
  meshTarget: z.number().int().min(1).default(8),
  presenceIntervalMs: z.number().int().min(100).max(600_000).default(15_000),
  /**
   * Credits per million layer-tokens below which the agent never sells (as a worker). The one floor:
   * agent.floor is a deprecated alias of it, and the board's policy control changes it.
   */
  priceFloor: z.number().nonnegative().default(DEFAULT_PRICE_FLOOR),
  modelsDir: z.string().optional(),
  /** Ask node-llama-cpp for GPU details (loads its native binary once). */
  probeGpu: z.boolean().default(true),
  logLevel: z.enum(['debug', 'info', 'warn', 'error', 'silent']).default('info'),
  /** The owner's web board, served on 127.0.0.1 only while the node runs (clawmesh board opens it). */
  board: z.object({
    enabled: z.boolean().default(true),
    /** When taken (a second agent on this machine), the board falls back to a free port and says so. */
    port: z.number().int().min(0).max(65535).default(DEFAULT_BOARD_PORT)
  }).strict().prefault({}),
  /** llama.cpp processes this node runs: a worker's rpc-servers, a head's llama-server. */
  engine: z.object({
    /** CPU threads per process (-t); omitted = 2 for llama-server, llama.cpp's own default for rpc-server. */
    threads: z.number().int().min(1).max(256).optional(),
    /**
     * How a head runs a model across its workers: 'chain' (hidden states flow stage to stage, the last
     * returns to the head: k + 1 one-way legs a token) or 'star' (llama.cpp RPC: the head talks to every
     * worker in turn, 2k legs). Workers serve both.
     */
    mode: z.enum(['chain', 'star']).default('chain'),
    /** Chain: sequences served at once (each stage keeps a KV cache per slot), and the context of each. */
    slots: z.number().int().min(1).max(64).default(8),
    ctx: z.number().int().min(256).max(131_072).default(4096),
    /**
     * Chain: tokens drafted by prompt lookup and verified per trip, for greedy requests (0 = off). Pays
     * over slow links when texts repeat themselves (code, names, quotes); each draft costs a row per pass.
     */
    draft: z.number().int().min(0).max(16).default(0)
  }).strict().optional(),
  /** The ClawBot on top of the node (agents/): LLM provider and the owner's bounds; omitted = defaults. */
  agent: AgentSettingsSchema.optional(),
  /** Pull-request proposals and the human review quorum (governance/); omitted = off. */
  governance: GovernanceSettingsSchema.optional(),
  /** The owners' rules for network-parameter votes (every node votes; see VotingSettingsSchema). */
  voting: VotingSettingsSchema.prefault({}),
  /** The paid OpenAI-compatible API a head sells its pipeline through (runtime/gateway); omitted = off. */
  gateway: z.object({
    host: z.string().default('127.0.0.1'),
    port: z.number().int().min(0).max(65535).default(DEFAULT_GATEWAY_PORT),
    /** Credits per million tokens the network keeps on top of what the contracts pay the workers. */
    networkFeePerMTok: z.number().nonnegative().default(0),
    defaultMaxTokens: z.number().int().positive().default(256),
    maxTokensCap: z.number().int().positive().default(4096),
    /**
     * Chance that a served request is replayed on another provider of the same range (0..1). On by
     * default: 5 % audits each worker's outputs often enough that a caught cheat loses more (its
     * unsettled receipts and its contract) than it saves (sims/cheating.ts prints the numbers).
     */
    spotCheckProbability: z.number().min(0).max(1).default(0.05),
    /** Challenge window before usage settles, during which a failed spot check voids receipts. */
    settleDelayMs: z.number().int().nonnegative().default(30_000)
  }).strict().optional()
}).strict()

export type Config = z.infer<typeof ConfigSchema>
export type ConfigInput = z.input<typeof ConfigSchema>

/** Environment variables and the config fields they set (documented in the README). */
const ENV_FIELDS: Record<string, (value: string) => Partial<ConfigInput>> = {
  CLAWMESH_NAME: (v) => ({ name: v }),
  CLAWMESH_NETWORK: (v) => ({ networkId: v }),
  CLAWMESH_LISTEN: (v) => ({ listen: list(v) }),
  CLAWMESH_ANNOUNCE: (v) => ({ announce: list(v) }),
  CLAWMESH_BOOTSTRAP: (v) => ({ bootstrap: list(v) }),
  CLAWMESH_MESH_KEY: (v) => ({ meshKey: v }),
  CLAWMESH_MDNS: (v) => ({ mdns: bool('CLAWMESH_MDNS', v) }),
  CLAWMESH_DHT: (v) => ({ dht: bool('CLAWMESH_DHT', v) }),
  CLAWMESH_NAT: (v) => {
    const on = bool('CLAWMESH_NAT', v)
    return { nat: { relayClient: on, relayServer: false, autonat: on, dcutr: on } }
  },
  CLAWMESH_PRESENCE_MS: (v) => ({ presenceIntervalMs: Number(v) }),
  CLAWMESH_PRICE_FLOOR: (v) => ({ priceFloor: Number(v) }),
  CLAWMESH_MODELS_DIR: (v) => ({ modelsDir: v }),
  CLAWMESH_PROBE_GPU: (v) => ({ probeGpu: bool('CLAWMESH_PROBE_GPU', v) }),
  CLAWMESH_LOG_LEVEL: (v) => ({ logLevel: v as Config['logLevel'] }),
  CLAWMESH_THREADS: (v) => ({ engine: { threads: Number(v) } }),
  CLAWMESH_LLM_PROVIDER: (v) => ({ agent: { llm: { provider: v as AgentSettings['llm']['provider'] } } }),
  CLAWMESH_LLM_MODEL: (v) => ({ agent: { llm: { model: v } } }),
  CLAWMESH_LLM_BASE_URL: (v) => ({ agent: { llm: { baseUrl: v } } })
}
export const CONFIG_ENV_VARS = Object.keys(ENV_FIELDS)

function list (value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter((s) => s.length > 0)
}

function bool (name: string, value: string): boolean {
  if (/^(1|true|yes|on)$/i.test(value)) return true
  if (/^(0|false|no|off)$/i.test(value)) return false
  throw new Error(`${name} must be true or false, got "${value}"`)
}

/**
 * Where an agent lives: --home, else $CLAWMESH_HOME, else <root>/<name> with root = $CLAWMESH_ROOT or
 * ~/.clawmesh. One home holds one identity, one database and one config.
 */
export function resolveHome (opts: { home?: string, name?: string }, env: NodeJS.ProcessEnv = process.env): string {
  if (opts.home !== undefined) return resolve(opts.home)
  if (env.CLAWMESH_HOME !== undefined && env.CLAWMESH_HOME !== '') return resolve(env.CLAWMESH_HOME)
  const root = env.CLAWMESH_ROOT !== undefined && env.CLAWMESH_ROOT !== '' ? env.CLAWMESH_ROOT : join(homedir(), '.clawmesh')
  return resolve(root, opts.name ?? env.CLAWMESH_NAME ?? 'default')
}

/** The agent's sqlite database inside its home. */
export const DATABASE_FILE = 'clawmesh.db'

export function configPath (home: string): string {
  return join(home, 'config.json')
}

export async function readConfigFile (home: string): Promise<ConfigInput> {
  const path = configPath(home)
  let text: string
  try {
    text = await readFile(path, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {}
    throw err
  }
  try {
    return JSON.parse(text) as ConfigInput
  } catch (err) {
    throw new Error(`${path} is not valid JSON: ${(err as Error).message}`)
  }
}

function mergeAgent (into: Partial<ConfigInput>, part: Partial<ConfigInput>): void {
  const { agent, ...rest } = part
  Object.assign(into, rest)
  if (agent !== undefined) into.agent = { ...into.agent, ...agent, llm: { ...into.agent?.llm, ...agent.llm } }
}

/** Where loadConfig says that a setting is deprecated (stderr by default: logs go there). */
export type ConfigWarn = (message: string) => void
const warnOnStderr: ConfigWarn = (message) => { process.stderr.write(`clawmesh: ${message}\n`) }

/**
 * agent.floor and priceFloor used to be two floors with no word on which won (the agent's did, so the
 * board's floor control did nothing while agent.floor was set). Now priceFloor is the floor and
 * agent.floor an alias: it sets priceFloor unless priceFloor is given too, in which case priceFloor wins.
 */
function foldDeprecatedFloor (merged: Partial<ConfigInput>, home: string, warn: ConfigWarn): void {
  const floor = merged.agent?.floor
  if (floor === undefined) return
  const agent = { ...merged.agent }
  delete agent.floor
  merged.agent = agent
  if (merged.priceFloor === undefined) {
    merged.priceFloor = floor
    warn(`${home}: agent.floor is deprecated; it now sets priceFloor (${floor}). Move it to the top-level "priceFloor" in config.json`)
  } else if (merged.priceFloor !== floor) {
    warn(`${home}: agent.floor (${floor}) is deprecated and ignored: priceFloor (${merged.priceFloor}) is the floor. Remove agent.floor from config.json`)
  }
}

/** File, then environment, then explicit overrides (CLI flags, tests), validated as a whole. */
export async function loadConfig (home: string, overrides: Partial<ConfigInput> = {}, env: NodeJS.ProcessEnv = process.env, warn: ConfigWarn = warnOnStderr): Promise<Config> {
  const fromFile = await readConfigFile(home)
  const fromEnv: Partial<ConfigInput> = {}
  for (const [name, apply] of Object.entries(ENV_FIELDS)) {
    const value = env[name]
    if (value !== undefined && value !== '') mergeAgent(fromEnv, apply(value))
  }
  const merged = { ...fromFile, ...fromEnv, ...overrides, nat: { ...fromFile.nat, ...fromEnv.nat, ...overrides.nat }, board: { ...fromFile.board, ...overrides.board } }
  // The agent's settings merge key by key too, so one env var does not wipe the file's other settings.
  const agents = [fromFile.agent, fromEnv.agent, overrides.agent].filter((a) => a !== undefined)
  if (agents.length > 0) (merged as Partial<ConfigInput>).agent = agents.reduce<AgentSettingsInput>((acc, a) => ({ ...acc, ...a, llm: { ...acc.llm, ...a.llm } }), {})
  foldDeprecatedFloor(merged, home, warn)
  const parsed = ConfigSchema.safeParse(merged)
  if (!parsed.success) throw new Error(`invalid configuration for ${home}: ${z.prettifyError(parsed.error)}`)
  return parsed.data
}

/** Writes the file atomically (temp file + rename) so a crash never leaves half a config. */
export async function writeConfigFile (home: string, config: ConfigInput): Promise<void> {
  await mkdir(home, { recursive: true, mode: 0o700 })
  const path = configPath(home)
  const tmp = `${path}.${process.pid}.tmp`
  await writeFile(tmp, JSON.stringify(config, null, 2) + '\n', { mode: 0o600 })
  await rename(tmp, path)
}
