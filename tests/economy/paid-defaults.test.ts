// Default prices make a paid mesh that pays, and what it earns shows where the README says: the board,
// /metrics and `clawmesh status --json`. The end-to-end part runs the real wiring: a llama-server whose
// 4 layers run on two rpc-server processes (one per worker contract, at the default floor), the paid
// API in front, receipts signed over gossip by the worker nodes and settled by the head.
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import parsePrometheusTextFormat from 'parse-prometheus-text-format'
import { AgentSettingsSchema, ConfigSchema, DEFAULT_PRICE_FLOOR, loadConfig } from '../../runtime/config.ts'
import { receiptAmount } from '../../protocols/receipts.ts'
import { chargeFor } from '../../runtime/gateway/pricing.ts'
import { boundsOn, ownerBoundsFrom } from '../../skills/market/owner-policy.ts'
import type { LlamaBuild } from '../../runtime/engine/build.ts'
import type { Gateway } from '../../runtime/gateway/server.ts'
import { startPaidApi } from '../../runtime/gateway/serve.ts'
import { createKey } from '../../runtime/gateway/keys.ts'
import { agentAccount } from '../../runtime/ledger/ledger.ts'
import { moneySummary } from '../../runtime/ledger/summary.ts'
import type { ContractRow } from '../../runtime/ledger/contracts.ts'
import { readMoney } from '../../runtime/board/read-money.ts'
import { readModels } from '../../runtime/board/read-models.ts'
import { createMetrics } from '../../runtime/board/metrics.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { llamaBuildOrSkip } from '../engine/helpers.ts'
import { cliEnv, runJson } from '../helpers/cli.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { MODEL_NAME, TINY, pipelineContracts, recordContracts, startEconomyMesh, startSplitPipeline, tinyModel, type EconomyMesh, type SplitPipeline } from './fixture.ts'

const RANGES: Array<[number, number]> = [[0, 2], [2, 4]]

describe('default prices', () => {
  it('pay each of 2 workers at least 1 credit for a 37-token request on a 4-layer model', () => {
    const config = ConfigSchema.parse({})
    expect(config.priceFloor).toBe(DEFAULT_PRICE_FLOOR)
    const floor = config.priceFloor
    const contracts: ContractRow[] = RANGES.map(([layerStart, layerEnd], i) => ({ id: `c${i}`, modelSha256: 'm', head: 'h', worker: `w${i}`, layerStart, layerEnd, price: floor, expiresAt: Date.now() + 60_000, status: 'active' }))
    for (const c of contracts) expect(receiptAmount({ tokens: 37, prior: 0, layers: c.layerEnd - c.layerStart, price: c.price })).toBeGreaterThanOrEqual(1)
    expect(chargeFor(37, contracts, 0).workers.every((w) => w.amount >= 1)).toBe(true)
    // The old floor of 1 credit per million layer-tokens paid nothing at all.
    expect(receiptAmount({ tokens: 37, prior: 0, layers: 2, price: 1 })).toBe(0)
  })

  it('let a head with default bounds buy every layer of a model from workers at their default floor', () => {
    const floor = ConfigSchema.parse({}).priceFloor
    const bounds = boundsOn(ownerBoundsFrom(AgentSettingsSchema.parse({}), floor), { freeMemory: 64 * 2 ** 30 })
    expect(bounds.floor).toBe(floor)
    expect(bounds.ceiling).toBeGreaterThanOrEqual(floor)
    // The offline negotiator's call for n of N layers may spend min(ceiling × n, budget × n / N).
    for (const layers of [4, 32, 80]) expect(Math.min(bounds.ceiling, bounds.budget / layers)).toBeGreaterThanOrEqual(floor)
  })
})

