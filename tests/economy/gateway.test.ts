// The paid API end to end: the official openai client against the gateway, in front of a real
// llama-server whose 4 layers run on two rpc-server processes, each the slice of one worker agent
// under its own contract; receipts are signed over gossip by the worker nodes and settled by the head.
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { LlamaBuild } from '../../runtime/engine/build.ts'
import type { Gateway } from '../../runtime/gateway/server.ts'
import { startPaidApi } from '../../runtime/gateway/serve.ts'
import { createKey, revokeKey } from '../../runtime/gateway/keys.ts'
import { NETWORK_FEES, agentAccount, allBalances, balanceOf, conservation, userAccount, verifyChain } from '../../runtime/ledger/ledger.ts'
import { settledReceipts } from '../../runtime/ledger/mirror.ts'
import { ReceiptKind, earningsFromReceipts } from '../../protocols/receipts.ts'
import { llamaBuildOrSkip } from '../engine/helpers.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { MODEL_NAME, pipelineContracts, recordContracts, startEconomyMesh, startSplitPipeline, tinyModel, type EconomyMesh, type SplitPipeline, type PipelineContract } from './fixture.ts'

const RANGES: Array<[number, number]> = [[0, 2], [2, 4]]
// Worker 1 asks 1 credit per layer-token, worker 2 asks 2: per token 2 and 4 credits.
const PRICES = [1_000_000, 2_000_000]
const FEE_PER_MTOK = 100_000 // 0.1 credit per token

let dir: { path: string, cleanup: () => Promise<void> }
let build: LlamaBuild | undefined
let pipeline: SplitPipeline
let mesh: EconomyMesh
let gateway: Gateway
let contracts: PipelineContract[]
let secret: string
let client: OpenAI

beforeAll(async () => {
  const outcome = await llamaBuildOrSkip()
  if ('skip' in outcome) return
  build = outcome.build
  dir = await tempDir('clawmesh-gateway-')
  const model = await tinyModel(dir.path, 7)
  pipeline = await startSplitPipeline(build, model.path, RANGES)
  mesh = await startEconomyMesh(dir.path, 3, { settleDelayMs: 0 }, { gateway: { port: 0, networkFeePerMTok: FEE_PER_MTOK, defaultMaxTokens: 16 } })
  const [head, w1, w2] = mesh.nodes
  contracts = await pipelineContracts(head, [w1, w2], model.sha256, RANGES, PRICES)
  await recordContracts(mesh.nodes, contracts)
  const service = mesh.services[0]
  gateway = await startPaidApi(head, service, { url: pipeline.server.url, modelSha256: model.sha256, modelName: MODEL_NAME })
  secret = (await createKey(head.store.db, { label: 'test', credits: 1_000_000, ratePerMin: 6000, burst: 100 })).secret
  client = new OpenAI({ apiKey: secret, baseURL: `${gateway.url}/v1`, maxRetries: 0 })
}, 600_000)

afterAll(async () => {
  await gateway?.stop()
  for (const s of mesh?.services ?? []) await s.stop()
  await stopAll(mesh?.nodes ?? [])
  await pipeline?.stop()
  await dir?.cleanup()
})

const greedy = { temperature: 0, top_k: 1, seed: 1 } as Record<string, unknown>

