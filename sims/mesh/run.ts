import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { MARKET_KINDS, dealCost, encodeEnvelope, marketScope, sealEnvelope, toBase64Url, type ModelRef, type SignedContract } from '../../protocols/index.ts'
import { ReceiptKind } from '../../protocols/receipts.ts'
import { receiptWithForgedHead } from '../lib/forgery.ts'
import { openLoopbackNode, stopAll, waitFor } from '../../runtime/node/local-mesh.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import type { LogLevel } from '../../runtime/log.ts'
import { generateTestModel } from '../../runtime/engine/test-model.ts'
import { createKey } from '../../runtime/gateway/keys.ts'
import { agentAccount, allBalances, conservation, verifyChain } from '../../runtime/ledger/ledger.ts'
import { modelRefFromGguf } from '../../skills/assembly/model.ts'
import { startAgentFor, type RunningAgent } from '../../agents/cli.ts'
import { Rng } from '../core/rng.ts'
import { gini, percentile, round } from '../lib/stats.ts'
import { castScenario, lendableLayers, type Member } from '../roster.ts'
import type { Scenario } from '../scenario.ts'
import { injectorBrain } from './injector-brain.ts'

/** Real nodes share two cores here: beyond about 20 the run measures the event loop, not the mesh. */
export const MAX_REAL_NODES = 20

export interface MeshRunOptions {
  seed?: number
  agents?: number
  /** Seconds of outside demand after the first head is assembled (default 40). */
  demandSeconds?: number
  progress?: (line: string) => void
  /** Keep the nodes' homes (databases, transcripts) instead of deleting them; their folder is in the metrics. */
  keepHomes?: boolean
  /** Log level of the nodes (default silent; their logs go to stderr). */
  logLevel?: LogLevel
}

/** One sample of the run, every 500 ms; layersByHead: layers under each head's active contracts (renewals overlapping count twice). */
export interface MeshSample { t: number, layersByHead: number[], activeContracts: number, marketMessages: number, served: number, failed: number }

export interface MeshAgentRow { name: string, peerId: string, profile: string, role: 'head' | 'worker', adversary?: string, floor: number, lendableLayers: number, contracts: number, earned: number, crashed: boolean }

/** What a run on real libp2p nodes measured; wall-clock seconds throughout. */
export interface MeshMetrics {
  scenario: string
  transport: 'libp2p'
  seed: number
  agents: number
  wallSeconds: number
  model: { name: string, nLayer: number, layerGB: number, quant: string, realBytesPerLayer: number }
  mesh: { formedS: number }
  coverage: { perHeadS: Array<number | null>, firstS: number | null, pipelines: number, layersAtEnd: number[] }
  contracts: { signed: number, broken: number, active: number }
  price: { meanPerLayer: number | null, retailPerMTok: number | null }
  messages: { market: Record<string, number>, total: number, perContract: number | null, rejected: Record<string, number> }
  demand: { requests: number, pricedOut: number, sent: number, served: number, unavailable: number, failed: number, servedShare: number, tokens: number, latencyP50Ms: number | null, latencyP95Ms: number | null, errors: string[] }
  churn: { crashes: number, leaves: number, recoverS: Array<number | null> }
  fraud: { forgedEnvelopes: number, forgedReceipts: number, receiptsRefused: number }
  injection: { injectors: number, contractsWithInjectors: number }
  bounds: { contractsChecked: number, floorBreaches: number, ceilingBreaches: number, memoryBreaches: number }
  earnings: { gini: number | null, total: number, earners: number }
  ledger: { nodes: number, chainsOk: boolean, conserved: boolean, receiptsBooked: number }
  notApplied: string[]
  timeline: MeshSample[]
  agentsTable: MeshAgentRow[]
}

interface Participant { member: Member, node: MeshNode, agent?: RunningAgent, crashed: boolean, lendable: number }