describe('one floor: priceFloor, with agent.floor a deprecated alias', () => {
  let home: string
  beforeAll(async () => { home = await mkdtemp(join(tmpdir(), 'clawmesh-floor-')) })
  afterAll(async () => { await rm(home, { recursive: true, force: true }) })

  const load = async (file: object, env: NodeJS.ProcessEnv = {}): Promise<{ priceFloor: number, agentFloor: number | undefined, warnings: string[] }> => {
    await writeFile(join(home, 'config.json'), JSON.stringify(file))
    const warnings: string[] = []
    const config = await loadConfig(home, {}, env, (m) => warnings.push(m))
    return { priceFloor: config.priceFloor, agentFloor: config.agent?.floor, warnings }
  }

  it('moves agent.floor onto priceFloor, with a warning that says where it goes', async () => {
    const r = await load({ agent: { floor: 30_000, ceiling: 90_000 } })
    expect(r).toMatchObject({ priceFloor: 30_000, agentFloor: undefined })
    expect(r.warnings).toEqual([expect.stringMatching(/agent\.floor is deprecated.*sets priceFloor \(30000\).*top-level "priceFloor"/)])
  })

  it('lets priceFloor win when both are set, and says that agent.floor is ignored', async () => {
    const r = await load({ priceFloor: 25_000, agent: { floor: 30_000 } })
    expect(r).toMatchObject({ priceFloor: 25_000, agentFloor: undefined })
    expect(r.warnings).toEqual([expect.stringMatching(/agent\.floor \(30000\) is deprecated and ignored: priceFloor \(25000\)/)])
    const env = await load({ agent: { floor: 30_000 } }, { CLAWMESH_PRICE_FLOOR: '40000' })
    expect(env.priceFloor).toBe(40_000)
  })

  it('says nothing when only priceFloor is set', async () => {
    expect((await load({ priceFloor: 22_000 })).warnings).toEqual([])
  })
})

async function scrape (node: MeshNode): Promise<(name: string, labels?: Record<string, string>) => number> {
  const families = parsePrometheusTextFormat(await createMetrics(node).metrics()) as Array<{ name: string, metrics: Array<{ value: string, labels?: Record<string, string> }> }>
  return (name, labels = {}) => {
    const family = families.find((f) => f.name === name)
    if (family === undefined) throw new Error(`no ${name} in /metrics`)
    const sample = family.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))
    if (sample === undefined) throw new Error(`no ${name}${JSON.stringify(labels)} in /metrics`)
    return Number(sample.value)
  }
}

let dir: { path: string, cleanup: () => Promise<void> }
let build: LlamaBuild | undefined
let pipeline: SplitPipeline
let mesh: EconomyMesh
let gateway: Gateway
let model: { path: string, sha256: string }

