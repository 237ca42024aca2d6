import { generateKeyPairFromSeed } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import {
  ReceiptInvalid, ReceiptKind, ReceiptProposalKind, ReceiptSignatureKind, countersignAsHead, receiptAmount, receiptId, sha256Hex, signAsWorker,
  type Receipt, type SignedReceipt
} from '../protocols/receipts.ts'
import { contractId, dealCost, encodeEnvelope, sealEnvelope, toBase64Url, type ModelRef, type SignedContract } from '../protocols/index.ts'
import { Store } from '../runtime/store/store.ts'
import { ingestReceipt } from '../runtime/ledger/mirror.ts'
import { EXTERNAL_TOPUP, agentAccount, allBalances, appendTransfers, conservation, headAccount, verifyChain } from '../runtime/ledger/ledger.ts'
import { SimClock, installSimTime } from './core/clock.ts'
import { Rng } from './core/rng.ts'
import { SimNetwork, type NetworkStats, type SimBus } from './transport/sim-bus.ts'
import { SimAgent } from './agents/sim-agent.ts'
import type { Adversary } from './roster.ts'
import { DEFAULT_PROFILES, type Scenario } from './scenario.ts'
import { castScenario } from './roster.ts'
import { gini, round } from './lib/stats.ts'
import { receiptWithForgedHead } from './lib/forgery.ts'

const MINUTE = 60_000
const HOUR = 60 * MINUTE
const USERS = 'user:outside'

export interface RunOptions {
  seed?: number
  agents?: number
  /** The baseline run of a cartel scenario: members price like honest owners. */
  cartelHonest?: boolean
  progress?: (line: string) => void
}

export interface Bucket {
  t: number
  contracts: number
  layers: number
  priceSum: number
  requested: number
  served: number
  retailSum: number
  retailN: number
  pipelines: number
  online: number
}

/** Where each honest head stands when the run ends (why a head did not cover, when it did not). */
export interface HeadState { name: string, gullible: boolean, coveredMin: number | null, layersHeld: number, assembled: boolean, openCalls: number, callsThisHour: number, threads: Record<string, number> }

export interface AgentRow {
  name: string
  peerId: string
  profile: string
  role: 'head' | 'worker'
  adversary?: Adversary
  /** Its brain obeys injected text (adversaries.gullibleShare). */
  gullible: boolean
  floor: number
  earned: number
  contracts: number
}

export interface SimMetrics {
  scenario: string
  seed: number
  agents: number
  simHours: number
  wallSeconds: number
  events: number
  fanout: string
  model: { name: string, nLayer: number, layerGB: number, quant: string, totalGB: number }
  coverage: { firstCoveredMin: number | null, headsCovered: number, heads: number, perHeadMin: Array<number | null>, assemblies: number, pipelineFailures: number, headsAtEnd: HeadState[] }
  price: { meanPerLayer: number | null, medianPerLayer: number | null, byProfile: Record<string, number>, cartelMean: number | null, honestMean: number | null, dumperMean: number | null }
  demand: { requestedTokens: number, servedTokens: number, servedShare: number, unserved: Record<string, number> }
  earnings: { gini: number, giniEarners: number, earners: number, total: number, byProfile: Record<string, number>, top10Share: number }
  messages: { published: Record<string, number>, total: number, market: number, perContract: number | null, deliveries: number, skippedDeliveries: number, rejected: Record<string, number>, accepted: number }
  contracts: { signed: number, ended: number, broken: number }
  crypto: { seals: number, sealMs: number, opens: number, openMs: number, cacheHits: number, perSealMs: number, perOpenMs: number, verifyCache: boolean }
  fraud: { attempts: Record<string, number>, caught: Record<string, number>, receiptProposalsRefusedByWorkers: number, forgedReceipts: number, forgedCaught: number, envelopeAttacks: number, envelopeRejected: number }
  injection: { injectors: number, attempts: number, followedByBrain: number, refusedByPolicy: number, contractsWithInjectors: number, breaches: number }
  policy: { refused: Record<string, number>, done: Record<string, number>, failed: Record<string, number> }
  bounds: { contractsChecked: number, floorBreaches: number, ceilingBreaches: number, memoryBreaches: number }
  ledger: { entries: number, chainOk: boolean, total: number, held: number, external: number, mirrored: number, conserved: boolean, receiptsBooked: number }
  churn: { crashes: number, leaves: number, rejoins: number }
  handlerErrors: string[]
  timeline: Bucket[]
  agentsTable: AgentRow[]
}