describe('gateway: the official openai client', () => {
  it('lists the served model', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const models = await client.models.list()
    expect(models.data.map((m) => m.id)).toEqual([MODEL_NAME])
    expect((await client.models.retrieve(MODEL_NAME)).owned_by).toBe('clawmesh')
  })

  it('answers a chat completion with text and usage', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const r = await client.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'Tell me a story' }], max_tokens: 12, ...greedy })
    expect(r.object).toBe('chat.completion')
    expect(r.model).toBe(MODEL_NAME)
    expect(r.choices[0].message.content?.length).toBeGreaterThan(0)
    expect(r.usage?.completion_tokens).toBe(12)
    expect(r.usage?.prompt_tokens).toBeGreaterThan(0)
  })

  it('streams chat chunk by chunk, the same greedy text as without streaming', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const messages = [{ role: 'user' as const, content: 'Once upon a time' }]
    const whole = await client.chat.completions.create({ model: MODEL_NAME, messages, max_tokens: 10, ...greedy })
    const stream = await client.chat.completions.create({ model: MODEL_NAME, messages, max_tokens: 10, stream: true, ...greedy })
    const deltas: string[] = []
    let sawUsage = false
    for await (const chunk of stream) {
      if (chunk.usage != null) sawUsage = true
      const d = chunk.choices[0]?.delta?.content
      if (d != null && d !== '') deltas.push(d)
      expect(chunk.model).toBe(MODEL_NAME)
    }
    expect(deltas.length).toBeGreaterThan(3)
    expect(deltas.join('')).toBe(whole.choices[0].message.content)
    // The usage chunk the gateway asked for is not shown to a client that did not ask.
    expect(sawUsage).toBe(false)

    const withUsage = await client.chat.completions.create({ model: MODEL_NAME, messages, max_tokens: 10, stream: true, stream_options: { include_usage: true }, ...greedy })
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of withUsage) if (chunk.usage != null) usage = chunk.usage
    expect(usage?.completion_tokens).toBe(10)
  })

  it('bills a client that hangs up mid-stream only for the chunks generated before it left', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const head = mesh.nodes[0]
    const { key, secret: s } = await createKey(head.store.db, { credits: 1_000_000 })
    const abort = new AbortController()
    const r = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST', signal: abort.signal,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${s}` },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'Go on forever' }], max_tokens: 1500, stream: true, ignore_eos: true })
    })
    const reader = r.body!.getReader()
    await reader.read()
    abort.abort()
    await gateway.drain()
    const usage = await head.store.db.get<{ completion_tokens: number, prompt_tokens: number }>('SELECT completion_tokens, prompt_tokens FROM usage WHERE key_id = ?', [key.id])
    expect(usage?.completion_tokens).toBeLessThan(1500)
    // Its prompt is billed all the same, counted by the pipeline's tokenizer: what a finished request reports.
    const whole = await client.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'Go on forever' }], max_tokens: 1 })
    expect(usage?.prompt_tokens).toBe(whole.usage?.prompt_tokens)
  })

  it('serves legacy completions', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const r = await client.completions.create({ model: MODEL_NAME, prompt: 'The capital of France is', max_tokens: 6, ...greedy })
    expect(r.choices[0].text.length).toBeGreaterThan(0)
    expect(r.usage?.completion_tokens).toBe(6)
    // A prompt array runs one completion per prompt on llama-server: every one is billed.
    const { key, secret: s } = await createKey(mesh.nodes[0].store.db, { credits: 1_000_000 })
    const c = new OpenAI({ apiKey: s, baseURL: `${gateway.url}/v1`, maxRetries: 0 })
    const many = await c.completions.create({ model: MODEL_NAME, prompt: ['The sea', 'Once upon a time there was', 'Hello'], max_tokens: 5, ...greedy })
    expect(many.choices.map((ch) => ch.index)).toEqual([0, 1, 2])
    expect(many.usage?.completion_tokens).toBe(15)
    await gateway.drain()
    const billed = await mesh.nodes[0].store.db.get<{ p: number, c: number }>('SELECT SUM(prompt_tokens) AS p, SUM(completion_tokens) AS c FROM usage WHERE key_id = ?', [key.id])
    expect(billed).toEqual({ p: many.usage?.prompt_tokens, c: 15 })
  })

  it('answers errors in OpenAI format: 401, 400, 404, 402 before any work, 429', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const head = mesh.nodes[0]
    const ask = (c: OpenAI, extra: Record<string, unknown> = {}): Promise<unknown> =>
      c.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, ...extra })

    const anonymous = new OpenAI({ apiKey: 'cm_not-a-key', baseURL: `${gateway.url}/v1`, maxRetries: 0 })
    const e401 = await ask(anonymous).catch((e: unknown) => e)
    expect(e401).toBeInstanceOf(OpenAI.AuthenticationError)
    expect((e401 as InstanceType<typeof OpenAI.AuthenticationError>).code).toBe('invalid_api_key')

    const revoked = await createKey(head.store.db, { credits: 1000 })
    await revokeKey(head.store.db, revoked.key.id)
    const eRevoked = await ask(new OpenAI({ apiKey: revoked.secret, baseURL: `${gateway.url}/v1`, maxRetries: 0 })).catch((e: unknown) => e)
    expect(eRevoked).toBeInstanceOf(OpenAI.AuthenticationError)

    expect(await ask(client, { max_tokens: 0 }).catch((e: unknown) => e)).toBeInstanceOf(OpenAI.BadRequestError)
    expect(await ask(client, { model: 'gpt-4' }).catch((e: unknown) => e)).toBeInstanceOf(OpenAI.NotFoundError)
    // llama-server's native n_predict would override max_tokens and outrun the reservation.
    const capped = await client.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, n_predict: 200, ignore_eos: true } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    expect(capped.usage?.completion_tokens).toBe(3)

    // 402: a key with some credit, not enough for the reservation. Nothing reaches the pipeline.
    const poor = await createKey(head.store.db, { credits: 50 })
    const poorClient = new OpenAI({ apiKey: poor.secret, baseURL: `${gateway.url}/v1`, maxRetries: 0 })
    const before = gateway.upstreamRequests
    const e402 = await ask(poorClient).catch((e: unknown) => e) as InstanceType<typeof OpenAI.APIError>
    expect(e402).toBeInstanceOf(OpenAI.APIError)
    expect(e402.status).toBe(402)
    expect(e402.code).toBe('insufficient_quota')
    expect(gateway.upstreamRequests).toBe(before)
    expect(await balanceOf(head.store.db, userAccount(poor.key.id))).toBe(50)

    // 429: burst of 2, then the per-key bucket is empty.
    const slow = await createKey(head.store.db, { credits: 100_000, ratePerMin: 6, burst: 2 })
    const slowClient = new OpenAI({ apiKey: slow.secret, baseURL: `${gateway.url}/v1`, maxRetries: 0 })
    await slowClient.models.list()
    await slowClient.models.list()
    const e429 = await slowClient.models.list().catch((e: unknown) => e) as InstanceType<typeof OpenAI.RateLimitError>
    expect(e429).toBeInstanceOf(OpenAI.RateLimitError)
    expect(Number(e429.headers?.get('retry-after'))).toBeGreaterThanOrEqual(1)
  })
})