describe('a paid request at default prices, end to end', () => {
  beforeAll(async () => {
    const outcome = await llamaBuildOrSkip()
    if ('skip' in outcome) return
    build = outcome.build
    dir = await tempDir('clawmesh-paid-defaults-')
    model = await tinyModel(dir.path, 11)
    pipeline = await startSplitPipeline(build, model.path, RANGES)
    // Every price and gateway setting at its default, except settling at once instead of after 30 s.
    mesh = await startEconomyMesh(dir.path, 3, { settleDelayMs: 0 }, { gateway: { port: 0 } })
    const [head, w1, w2] = mesh.nodes
    await recordContracts(mesh.nodes, await pipelineContracts(head, [w1, w2], model.sha256, RANGES, [DEFAULT_PRICE_FLOOR, DEFAULT_PRICE_FLOOR]))
    gateway = await startPaidApi(head, mesh.services[0], { url: pipeline.server.url, modelSha256: model.sha256, modelName: MODEL_NAME })
  }, 600_000)

  afterAll(async () => {
    await gateway?.stop()
    for (const s of mesh?.services ?? []) s.stop()
    await stopAll(mesh?.nodes ?? [])
    await pipeline?.stop()
    await dir?.cleanup()
  })

  it('earns each worker credits, and the board, /metrics and status --json show tokens, credits and gateway usage', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const [head, w1, w2] = mesh.nodes
    // Before any request: the series exist at 0, as the README promises.
    const before = await scrape(w1)
    expect(before('clawmesh_tokens_served_total', { model: model.sha256 })).toBe(0)
    expect(before('clawmesh_credits', { account: agentAccount(w1.peerId.toString()) })).toBe(0)
    expect(before('clawmesh_earned_credits_total')).toBe(0)

    const { key, secret } = await createKey(head.store.db, { label: 'alice', credits: 1000 })
    const r = await fetch(`${gateway.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
      body: JSON.stringify({ prompt: 'Once upon a time there was a small robot', max_tokens: 30, temperature: 0, ignore_eos: true })
    })
    expect(r.status, await r.clone().text()).toBe(200)
    const usage = (await r.json() as { usage: { prompt_tokens: number, completion_tokens: number } }).usage
    const tokens = usage.prompt_tokens + usage.completion_tokens
    expect(tokens).toBeGreaterThanOrEqual(35)
    expect(tokens).toBeLessThan(60)
    const perWorker = Math.floor(tokens * 2 * DEFAULT_PRICE_FLOOR / 1e6)
    expect(perWorker).toBeGreaterThanOrEqual(1)

    // Settled by the head, heard by each worker over gossip: each holds what its receipt paid.
    for (const w of [w1, w2]) {
      await waitFor(`${w.config.name} to be paid`, async () => (await moneySummary(w.store.db, w.peerId.toString())).earned > 0, 30_000)
      const m = await moneySummary(w.store.db, w.peerId.toString())
      expect(m).toMatchObject({ balance: perWorker, earned: perWorker, pendingEarnings: 0, receipts: { settled: 1, pending: 0 }, tokensServed: { [model.sha256]: tokens } })
      // The worker counted the tokens when it signed their receipt.
      expect(w.serving.total().get(model.sha256)).toBe(tokens)
    }
    expect(head.serving.total().get(model.sha256)).toBe(tokens)

    // The board: tokens served on the model, gateway usage per key, the worker's earnings.
    const shard = (await readModels(head)).find((m) => m.sha256 === model.sha256)
    expect(shard?.tokensServed).toBe(tokens)
    expect(shard?.tokensPerSec).toBeGreaterThan(0)
    const headMoney = await readMoney(head)
    expect(headMoney.gateway?.columns).toContain('credits charged')
    const row = headMoney.gateway!.rows.find((cells) => cells[0] === key.id)!
    const cell = (name: string): unknown => row[headMoney.gateway!.columns.indexOf(name)]
    expect({ requests: cell('requests'), prompt: cell('prompt tokens'), completion: cell('completion tokens'), charged: cell('credits charged'), balance: cell('balance') })
      .toEqual({ requests: 1, prompt: usage.prompt_tokens, completion: usage.completion_tokens, charged: 2 * perWorker, balance: 1000 - 2 * perWorker })
    expect((await readMoney(w1)).summary.earned).toBe(perWorker)

    // /metrics on a worker and on the head.
    const worker = await scrape(w1)
    expect(worker('clawmesh_tokens_served_total', { model: model.sha256 })).toBe(tokens)
    expect(worker('clawmesh_earned_credits_total')).toBe(perWorker)
    expect(worker('clawmesh_credits', { account: agentAccount(w1.peerId.toString()) })).toBe(perWorker)
    const metrics = await scrape(head)
    expect(metrics('clawmesh_tokens_served_total', { model: model.sha256 })).toBe(tokens)
    expect(metrics('clawmesh_gateway_requests_total')).toBe(1)
    expect(metrics('clawmesh_gateway_tokens_total', { kind: 'prompt' })).toBe(usage.prompt_tokens)
    expect(metrics('clawmesh_gateway_tokens_total', { kind: 'completion' })).toBe(usage.completion_tokens)
    expect(metrics('clawmesh_gateway_charged_credits_total')).toBe(2 * perWorker)

    // clawmesh status --json, run as the owner would, beside the running node.
    interface Status { running: boolean, balance: number, earned: number, tokensServed: Record<string, number>, live?: { serving?: { tokens: Record<string, number> } }, money: { gateway: { requests: number, charged: number } | null } }
    const env = cliEnv(dir.path)
    await waitFor('w1 to write its serving totals to status.json', async () =>
      (await runJson<Status>(['status', '--home', w1.home], env)).live?.serving?.tokens[model.sha256] === tokens, 20_000, 200)
    const status = await runJson<Status>(['status', '--home', w1.home], env)
    expect(status).toMatchObject({ running: true, balance: perWorker, earned: perWorker, tokensServed: { [model.sha256]: tokens }, money: { gateway: null } })
    const headStatus = await runJson<Status>(['status', '--home', head.home], env)
    expect(headStatus.money.gateway).toMatchObject({ requests: 1, charged: 2 * perWorker })
    expect(TINY.nLayer).toBe(4)
  }, 180_000)
})