interface ContractState {
  id: string
  signed: SignedContract
  at: number
  status: 'active' | 'ended' | 'broken'
  unsettled: number
  /** Tokens billed by earlier receipts (a receipt's `prior`). */
  billed: number
  seq: number
}

/** Runs one scenario on the simulated clock and returns its metrics. */
export async function runScenario (s: Scenario, opts: RunOptions = {}): Promise<SimMetrics> {
  const wall0 = performance.now()
  process.env.TZ = 'UTC'
  const seed = opts.seed ?? s.seed
  const rng = new Rng(seed)
  const nAgents = opts.agents ?? s.agents.count
  const start = Date.parse(s.startAt)
  const end = start + s.durationHours * HOUR
  const clock = new SimClock(start)
  const time = installSimTime(clock)
  const log = opts.progress ?? (() => {})
  try {
    const fanout = s.network.fanout === 'auto' ? (nAgents > 150 ? 'addressed' : 'full') : s.network.fanout
    const network = new SimNetwork({ networkId: 'sim', clock, rng: rng.fork(), latency: { baseMs: s.network.latencyMs, jitterMs: s.network.jitterMs }, fanout, verifyCache: s.network.verifyCache })
    const profiles = { ...DEFAULT_PROFILES, ...s.agents.profiles }
    const layerBytes = Math.round(s.model.layerGB * 1e9)
    const model: ModelRef = { sha256: sha256Hex(`${s.model.name}/${s.model.quant}/${s.model.nLayer}`), name: s.model.name, nLayer: s.model.nLayer, layerBytes }

    // ---- people ----
    const keyRng = rng.fork()
    const makeKey = async (): Promise<{ key: PrivateKey, id: string }> => {
      const key = await generateKeyPairFromSeed('Ed25519', keyRng.bytes(32))
      return { key, id: peerIdFromPrivateKey(key).toString() }
    }
    const ledgerStore = await Store.open(':memory:')
    const db = ledgerStore.db
    const auditor = await makeKey()
    const auditorBus = network.bus(auditor.key, auditor.id)

    const m = newMetrics()
    const agents: SimAgent[] = []
    const byId = new Map<string, SimAgent>()
    const contracts = new Map<string, ContractState>()
    const timeline: Bucket[] = []
    const bucketMs = Math.max(15 * MINUTE, Math.round(s.durationHours * HOUR / 96 / MINUTE) * MINUTE)
    const bucket = (t: number): Bucket => {
      const i = Math.floor((t - start) / bucketMs)
      while (timeline.length <= i) timeline.push({ t: (timeline.length * bucketMs) / HOUR, contracts: 0, layers: 0, priceSum: 0, requested: 0, served: 0, retailSum: 0, retailN: 0, pipelines: 0, online: 0 })
      return timeline[i]
    }
    const hooks = {
      onAssembled: (head: SimAgent) => { m.coverage.assemblies++; if (m.firstCovered === null) m.firstCovered = clock.now() - start; void head },
      onAction: (agent: SimAgent, a: { tool: string, outcome: 'done' | 'refused' | 'failed', detail: string }) => {
        if (agent.followingInjection && a.outcome === 'refused') m.injectionRefused++
        const rec = m.policy[a.outcome]
        rec[a.tool] = (rec[a.tool] ?? 0) + 1
        if (a.outcome === 'failed' && m.handlerErrors.length < 20) m.handlerErrors.push(`${a.tool}: ${a.detail}`.slice(0, 300))
      },
      onInjectionSeen: (_a: SimAgent, followed: boolean) => { m.injection.attempts++; if (followed) m.injection.followedByBrain++ }
    }

    const pRng = rng.fork()
    const gRng = rng.fork()
    const rows: AgentRow[] = []
    for (const member of castScenario(s, nAgents, pRng, { cartelHonest: opts.cartelHonest })) {
      const { index: i, head: isHead, adversary, profileName, profile, floor, hours, name } = member
      const injectorHead = adversary === 'injector' && isHead
      const { key, id } = await makeKey()
      const bus = network.bus(key, id)
      const agent = new SimAgent({
        index: i, name, key, peerId: id, bus, clock, profileName, profile, floor,
        settings: {
          floor,
          ceiling: injectorHead ? 1e8 : s.heads.ceiling,
          budget: injectorHead ? 1e9 : s.heads.budget,
          maxDeals: isHead ? 0 : s.owners.maxDeals,
          maxMemoryShare: profile.memoryShare,
          hours,
          proposalWindowMs: s.heads.proposalWindowMs,
          maxRounds: s.heads.maxRounds,
          offerTtlMs: s.owners.offerTtlMs
        },
        thinkMs: s.thinkMs,
        serveForMs: s.heads.serveForMinutes * MINUTE,
        maxCalls: s.heads.maxCalls,
        head: isHead,
        adversary,
        gullible: adversary === undefined && gRng.chance(s.adversaries.gullibleShare),
        hooks
      })
      agent.book.onSaved = (cid, signed) => { register(cid, signed) }
      agents.push(agent)
      byId.set(id, agent)
      rows.push({ name, peerId: id, profile: profileName, role: isHead ? 'head' : 'worker', adversary, gullible: agent.o.gullible, floor, earned: 0, contracts: 0 })
    }
    const rowOf = new Map(rows.map((r) => [r.peerId, r]))
    m.injection.injectors = s.adversaries.injectors
    log(`${nAgents} agents, fanout ${fanout}, model ${model.name} ${model.nLayer}×${s.model.layerGB} GB`)

    // ---- contracts: registry, expiry, bounds audit ----
    const committed = new Map<string, number>()
    function register (cid: string, signed: SignedContract): void {
      if (contracts.has(cid)) return
      const d = signed.doc
      contracts.set(cid, { id: cid, signed, at: clock.now(), status: 'active', unsettled: 0, billed: 0, seq: 0 })
      const b = bucket(clock.now())
      b.contracts++
      b.layers += d.end - d.start
      b.priceSum += d.price * (d.end - d.start)
      rowOf.get(d.worker)!.contracts++
      const head = byId.get(d.head)!
      const worker = byId.get(d.worker)!
      // The owners' bounds, checked on every contract anybody signed.
      m.bounds.contractsChecked++
      if (d.price < worker.bounds().floor) m.bounds.floorBreaches++
      if (d.price > head.bounds().ceiling) m.bounds.ceilingBreaches++
      const used = (committed.get(d.worker) ?? 0) + (d.end - d.start) * layerBytes
      committed.set(d.worker, used)
      if (used > worker.bounds().lendableBytes) m.bounds.memoryBreaches++
      if (head.o.adversary === 'injector' || worker.o.adversary === 'injector') m.injection.contractsWithInjectors++
      clock.at(d.serveUntil, async () => { await finish(cid, 'ended') })
    }
    async function finish (cid: string, status: 'ended' | 'broken'): Promise<void> {
      const c = contracts.get(cid)
      if (c === undefined || c.status !== 'active') return
      c.status = status
      const d = c.signed.doc
      committed.set(d.worker, (committed.get(d.worker) ?? 0) - (d.end - d.start) * layerBytes)
      if (status === 'ended') await settleContract(c)
      const head = byId.get(d.head)!
      await head.breakContract(cid, status)
      const worker = byId.get(d.worker)!
      await worker.releaseContract(cid, d.cfpId, d.head)
      if (status === 'ended') m.contracts.ended++
      else m.contracts.broken++
    }

    // ---- receipts and the ledger ----
    const booked: SignedReceipt[] = []
    for (const a of agents) {
      const bus = a.o.bus
      bus.subscribe(ReceiptProposalKind, async (env) => {
        const r = env.body
        if (r.worker !== a.id || env.from !== r.head) return
        const c = (await a.book.contracts({})).find((x) => x.id === r.contract)
        if (c === undefined || c.signed.doc.price !== r.price || c.signed.doc.end - c.signed.doc.start !== r.layers || c.signed.doc.head !== r.head) {
          m.receiptsRefusedByWorkers++
          return
        }
        await bus.publish(ReceiptSignatureKind, await signAsWorker(a.o.key, r))
      })
      bus.subscribe(ReceiptSignatureKind, async (env) => {
        if (env.body.receipt.head !== a.id || env.from !== env.body.receipt.worker) return
        const signed = await countersignAsHead(a.o.key, env.body)
        // As a real head settles: the signed contract travels with the receipt, for bystanders to check it against.
        const c = (await a.book.contracts({})).find((x) => x.id === signed.receipt.contract)
        await bus.publish(ReceiptKind, c === undefined ? signed : { ...signed, contract: c.signed })
      })
    }
    let receiptsBooked = 0
    auditorBus.subscribe(ReceiptKind, async (env) => {
      let result
      try {
        result = await ingestReceipt(db, auditor.id, env.body, {}, clock.now())
      } catch (err) {
        if (!(err instanceof ReceiptInvalid)) throw err
        const kind = err.message.includes('head countersignature') ? 'forged-head-signature' : err.message.includes('worker signature') ? 'forged-worker-signature' : 'invalid-receipt'
        m.fraud.caught[kind] = (m.fraud.caught[kind] ?? 0) + 1
        m.fraud.forgedCaught++
        return
      }
      if (result === 'duplicate') {
        m.fraud.caught['replayed-receipt'] = (m.fraud.caught['replayed-receipt'] ?? 0) + 1
        m.fraud.forgedCaught++
        return
      }
      if (result !== 'booked') return
      receiptsBooked++
      booked.push(env.body)
      if (booked.length > 500) booked.splice(0, 250)
      // The outside user pays the head its retail price for the same tokens.
      const r = env.body.receipt
      const retail = Math.floor(receiptAmount(r) * (1 + s.heads.markup))
      if (retail > 0) {
        await db.transaction(async (tx) => {
          await appendTransfers(tx, [
            { debit: EXTERNAL_TOPUP, credit: USERS, amount: retail, memo: 'top-up' },
            { debit: USERS, credit: agentAccount(r.head), amount: retail, memo: `usage ${r.contract}#${r.seq}`, ref: `fee:${receiptId(r)}` }
          ], clock.now())
        })
      }
    })
    async function settleContract (c: ContractState): Promise<void> {
      if (c.unsettled <= 0) return
      const d = c.signed.doc
      const head = byId.get(d.head)!
      if (!head.online) return
      const tokens = Math.round(c.unsettled)
      if (tokens <= 0) return
      const receipt: Receipt = { contract: c.id, seq: ++c.seq, tokens, prior: c.billed, layers: d.end - d.start, modelHash: d.model, price: d.price, head: d.head, worker: d.worker, ts: clock.now() }
      c.unsettled = 0
      c.billed += tokens
      await head.o.bus.publish(ReceiptProposalKind, receipt)
    }
    clock.every(s.settleEveryMinutes * MINUTE, async () => {
      for (const c of contracts.values()) if (c.status === 'active') await settleContract(c)
    }, { until: end })

    // ---- the market ----
    for (const a of agents) a.watch(model)
    agents.forEach((a, i) => {
      if (a.o.head) {
        const startIn = 1000 + i * 500 + (s.heads.count > 1 ? Math.round(i * s.heads.startSpreadMinutes * MINUTE / (s.heads.count - 1)) : 0)
        clock.after(startIn, async () => { a.assemble(model); await a.reviewGoal() })
        clock.every(5000, async () => { if (a.online) { await a.expireStale(); await a.reviewGoal() } }, { first: 5000 + i * 37, until: end })
      } else {
        clock.every(s.tickSeconds * 1000, async () => { if (a.online) await a.expireStale() }, { first: (i * 997) % (s.tickSeconds * 1000), until: end })
      }
    })
    clock.every(HOUR, async () => {
      for (const a of agents) {
        if (a.goal !== undefined) a.goal.calls = 0
        a.book.prune(clock.now() - HOUR)
      }
      log(`sim ${((clock.now() - start) / HOUR).toFixed(0)} h: ${contracts.size} contracts, ${clock.processed} events, ${((performance.now() - wall0) / 1000).toFixed(1)} s`)
    }, { until: end })

    // ---- churn ----
    const cRng = rng.fork()
    clock.every(HOUR, async () => {
      for (const a of agents) {
        if (a.o.head || a.left || !a.online) continue
        if (cRng.chance(s.churn.leavePerHour)) {
          clock.after(cRng.uniform(0, HOUR), async () => { if (!a.online) return; a.crash(); a.left = true; m.churn.leaves++ })
        } else if (cRng.chance(s.churn.crashPerHour)) {
          const downMin = cRng.uniform(s.churn.rejoinAfterMinutes[0], s.churn.rejoinAfterMinutes[1])
          clock.after(cRng.uniform(0, HOUR), async () => {
            if (!a.online || a.left) return
            a.crash()
            m.churn.crashes++
            clock.after(downMin * MINUTE, async () => { if (a.left) return; await a.restart(); m.churn.rejoins++ })
          })
        }
      }
    }, { first: 0, until: end })

    // ---- outside demand and serving ----
    const dRng = rng.fork()
    const modelBytes = layerBytes
    clock.every(MINUTE, async () => {
      const now = clock.now()
      const b = bucket(now)
      b.online = Math.max(b.online, agents.filter((a) => a.online).length)
      const pipes: Array<{ head: SimAgent, price: number, cap: number, contracts: SignedContract[] }> = []
      for (const h of agents) {
        const asm = h.goal?.assembled
        if (asm === undefined || h.o.adversary === 'injector' || !h.online) continue
        const down = asm.contracts.filter((c) => !(byId.get(c.doc.worker)?.online ?? false))
        if (down.length > 0) {
          // A worker stopped answering: the head's request fails, the contract breaks, it buys the range again.
          m.coverage.pipelineFailures++
          for (const c of down) await finish(contractId(c.doc), 'broken')
          continue
        }
        const cost = asm.contracts.reduce((sum, c) => sum + dealCost(c.doc), 0)
        let step = 0
        for (const c of asm.contracts) step += (c.doc.end - c.doc.start) * modelBytes / (byId.get(c.doc.worker)!.o.profile.bandwidthGBs * 1e9) + s.serving.hopMs / 1000
        pipes.push({ head: h, price: cost * (1 + s.heads.markup), cap: s.serving.batch / step * 60, contracts: asm.contracts })
      }
      pipes.sort((x, y) => x.price - y.price)
      b.pipelines = Math.max(b.pipelines, pipes.length)
      for (const p of pipes) { b.retailSum += p.price; b.retailN++ }
      const hour = new Date(now).getUTCHours()
      const rate = s.demand.requestsPerMinute * (s.demand.hourly?.[hour] ?? 1)
      const n = dRng.poisson(rate)
      for (let i = 0; i < n; i++) {
        const tokens = Math.max(1, Math.round(s.demand.tokensPerRequest * dRng.uniform(0.5, 1.5)))
        const wtp = s.demand.wtpMedian * Math.exp(dRng.normal(0, s.demand.wtpSpread))
        m.demand.requestedTokens += tokens
        b.requested += tokens
        if (pipes.length === 0) { m.demand.unserved['no-pipeline'] = (m.demand.unserved['no-pipeline'] ?? 0) + tokens; continue }
        const p = pipes.find((x) => x.price <= wtp && x.cap >= tokens)
        if (p === undefined) {
          const why = pipes.some((x) => x.price <= wtp) ? 'no-capacity' : 'too-expensive'
          m.demand.unserved[why] = (m.demand.unserved[why] ?? 0) + tokens
          continue
        }
        p.cap -= tokens
        m.demand.servedTokens += tokens
        b.served += tokens
        for (const c of p.contracts) {
          const st = contracts.get(contractId(c.doc))
          if (st !== undefined) st.unsettled += tokens
        }
      }
    }, { first: MINUTE, until: end })

    // ---- forgers ----
    const fRng = rng.fork()
    const bump = (rec: Record<string, number>, k: string): void => { rec[k] = (rec[k] ?? 0) + 1 }
    for (const f of agents.filter((a) => a.o.adversary === 'forger')) {
      clock.every(HOUR / 2, async () => {
        if (!f.online) return
        const heads = agents.filter((a) => a.o.head && a.o.adversary === undefined)
        const victim = fRng.pick(heads)
        // 1. A receipt for work never done: real worker signature, the head's countersignature forged.
        const forged = await receiptWithForgedHead(f.o.key, { head: victim.id, modelHash: model.sha256, price: s.heads.ceiling, now: clock.now() })
        bump(m.fraud.attempts, 'forged-head-signature'); m.fraud.forgedReceipts++
        await f.o.bus.publish(ReceiptKind, forged)
        // 2. A real settled receipt with its tokens inflated tenfold (signatures kept).
        const real = booked.length > 0 ? booked[fRng.int(0, booked.length)] : undefined
        if (real !== undefined) {
          bump(m.fraud.attempts, 'forged-worker-signature'); m.fraud.forgedReceipts++
          await f.o.bus.publish(ReceiptKind, { ...real, receipt: { ...real.receipt, tokens: real.receipt.tokens * 10 } })
          // 3. The same real receipt again, unchanged: it must not be paid twice.
          bump(m.fraud.attempts, 'replayed-receipt'); m.fraud.forgedReceipts++
          await f.o.bus.publish(ReceiptKind, real)
        }
        // 4. Envelope attacks: a signed envelope altered after signing, another peer's envelope
        //    re-published as ours, and our own envelope sent twice.
        const env = await sealEnvelope(f.o.key, ReceiptKind, forged, { networkId: 'sim', now: clock.now(), id: toBase64Url(fRng.bytes(16)) })
        const tampered = encodeEnvelope({ ...env, body: { ...env.body, receipt: { ...env.body.receipt, tokens: 1 } } } as typeof env)
        const topic = f.o.bus.topic(ReceiptKind.kind)
        m.fraud.envelopeAttacks += 3
        bump(m.fraud.attempts, 'tampered-envelope')
        f.o.bus.injectRaw(topic, tampered, ReceiptKind.kind)
        const other = network.captured.find((x) => x.from !== f.id && x.kind.startsWith('market-'))
        if (other !== undefined) { bump(m.fraud.attempts, 'impersonated-envelope'); f.o.bus.injectRaw(other.topic, other.bytes, other.kind) } else m.fraud.envelopeAttacks--
        const own = encodeEnvelope(env)
        // Its first copy is a fresh envelope carrying the forged receipt (the ledger must refuse it);
        // the second, five seconds later, is a replay (the replay guard must drop it).
        bump(m.fraud.attempts, 'forged-head-signature'); m.fraud.forgedReceipts++
        bump(m.fraud.attempts, 'replayed-envelope')
        f.o.bus.injectRaw(topic, own, ReceiptKind.kind)
        clock.after(5000, () => { f.o.bus.injectRaw(topic, own, ReceiptKind.kind) })
      }, { first: HOUR / 2 + fRng.int(0, 600_000), until: end })
    }

    // ---- run ----
    const onError = (err: unknown): void => { if (m.handlerErrors.length < 20) m.handlerErrors.push(`event: ${(err as Error).stack ?? String(err)}`.slice(0, 500)) }
    await clock.run(end, onError)
    // Settle what was served but not yet receipted, then let the receipts land.
    for (const c of contracts.values()) if (c.status === 'active') await settleContract(c)
    await clock.run(end + 10 * MINUTE, onError)

    // ---- results ----
    const balances = await allBalances(db)
    const cons = await conservation(db)
    const chain = await verifyChain(db)
    for (const r of rows) {
      const own = balances.get(agentAccount(r.peerId)) ?? 0
      const owes = -(balances.get(headAccount(r.peerId)) ?? 0)
      r.earned = own - owes
    }
    await ledgerStore.close()
    const ns: NetworkStats = network.stats
    const earners = rows.filter((r) => r.role === 'worker')
    const earned = earners.map((r) => Math.max(0, r.earned))
    const allContracts = [...contracts.values()].map((c) => c.signed.doc)
    const perLayer = (docs: typeof allContracts): number | null => {
      const layers = docs.reduce((n, d) => n + d.end - d.start, 0)
      return layers === 0 ? null : docs.reduce((sum, d) => sum + d.price * (d.end - d.start), 0) / layers
    }
    const advOf = (d: (typeof allContracts)[number]): Adversary | undefined => byId.get(d.worker)?.o.adversary
    const byProfile: Record<string, number> = {}
    const earnByProfile: Record<string, number> = {}
    for (const p of Object.keys(profiles)) {
      const v = perLayer(allContracts.filter((d) => byId.get(d.worker)?.o.profileName === p))
      if (v !== null) byProfile[p] = round(v)
      const e = earners.filter((r) => r.profile === p)
      if (e.length > 0) earnByProfile[p] = round(e.reduce((x, r) => x + r.earned, 0) / e.length)
    }
    const market = Object.entries(ns.published).filter(([k]) => k.startsWith('market-')).reduce((n, [, v]) => n + v, 0)
    const total = Object.values(ns.published).reduce((n, v) => n + v, 0)
    const sortedEarned = [...earned].sort((a, b) => b - a)
    const sumEarned = earned.reduce((a, b) => a + b, 0)
    const prices = allContracts.map((d) => d.price).sort((a, b) => a - b)
    const headsList = agents.filter((a) => a.o.head && a.o.adversary === undefined)
    const out: SimMetrics = {
      scenario: s.name,
      seed,
      agents: nAgents,
      simHours: s.durationHours,
      wallSeconds: round((performance.now() - wall0) / 1000),
      events: clock.processed,
      fanout,
      model: { name: s.model.name, nLayer: s.model.nLayer, layerGB: s.model.layerGB, quant: s.model.quant, totalGB: round(s.model.nLayer * s.model.layerGB) },
      coverage: {
        firstCoveredMin: m.firstCovered === null ? null : round(m.firstCovered / MINUTE),
        headsCovered: headsList.filter((h) => h.goal?.firstCoveredAt !== undefined).length,
        heads: headsList.length,
        perHeadMin: headsList.map((h) => h.goal?.firstCoveredAt === undefined ? null : round((h.goal.firstCoveredAt - start) / MINUTE)),
        assemblies: m.coverage.assemblies,
        pipelineFailures: m.coverage.pipelineFailures,
        headsAtEnd: await Promise.all(headsList.map(async (h): Promise<HeadState> => {
          const held = (await h.book.contracts({ head: h.id, status: 'active' })).reduce((n, c) => n + c.signed.doc.end - c.signed.doc.start, 0)
          const open = await h.book.negotiations({ role: 'head', status: ['open', 'choosing'] })
          const threads: Record<string, number> = {}
          for (const n of open) for (const t of await h.book.threads(n.cfpId)) threads[t.status] = (threads[t.status] ?? 0) + 1
          return { name: h.name, gullible: h.o.gullible, coveredMin: h.goal?.firstCoveredAt === undefined ? null : round((h.goal.firstCoveredAt - start) / MINUTE), layersHeld: held, assembled: h.goal?.assembled !== undefined, openCalls: open.length, callsThisHour: h.goal?.calls ?? 0, threads }
        }))
      },
      price: {
        meanPerLayer: nullRound(perLayer(allContracts)),
        medianPerLayer: prices.length === 0 ? null : prices[Math.floor(prices.length / 2)],
        byProfile,
        cartelMean: nullRound(perLayer(allContracts.filter((d) => advOf(d) === 'cartel'))),
        honestMean: nullRound(perLayer(allContracts.filter((d) => advOf(d) === undefined))),
        dumperMean: nullRound(perLayer(allContracts.filter((d) => advOf(d) === 'dumper')))
      },
      demand: { requestedTokens: m.demand.requestedTokens, servedTokens: m.demand.servedTokens, servedShare: m.demand.requestedTokens === 0 ? 0 : round(m.demand.servedTokens / m.demand.requestedTokens, 4), unserved: m.demand.unserved },
      earnings: {
        gini: round(gini(earned), 4),
        giniEarners: round(gini(earned.filter((x) => x > 0)), 4),
        earners: earned.filter((x) => x > 0).length,
        total: sumEarned,
        byProfile: earnByProfile,
        top10Share: sumEarned === 0 ? 0 : round(sortedEarned.slice(0, Math.max(1, Math.ceil(earned.length / 10))).reduce((a, b) => a + b, 0) / sumEarned, 4)
      },
      messages: {
        published: ns.published, total, market,
        perContract: contracts.size === 0 ? null : round(market / contracts.size, 1),
        deliveries: ns.deliveries, skippedDeliveries: ns.skippedDeliveries,
        rejected: Object.fromEntries(Object.entries(ns.rejected).filter(([, v]) => v > 0)),
        accepted: Object.values(ns.accepted).reduce((n, v) => n + v, 0)
      },
      contracts: { signed: contracts.size, ended: m.contracts.ended, broken: m.contracts.broken },
      crypto: { seals: ns.seals, sealMs: round(ns.sealMs), opens: ns.opens, openMs: round(ns.openMs), cacheHits: ns.cacheHits, perSealMs: round(ns.sealMs / Math.max(1, ns.seals), 3), perOpenMs: round(ns.openMs / Math.max(1, ns.opens), 3), verifyCache: s.network.verifyCache },
      fraud: { attempts: m.fraud.attempts, caught: m.fraud.caught, receiptProposalsRefusedByWorkers: m.receiptsRefusedByWorkers, forgedReceipts: m.fraud.forgedReceipts, forgedCaught: m.fraud.forgedCaught, envelopeAttacks: m.fraud.envelopeAttacks, envelopeRejected: Object.values(ns.rejected).reduce((n, v) => n + v, 0) },
      injection: { ...m.injection, refusedByPolicy: 0, breaches: 0 },
      policy: m.policy,
      bounds: m.bounds,
      ledger: { entries: chain.entries, chainOk: chain.ok, total: cons.total, held: cons.held, external: cons.external, mirrored: cons.mirrored, conserved: cons.total === 0 && cons.held === cons.external + cons.mirrored, receiptsBooked },
      churn: m.churn,
      handlerErrors: [...m.handlerErrors, ...network.handlerErrors.slice(0, 20)],
      timeline,
      agentsTable: rows
    }
    out.injection.refusedByPolicy = m.injectionRefused
    out.injection.breaches = m.bounds.floorBreaches + m.bounds.ceilingBreaches + m.bounds.memoryBreaches
    return out

    function newMetrics () {
      return {
        firstCovered: null as number | null,
        coverage: { assemblies: 0, pipelineFailures: 0 },
        demand: { requestedTokens: 0, servedTokens: 0, unserved: {} as Record<string, number> },
        contracts: { ended: 0, broken: 0 },
        fraud: { attempts: {} as Record<string, number>, caught: {} as Record<string, number>, forgedReceipts: 0, forgedCaught: 0, envelopeAttacks: 0 },
        injection: { injectors: 0, attempts: 0, followedByBrain: 0, contractsWithInjectors: 0 },
        injectionRefused: 0,
        receiptsRefusedByWorkers: 0,
        policy: { refused: {} as Record<string, number>, done: {} as Record<string, number>, failed: {} as Record<string, number> },
        bounds: { contractsChecked: 0, floorBreaches: 0, ceilingBreaches: 0, memoryBreaches: 0 },
        churn: { crashes: 0, leaves: 0, rejoins: 0 },
        handlerErrors: [] as string[]
      }
    }
  } finally {
    time.restore()
  }
}

function nullRound (x: number | null): number | null {
  return x === null ? null : round(x)
}
export type { SimBus }