describe('settlement through the 2-worker pipeline', () => {
  it('debits the user and credits each worker by its contract; every node agrees on the balances', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const [head, w1, w2] = mesh.nodes
    const db = head.store.db
    const settledEverything = async (): Promise<boolean> =>
      (await db.get<{ n: number }>("SELECT COUNT(*) AS n FROM usage WHERE status = 'pending'"))?.n === 0
    await gateway.drain()
    await waitFor('earlier usage to settle', settledEverything, 30_000)

    const { key, secret: s2 } = await createKey(db, { credits: 10_000 })
    const before = await allBalances(db)
    const c = new OpenAI({ apiKey: s2, baseURL: `${gateway.url}/v1`, maxRetries: 0 })
    const r = await c.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'Pay the workers' }], max_tokens: 8 })
    const tokens = r.usage!.total_tokens
    await gateway.drain()
    await waitFor('the request to settle', settledEverything, 30_000)

    const after = await allBalances(db)
    const delta = (account: string): number => (after.get(account) ?? 0) - (before.get(account) ?? 0)
    const w1Pay = Math.floor(tokens * 2 * PRICES[0] / 1e6)
    const w2Pay = Math.floor(tokens * 2 * PRICES[1] / 1e6)
    const fee = Math.floor(tokens * FEE_PER_MTOK / 1e6)
    expect(w1Pay).toBe(2 * tokens)
    expect(w2Pay).toBe(4 * tokens)
    expect(delta(agentAccount(w1.peerId.toString()))).toBe(w1Pay)
    expect(delta(agentAccount(w2.peerId.toString()))).toBe(w2Pay)
    expect(delta(NETWORK_FEES)).toBe(fee)
    expect(await balanceOf(db, userAccount(key.id))).toBe(10_000 - w1Pay - w2Pay - fee)

    // Conservation and chain integrity at the head.
    const cons = await conservation(db)
    expect(cons.held).toBe(cons.external)
    expect(cons.total).toBe(0)
    expect((await verifyChain(db)).ok).toBe(true)

    // The workers heard every settled receipt and book the same agent balances as the head.
    const headReceipts = await settledReceipts(db)
    const expected = earningsFromReceipts(headReceipts)
    for (const node of [w1, w2]) {
      await waitFor(`${node.config.name} to hear every receipt`, async () => (await settledReceipts(node.store.db)).length === headReceipts.length, 15_000)
      for (const worker of [w1, w2]) {
        const account = agentAccount(worker.peerId.toString())
        expect(await balanceOf(node.store.db, account)).toBe(after.get(account))
        expect(expected.get(worker.peerId.toString())).toBe(after.get(account))
      }
      expect(earningsFromReceipts(await settledReceipts(node.store.db))).toEqual(expected)
      expect((await verifyChain(node.store.db)).ok).toBe(true)
      const mirror = await conservation(node.store.db)
      expect(mirror.held).toBe(mirror.mirrored)
    }
  })

  it('a tampered receipt gossiped by a peer is refused by every node and books nothing', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const [head, w1, w2] = mesh.nodes
    await gateway.drain()
    const genuine = (await settledReceipts(head.store.db))[0]
    const before = await Promise.all(mesh.nodes.map(async (n) => await allBalances(n.store.db)))
    // w1 inflates the tokens of a real receipt and gossips it under its own (valid) envelope.
    await w1.bus!.publish(ReceiptKind, { ...genuine, receipt: { ...genuine.receipt, seq: 9999, tokens: genuine.receipt.tokens * 100 } })
    await waitFor('the head and w2 to refuse the forged receipt', () =>
      mesh.services[0].stats.rejectedReceipts === 1 && mesh.services[2].stats.rejectedReceipts === 1, 10_000)
    const after = await Promise.all(mesh.nodes.map(async (n) => await allBalances(n.store.db)))
    expect(after).toEqual(before)
    expect(await w2.store.db.get('SELECT id FROM receipts WHERE seq = 9999')).toBeUndefined()
  })
})