const sleep = async (ms: number): Promise<void> => { await new Promise((resolve) => setTimeout(resolve, ms)) }

/**
 * A scenario on real ClawBots: up to 20 MeshNodes on 127.0.0.1, each started the way `clawmesh start`
 * starts it (libp2p, gossipsub, its own sqlite home, the LangGraph agent, the receipt service, a paid
 * API on heads), negotiating a generated model with the scenario's layer count and serving it on
 * layer-split llama.cpp. The cast (hardware, floors, adversaries) is the in-process simulator's; what
 * needs hours of simulated time (owners' hours, contract expiry, daily demand) is scaled down or left
 * out, and the report says which.
 */
export async function runMeshScenario (s: Scenario, opts: MeshRunOptions = {}): Promise<MeshMetrics> {
  const wall0 = Date.now()
  const seed = opts.seed ?? s.seed
  const n = opts.agents ?? s.agents.count
  if (n > MAX_REAL_NODES) throw new Error(`the libp2p transport runs at most ${MAX_REAL_NODES} real nodes on one machine; ${s.name} has ${n} agents (pass --agents ${MAX_REAL_NODES} or fewer, or use the in-process transport)`)
  const log = opts.progress ?? (() => {})
  const rng = new Rng(seed)
  const cast = castScenario(s, n, rng.fork())
  const demandRng = rng.fork()
  const churnRng = rng.fork()
  const root = await mkdtemp(join(tmpdir(), `clawmesh-sim-${s.name}-`))
  const parts: Participant[] = []
  const notApplied = [
    'owners\' hours (a run lasts minutes of wall time)',
    'contract expiry and renewal (contracts bind for the whole run)',
    'the daily demand curve (demand is a constant rate)',
    ...(s.adversaries.gullibleShare > 0 ? ['gullible brains (every honest agent runs the offline negotiator, which never reads peers\' words)'] : [])
  ]
  try {
    // ---- the model: a generated GGUF with the scenario's layer count; memory scaled per layer ----
    const modelPath = join(root, 'model.gguf')
    await generateTestModel({ path: modelPath, seed, nEmbd: 64, nLayer: s.model.nLayer, nHead: 2, nHeadKv: 1, nFf: 128, type: 'f32' })
    const model: ModelRef = await modelRefFromGguf(modelPath)
    log(`${n} real nodes, model ${s.model.name} as a generated ${model.nLayer}-layer GGUF (${(model.layerBytes / 1024).toFixed(0)} KiB per layer standing for ${s.model.layerGB} GB)`)

    // ---- nodes, started one after another from the first (as people join a mesh) ----
    for (const member of cast) {
      const home = join(root, member.name)
      const lendable = member.head ? 0 : lendableLayers(member, s.model.layerGB)
      if (member.head) {
        await mkdir(join(home, 'models'), { recursive: true })
        await copyFile(modelPath, join(home, 'models', 'model.gguf'))
      }
      const node = await openLoopbackNode(home, member.name, {
        networkId: `sim-${s.name}`,
        presenceIntervalMs: 1000,
        bootstrap: parts.length === 0 ? [] : parts[0].node.multiaddrs(),
        priceFloor: member.floor,
        agent: {
          ceiling: s.heads.ceiling,
          budget: s.heads.budget,
          maxDeals: member.head || lendable === 0 ? 0 : s.owners.maxDeals,
          maxMemoryShare: 1,
          // Whole layers this machine may lend, expressed in the generated model's bytes.
          ...(lendable > 0 ? { maxMemoryBytes: lendable * model.layerBytes } : {}),
          proposalWindowMs: s.heads.proposalWindowMs,
          maxRounds: s.heads.maxRounds,
          offerTtlMs: s.owners.offerTtlMs,
          ...(member.head ? { assemble: 'model.gguf' } : {})
        },
        ...(member.head ? { gateway: { port: 0, settleDelayMs: 0, defaultMaxTokens: 8 } } : {})
      }, opts.logLevel ?? 'silent')
      await node.start()
      parts.push({ member, node, crashed: false, lendable })
    }
    const heads = parts.filter((p) => p.member.head)
    await waitFor('every head and worker to hear each other', () => heads.every((h) => {
      const heard = new Set(h.node.presence!.peers().map((p) => p.peerId))
      return parts.every((p) => p === h || (heard.has(p.node.peerId.toString()) && p.node.presence!.peers().some((q) => q.peerId === h.node.peerId.toString())))
    }), 120_000, 100)
    const formedS = (Date.now() - wall0) / 1000
    log(`mesh formed in ${formedS.toFixed(1)} s; starting the agents`)

    // ---- agents, as `clawmesh start` runs them; heads start assembling at once ----
    const t0 = Date.now()
    const since = (): number => (Date.now() - t0) / 1000
    const coveredAt: Array<number | null> = heads.map(() => null)
    let pipelines = 0
    const reassembled: Array<(headIndex: number) => void> = []
    for (const p of parts) {
      p.agent = await startAgentFor(p.node, { brain: p.member.adversary === 'injector' ? injectorBrain() : undefined })
      const hi = heads.indexOf(p)
      if (hi >= 0) {
        p.agent.bot.onAssembled((a) => {
          if (a.pipeline === undefined) return
          pipelines++
          if (coveredAt[hi] === null) { coveredAt[hi] = since(); log(`${p.member.name} assembled ${a.contracts.length} contracts into a pipeline after ${coveredAt[hi]!.toFixed(1)} s`) }
          for (const r of reassembled) r(hi)
        })
      }
    }

    // ---- timeline sampling ----
    const timeline: MeshSample[] = []
    const demand = { requests: 0, pricedOut: 0, sent: 0, served: 0, unavailable: 0, failed: 0, tokens: 0, latencies: [] as number[], errors: [] as string[] }
    // Publications of nodes that crashed are kept from just before they went.
    const gone: Record<string, number> = {}
    const addMarket = (into: Record<string, number>, stats: Record<string, number>): void => {
      for (const k of MARKET_KINDS) into[k.kind] = (into[k.kind] ?? 0) + (stats[k.kind] ?? 0)
    }
    const marketPublished = (): Record<string, number> => {
      const out: Record<string, number> = { ...gone }
      for (const p of parts) if (!p.crashed) addMarket(out, p.node.bus?.getStats().published ?? {})
      return out
    }
    const sample = async (): Promise<void> => {
      const layersByHead: number[] = []
      let active = 0
      for (const h of heads) {
        const mine = await h.agent!.bot.book.contracts({ head: h.node.peerId.toString(), status: 'active' })
        active += mine.length
        layersByHead.push(mine.reduce((k, c) => k + c.signed.doc.end - c.signed.doc.start, 0))
      }
      timeline.push({
        t: since(),
        layersByHead,
        activeContracts: active,
        marketMessages: Object.values(marketPublished()).reduce((a, b) => a + b, 0),
        served: demand.served,
        failed: demand.failed + demand.unavailable
      })
    }
    let sampling = true
    const sampler = (async () => { while (sampling) { await sample().catch(() => {}); await sleep(500) } })()

    // ---- forgers: tampered envelopes and forged receipts through their real gossipsub ----
    const forgers = parts.filter((p) => p.member.adversary === 'forger')
    const fraud = { forgedEnvelopes: 0, forgedReceipts: 0 }
    let forging = forgers.length > 0
    const forgery = (async () => {
      while (forging) {
        await sleep(2000)
        if (!forging) break
        for (const f of forgers) {
          if (f.crashed) continue
          await forge(f, heads[0], model, fraud).catch((err: unknown) => { log(`forger ${f.member.name}: ${(err as Error).message}`) })
        }
      }
    })()

    const lendableTotal = parts.reduce((k, p) => k + p.lendable, 0)
    if (lendableTotal < model.nLayer) {
      notApplied.unshift(`demand: the workers may lend ${lendableTotal} layers in all, fewer than the model's ${model.nLayer}, so no head can cover it (more agents, or a smaller model)`)
      log(notApplied[0])
    }
    const coverWaitMs = lendableTotal < model.nLayer ? 15_000 : 180_000
    await waitFor('the first head to assemble its pipeline', () => coveredAt.some((c) => c !== null), coverWaitMs, 100).catch(() => {
      if (lendableTotal < model.nLayer) return
      // Heads compete for the same machines: the cast may not hold enough for any of them. That is a finding, not a crash.
      notApplied.unshift(`demand: no head covered the model within ${coverWaitMs / 1000} s (heads compete for ${lendableTotal} lendable layers; see the agents table)`)
      log(notApplied[0])
    })

    // ---- outside demand against the heads' paid APIs, with churn in the middle ----
    const demandMs = coveredAt.some((c) => c !== null) ? (opts.demandSeconds ?? 40) * 1000 : 0
    const ratePerS = Math.min(2, Math.max(0.5, s.demand.requestsPerMinute / 60))
    const keys = new Map<Participant, string>()
    for (const h of heads) keys.set(h, (await createKey(h.node.store.db, { credits: 1_000_000_000, ratePerMin: 6000, label: 'simulated users' })).secret)
    const churnRate = s.churn.crashPerHour + s.churn.leavePerHour
    const workersIn = parts.filter((p) => !p.member.head)
    const churnEvents = churnRate === 0 ? 0 : Math.min(Math.max(1, Math.floor(workersIn.length / 4)), Math.max(1, Math.round(workersIn.length * churnRate * s.durationHours)))
    const churn = { crashes: 0, leaves: 0, recoverS: [] as Array<number | null> }
    const churnAt = Array.from({ length: churnEvents }, (_, i) => demandMs * (i + 1) / (churnEvents + 1))
    const tDemand = Date.now()
    let nextChurn = 0
    const inFlight = new Set<Promise<void>>()
    while (Date.now() - tDemand < demandMs) {
      if (nextChurn < churnAt.length && Date.now() - tDemand >= churnAt[nextChurn]) {
        // A churn event waits for a worker that serves a head (a head between pipelines has none):
        // dropping it instead left a run without the crash its scenario asked for.
        const victim = await pickVictim(heads, parts, churnRng)
        if (victim !== undefined) {
          nextChurn++
          const crash = churnRng.uniform(0, churnRate) < s.churn.crashPerHour
          const { part, head } = victim
          const hi = heads.indexOf(head)
          const at = Date.now()
          const slot = churn.recoverS.push(null) - 1
          const onBack = (i: number): void => { if (i === hi && churn.recoverS[slot] === null) churn.recoverS[slot] = (Date.now() - at) / 1000 }
          reassembled.push(onBack)
          log(`${crash ? 'crash' : 'leave'}: ${part.member.name} (serving ${head.member.name}) at ${since().toFixed(1)} s`)
          addMarket(gone, part.node.bus?.getStats().published ?? {})
          part.crashed = true
          if (crash) {
            // A crash: the node vanishes from the network first; its processes are cleaned up after.
            churn.crashes++
            await part.node.stop().catch(() => {})
            await part.agent?.stop().catch(() => {})
          } else {
            churn.leaves++
            await part.agent?.stop().catch(() => {})
            await part.node.stop().catch(() => {})
          }
        }
      }
      demand.requests++
      const live = heads.filter((h) => !h.crashed && coveredAt[heads.indexOf(h)] !== null)
      const head = live[demand.requests % Math.max(1, live.length)]
      const wtp = s.demand.wtpMedian * Math.exp(demandRng.normal(0, s.demand.wtpSpread))
      const retail = head === undefined ? undefined : retailPerMTok(head, model)
      if (head === undefined || retail === undefined) {
        demand.unavailable++
      } else if (wtp < retail) {
        demand.pricedOut++
      } else {
        demand.sent++
        const req = request(head, keys.get(head)!, Math.min(8, s.demand.tokensPerRequest), demand)
        inFlight.add(req)
        void req.finally(() => inFlight.delete(req))
      }
      await sleep(1000 / ratePerS)
    }
    await Promise.allSettled([...inFlight])
    log(`demand over: ${demand.served}/${demand.requests} requests served; settling receipts`)

    // ---- settle: every served request's receipts signed and booked ----
    await waitFor('usage to settle', async () => {
      for (const h of heads) {
        if (h.crashed) continue
        const keyRow = await h.node.store.db.get<{ id: string }>('SELECT id FROM api_keys LIMIT 1')
        if (keyRow !== undefined && (await h.agent!.receipts.book.funds(keyRow.id)).pending > 0) return false
      }
      return true
    }, 60_000, 250).catch((err: unknown) => { log(`not all usage settled: ${(err as Error).message}`) })
    await sleep(1500) // gossip carries the last receipts to bystanders
    forging = false
    sampling = false
    await Promise.all([forgery, sampler])

    // ---- measure ----
    const alive = parts.filter((p) => !p.crashed)
    const contracts = new Map<string, { signed: SignedContract, status: string }>()
    for (const h of heads) {
      for (const c of await h.agent!.bot.book.contracts({ head: h.node.peerId.toString() })) contracts.set(c.id, { signed: c.signed, status: c.status })
    }
    const layersAtEnd = heads.map((h) => [...contracts.values()].filter((c) => c.status === 'active' && c.signed.doc.head === h.node.peerId.toString()).reduce((k, c) => k + c.signed.doc.end - c.signed.doc.start, 0))
    const byId = new Map(parts.map((p) => [p.node.peerId.toString(), p]))
    const bounds = { contractsChecked: 0, floorBreaches: 0, ceilingBreaches: 0, memoryBreaches: 0 }
    const layersActive = new Map<string, number>()
    let contractsWithInjectors = 0
    for (const { signed, status } of contracts.values()) {
      const d = signed.doc
      const worker = byId.get(d.worker)
      const head = byId.get(d.head)
      bounds.contractsChecked++
      if (worker === undefined || d.price < worker.member.floor) bounds.floorBreaches++
      if (d.price > s.heads.ceiling) bounds.ceilingBreaches++
      if (status === 'active') layersActive.set(d.worker, (layersActive.get(d.worker) ?? 0) + d.end - d.start)
      if (d.end - d.start > (worker?.lendable ?? 0)) bounds.memoryBreaches++
      if (worker?.member.adversary === 'injector' || head?.member.adversary === 'injector') contractsWithInjectors++
    }
    for (const [w, layers] of layersActive) if (layers > (byId.get(w)?.lendable ?? 0)) bounds.memoryBreaches++
    const prices = [...contracts.values()].map((c) => c.signed.doc)
    const layerSum = prices.reduce((k, d) => k + d.end - d.start, 0)
    const market = marketPublished()
    const marketTotal = Object.values(market).reduce((a, b) => a + b, 0)
    const rejected: Record<string, number> = {}
    let receiptsRefused = 0
    for (const p of alive) {
      for (const [reason, k] of Object.entries(p.node.bus!.getStats().rejected)) if (k > 0) rejected[reason] = (rejected[reason] ?? 0) + k
      receiptsRefused += p.agent!.receipts.stats.rejectedReceipts
    }
    // Earnings as a bystander's ledger mirror sees them (every node recomputes everyone's balances).
    const bystander = alive.find((p) => !p.member.head && p.member.adversary === undefined) ?? alive[0]
    const balances = await allBalances(bystander.node.store.db)
    const rows: MeshAgentRow[] = []
    for (const p of parts) {
      const id = p.node.peerId.toString()
      rows.push({
        name: p.member.name, peerId: id, profile: p.member.profileName, role: p.member.head ? 'head' : 'worker', adversary: p.member.adversary,
        floor: p.member.floor, lendableLayers: p.lendable, contracts: prices.filter((d) => d.worker === id).length, earned: balances.get(agentAccount(id)) ?? 0, crashed: p.crashed
      })
    }
    const earned = rows.filter((r) => r.role === 'worker').map((r) => r.earned)
    let chainsOk = true
    let conserved = true
    let receiptsBooked = 0
    for (const p of alive) {
      chainsOk &&= (await verifyChain(p.node.store.db)).ok
      conserved &&= (await conservation(p.node.store.db)).total === 0
    }
    receiptsBooked = (await bystander.node.store.db.get<{ k: number }>('SELECT COUNT(*) AS k FROM ledger WHERE receipt IS NOT NULL'))?.k ?? 0
    const lat = [...demand.latencies].sort((a, b) => a - b)
    const head0 = heads.find((h) => !h.crashed)
    return {
      scenario: s.name,
      transport: 'libp2p',
      seed,
      agents: n,
      wallSeconds: Math.round((Date.now() - wall0) / 100) / 10,
      model: { name: s.model.name, nLayer: s.model.nLayer, layerGB: s.model.layerGB, quant: s.model.quant, realBytesPerLayer: model.layerBytes },
      mesh: { formedS: round(formedS) },
      coverage: { perHeadS: coveredAt.map((c) => c === null ? null : round(c)), firstS: minOrNull(coveredAt), pipelines, layersAtEnd },
      contracts: {
        signed: contracts.size,
        broken: [...contracts.values()].filter((c) => c.status === 'broken').length,
        active: [...contracts.values()].filter((c) => c.status === 'active').length
      },
      price: {
        meanPerLayer: layerSum === 0 ? null : round(prices.reduce((k, d) => k + d.price * (d.end - d.start), 0) / layerSum),
        retailPerMTok: roundOrNull(head0 === undefined ? undefined : retailPerMTok(head0, model))
      },
      messages: { market, total: marketTotal, perContract: contracts.size === 0 ? null : round(marketTotal / contracts.size), rejected },
      demand: {
        requests: demand.requests, pricedOut: demand.pricedOut, sent: demand.sent, served: demand.served, unavailable: demand.unavailable, failed: demand.failed,
        servedShare: demand.requests === 0 ? 0 : round(demand.served / demand.requests),
        tokens: demand.tokens,
        latencyP50Ms: lat.length === 0 ? null : Math.round(percentile(lat, 50)),
        latencyP95Ms: lat.length === 0 ? null : Math.round(percentile(lat, 95)),
        errors: demand.errors.slice(0, 10)
      },
      churn,
      fraud: { ...fraud, receiptsRefused },
      injection: { injectors: cast.filter((m) => m.adversary === 'injector').length, contractsWithInjectors },
      bounds,
      earnings: { gini: earned.length === 0 ? null : round(gini(earned)), total: earned.reduce((a, b) => a + b, 0), earners: earned.filter((e) => e > 0).length },
      ledger: { nodes: alive.length, chainsOk, conserved, receiptsBooked },
      notApplied,
      timeline,
      agentsTable: rows
    }
  } finally {
    for (const p of parts) if (!p.crashed) await p.agent?.stop().catch(() => {})
    await stopAll(parts.filter((p) => !p.crashed).map((p) => p.node))
    if (opts.keepHomes === true) log(`homes kept in ${root} (clawmesh transcripts --home ${root}/<agent>)`)
    else await rm(root, { recursive: true, force: true })
  }
}