describe('renewal overlap', () => {
  it('bills only the contracts the pipeline runs on, while renewals of the same layers are already signed', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const [head, w1] = mesh.nodes
    // A renewal of w1's layers, signed but not yet carrying traffic.
    const [renewal] = await pipelineContracts(head, [w1], contracts[0].modelSha256, [RANGES[0]], [contracts[0].price], contracts[0].expiresAt + 3_600_000)
    await recordContracts([head, w1], [renewal])
    gateway.retarget(pipeline.server.url, contracts.map((c) => c.id))
    const r = await client.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4, ...greedy })
    await gateway.drain()
    const usage = await head.store.db.get<{ id: string }>('SELECT id FROM usage ORDER BY created_at DESC LIMIT 1')
    const billed = await head.store.db.all<{ contract: string }>('SELECT contract FROM receipts WHERE usage_id = ? ORDER BY contract', [usage!.id])
    expect(billed.map((b) => b.contract)).toEqual(contracts.map((c) => c.id).sort())
    expect(r.usage?.total_tokens).toBeGreaterThan(0)
    // Once the pipeline moves onto the renewal, the renewal is billed instead.
    gateway.retarget(pipeline.server.url, [renewal.id, contracts[1].id])
    await client.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4, ...greedy })
    await gateway.drain()
    const next = await head.store.db.get<{ id: string }>('SELECT id FROM usage ORDER BY created_at DESC LIMIT 1')
    const billedNext = await head.store.db.all<{ contract: string }>('SELECT contract FROM receipts WHERE usage_id = ? ORDER BY contract', [next!.id])
    expect(billedNext.map((b) => b.contract)).toEqual([renewal.id, contracts[1].id].sort())
  })
})