/** A worker holding one of a live head's active contracts (so that its leaving is felt). */
async function pickVictim (heads: Participant[], parts: Participant[], rng: Rng): Promise<{ part: Participant, head: Participant } | undefined> {
  const options: Array<{ part: Participant, head: Participant }> = []
  for (const h of heads) {
    if (h.crashed) continue
    for (const c of await h.agent!.bot.book.contracts({ head: h.node.peerId.toString(), status: 'active' })) {
      const part = parts.find((p) => p.node.peerId.toString() === c.signed.doc.worker && !p.crashed)
      if (part !== undefined && !options.some((o) => o.part === part)) options.push({ part, head: h })
    }
  }
  return options.length === 0 ? undefined : options[rng.int(0, options.length)]
}

/** What a user pays the head per million tokens: Σ price × layers of its active contracts. */
function retailPerMTok (head: Participant, model: ModelRef): number | undefined {
  const assembled = head.agent!.bot.assembly(model.sha256)
  if (assembled?.pipeline === undefined) return undefined
  return assembled.contracts.reduce((k, c) => k + dealCost(c.doc), 0) + (head.node.config.gateway?.networkFeePerMTok ?? 0)
}

/** One outside user's chat request through a head's paid API (the OpenAI wire format). */
async function request (head: Participant, secret: string, maxTokens: number, d: { served: number, unavailable: number, failed: number, tokens: number, latencies: number[], errors: string[] }): Promise<void> {
  const gateways = await head.agent!.gateways()
  if (gateways.length === 0) { d.unavailable++; return }
  const t = Date.now()
  try {
    const res = await fetch(`${gateways[0].url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'Tell me about the mesh.' }], max_tokens: maxTokens, temperature: 0 }),
      signal: AbortSignal.timeout(30_000)
    })
    const body = await res.json() as { usage?: { total_tokens?: number }, error?: { message?: string } }
    if (res.status === 200) {
      d.served++
      d.tokens += body.usage?.total_tokens ?? 0
      d.latencies.push(Date.now() - t)
    } else if (res.status === 503) {
      d.unavailable++
    } else {
      d.failed++
      if (d.errors.length < 10) d.errors.push(`${res.status}: ${body.error?.message ?? ''}`.slice(0, 200))
    }
  } catch (err) {
    d.failed++
    if (d.errors.length < 10) d.errors.push((err as Error).message.slice(0, 200))
  }
}

/**
 * A forger's round: (1) a market envelope with its signature broken, published raw on the model's
 * market topic (gossipsub validators must reject it); (2) a receipt for work never done, sealed in a
 * valid envelope of its own but with the head's countersignature forged (every receipt service must
 * refuse to book it).
 */
async function forge (f: Participant, victimHead: Participant, model: ModelRef, fraud: { forgedEnvelopes: number, forgedReceipts: number }): Promise<void> {
  const bus = f.node.bus!
  const cfp = MARKET_KINDS[0]
  const env = await sealEnvelope(f.node.key, cfp, { cfpId: `forged${Date.now()}`, model: model.sha256, modelRef: { sha256: model.sha256, name: model.name, nLayer: model.nLayer, layerBytes: model.layerBytes }, want: { start: 0, end: model.nLayer }, budget: 1, deadline: Date.now() + 10_000, serveUntil: Date.now() + 60_000, maxRounds: 1, text: 'forged' }, { networkId: f.node.config.networkId })
  const tampered = { ...env, sig: toBase64Url(new Uint8Array(64)) }
  fraud.forgedEnvelopes++
  await f.node.host!.services.pubsub.publish(bus.topic(cfp.kind, marketScope(model.sha256)), encodeEnvelope(tampered as never))
  const forged = await receiptWithForgedHead(f.node.key, { head: victimHead.node.peerId.toString(), modelHash: model.sha256, price: 1000, now: Date.now() })
  fraud.forgedReceipts++
  await bus.publish(ReceiptKind, forged)
}

const roundOrNull = (x: number | undefined): number | null => x === undefined ? null : round(x)
const minOrNull = (xs: Array<number | null>): number | null => { const v = xs.filter((x): x is number => x !== null); return v.length === 0 ? null : round(Math.min(...v)) }
