// What the paid API bills, against a stub pipeline that answers like llama-server (no llama.cpp
// needed): prompt arrays, clients that hang up mid-stream, inputs that cost prompt tokens (tools),
// and one key spending through several gateways of the same head at once.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { Store } from '../../runtime/store/store.ts'
import { HeadBook } from '../../runtime/ledger/head-book.ts'
import { putContract } from '../../runtime/ledger/contracts.ts'
import { createKey } from '../../runtime/gateway/keys.ts'
import { Gateway, type GatewayOptions } from '../../runtime/gateway/server.ts'
import { chargeFor, estimatePromptTokens } from '../../runtime/gateway/pricing.ts'
import { tempDir, waitFor } from '../helpers/mesh.ts'

const SHA_A = 'aa'.repeat(32)
const SHA_B = 'bb'.repeat(32)
const PRICE = 1_000_000 // 1 credit per layer-token; 2 layers: 2 credits per token

/** The stub's tokenizer: one token per whitespace-separated word, plus BOS. */
const words = (s: string): number => s.split(/\s+/).filter((w) => w !== '').length
const tokenCount = (s: string): number => words(s) + 1

/** What llama-server's chat template would produce: the messages and the tools, as text. */
function templated (body: Record<string, unknown>): string {
  const msgs = (body.messages as Array<{ content: string }>).map((m) => `<turn> ${m.content}`).join(' ')
  const tools = body.tools === undefined ? '' : ` <tools> ${JSON.stringify(body.tools).replace(/[{}[\]",:]/g, ' ')}`
  return `${msgs}${tools} <assistant>`
}

interface Stub { url: string, server: Server, delayMs: number, requests: number }

async function readBody (req: IncomingMessage): Promise<Record<string, unknown>> {
  const parts: Buffer[] = []
  for await (const c of req as AsyncIterable<Buffer>) parts.push(c)
  return JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>
}

/**
 * Answers like llama-server does: a prompt array runs one completion per element, but the merged
 * answer carries only the first element's usage; a stream carries usage only in its last event.
 */
async function startStub (): Promise<Stub> {
  const stub: Stub = { url: '', server: undefined as unknown as Server, delayMs: 0, requests: 0 }
  const json = (res: ServerResponse, v: unknown): void => { res.writeHead(200, { 'content-type': 'application/json' }); res.end(JSON.stringify(v)) }
  stub.server = createServer((req, res) => {
    void (async () => {
      const body = await readBody(req)
      if (req.url === '/tokenize') { json(res, { tokens: Array.from({ length: tokenCount(body.content as string) }, (_, i) => i) }); return }
      if (req.url === '/apply-template') { json(res, { prompt: templated(body) }); return }
      stub.requests++
      await new Promise((resolve) => setTimeout(resolve, stub.delayMs))
      const n = body.max_tokens as number
      if (req.url === '/v1/completions') {
        const prompts = Array.isArray(body.prompt) && typeof body.prompt[0] === 'string' ? body.prompt as string[] : [body.prompt as string]
        json(res, {
          object: 'text_completion',
          model: 'stub.gguf',
          choices: prompts.map((_, index) => ({ index, text: ' word'.repeat(n), finish_reason: 'length' })),
          usage: { prompt_tokens: tokenCount(prompts[0]), completion_tokens: n, total_tokens: tokenCount(prompts[0]) + n }
        })
        return
      }
      const prompt = tokenCount(templated(body))
      if (body.stream !== true) {
        json(res, { object: 'chat.completion', model: 'stub.gguf', choices: [{ index: 0, message: { role: 'assistant', content: ' word'.repeat(n) }, finish_reason: 'length' }], usage: { prompt_tokens: prompt, completion_tokens: n, total_tokens: prompt + n } })
        return
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' })
      for (let i = 0; i < n && !res.destroyed; i++) {
        res.write(`data: ${JSON.stringify({ object: 'chat.completion.chunk', model: 'stub.gguf', choices: [{ index: 0, delta: { content: ' word' } }] })}\n\n`)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      if (res.destroyed) return
      res.write(`data: ${JSON.stringify({ object: 'chat.completion.chunk', model: 'stub.gguf', choices: [], usage: { prompt_tokens: prompt, completion_tokens: n, total_tokens: prompt + n } })}\n\n`)
      res.end('data: [DONE]\n\n')
    })().catch((err: unknown) => { res.destroy(err as Error) })
  })
  await new Promise<void>((resolve) => stub.server.listen(0, '127.0.0.1', resolve))
  stub.url = `http://127.0.0.1:${(stub.server.address() as AddressInfo).port}`
  return stub
}

let dir: { path: string, cleanup: () => Promise<void> }
let store: Store
let stub: Stub
let base: Omit<GatewayOptions, 'modelSha256' | 'modelName'>
const gateways: Gateway[] = []

beforeAll(async () => {
  dir = await tempDir('clawmesh-gw-billing-')
  store = await Store.open(`${dir.path}/head.sqlite`)
  const headKey = await generateKeyPair('Ed25519')
  const head = peerIdFromPrivateKey(headKey).toString()
  const worker = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
  for (const sha of [SHA_A, SHA_B]) {
    await putContract(store.db, { id: `c-${sha.slice(0, 2)}`, modelSha256: sha, head, worker, layerStart: 0, layerEnd: 2, price: PRICE, expiresAt: Date.now() + 3_600_000, status: 'active' })
  }
  stub = await startStub()
  base = { db: store.db, head, book: new HeadBook(store.db, headKey), upstream: stub.url, maxTokensCap: 4096 }
})

afterAll(async () => {
  for (const g of gateways) await g.stop()
  stub?.server.close()
  await store?.close()
  await dir?.cleanup()
})

async function gateway (extra: Partial<GatewayOptions> = {}): Promise<Gateway> {
  const g = new Gateway({ ...base, modelSha256: SHA_A, modelName: 'model-a', ...extra })
  await g.start()
  gateways.push(g)
  return g
}

const post = async (url: string, secret: string, body: Record<string, unknown>, signal?: AbortSignal): Promise<Response> =>
  await fetch(url, { method: 'POST', signal, headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` }, body: JSON.stringify(body) })

async function usageOf (keyId: string): Promise<{ prompt: number, completion: number }> {
  const row = await store.db.get<{ p: number, c: number }>('SELECT COALESCE(SUM(prompt_tokens), 0) AS p, COALESCE(SUM(completion_tokens), 0) AS c FROM usage WHERE key_id = ?', [keyId])
  return { prompt: row?.p ?? 0, completion: row?.c ?? 0 }
}

describe('gateway billing', () => {
  it('bills every completion of a prompt array, and refuses arrays over the cap', async () => {
    const g = await gateway()
    const { key, secret } = await createKey(store.db, { credits: 1_000_000, ratePerMin: 6000, burst: 100 })
    const prompts = ['one two three', 'four five', 'six', 'seven eight nine ten']
    const r = await post(`${g.url}/v1/completions`, secret, { prompt: prompts, max_tokens: 8 })
    expect(r.status).toBe(200)
    const body = await r.json() as { choices: Array<{ index: number }>, usage: { prompt_tokens: number, completion_tokens: number } }
    expect(body.choices.map((c) => c.index)).toEqual([0, 1, 2, 3])
    await g.drain()
    const expectedPrompt = prompts.reduce((s, p) => s + tokenCount(p), 0)
    expect(await usageOf(key.id)).toEqual({ prompt: expectedPrompt, completion: 4 * 8 })
    expect(body.usage).toMatchObject({ prompt_tokens: expectedPrompt, completion_tokens: 32 })

    const before = stub.requests
    const tooMany = await post(`${g.url}/v1/completions`, secret, { prompt: Array.from({ length: 17 }, () => 'hi'), max_tokens: 8 })
    expect(tooMany.status).toBe(400)
    expect(((await tooMany.json()) as { error: { message: string } }).error.message).toMatch(/at most 16 prompts/)
    const streamed = await post(`${g.url}/v1/completions`, secret, { prompt: ['a', 'b'], max_tokens: 8, stream: true })
    expect(streamed.status).toBe(400)
    expect(stub.requests).toBe(before)
  })

  it('reserves for every prompt of an array up front (402 before any work)', async () => {
    const g = await gateway()
    const prompts = Array.from({ length: 16 }, () => 'x')
    const one = chargeFor(estimatePromptTokens({ prompt: 'x' }) + 100, [{ id: 'c', modelSha256: SHA_A, head: '', worker: '', layerStart: 0, layerEnd: 2, price: PRICE, expiresAt: 0, status: 'active' }], 0).total
    // Enough for a few prompts, not for sixteen.
    const { secret } = await createKey(store.db, { credits: one * 4, ratePerMin: 6000, burst: 100 })
    const before = stub.requests
    const r = await post(`${g.url}/v1/completions`, secret, { prompt: prompts, max_tokens: 100 })
    expect(r.status).toBe(402)
    expect(stub.requests).toBe(before)
  })

  it('bills a client that hangs up mid-stream for its whole prompt, counted by the gateway', async () => {
    const g = await gateway()
    const { key, secret } = await createKey(store.db, { credits: 1_000_000, ratePerMin: 6000, burst: 100 })
    const content = Array.from({ length: 680 }, (_, i) => `w${i}`).join(' ')
    const abort = new AbortController()
    const r = await post(`${g.url}/v1/chat/completions`, secret, { messages: [{ role: 'user', content }], max_tokens: 500, stream: true }, abort.signal)
    const reader = r.body!.getReader()
    let events = 0
    while (events < 4) {
      const { value } = await reader.read()
      events += (new TextDecoder().decode(value).match(/^data: /gm) ?? []).length
    }
    abort.abort()
    await waitFor('the aborted request to be billed', async () => (await usageOf(key.id)).prompt > 0 || (await store.db.get('SELECT 1 FROM usage WHERE key_id = ?', [key.id])) !== undefined, 10_000)
    await g.drain()
    const billed = await usageOf(key.id)
    expect(billed.prompt).toBe(tokenCount(templated({ messages: [{ role: 'user', content }] })))
    expect(billed.completion).toBeGreaterThanOrEqual(3)
    expect(billed.completion).toBeLessThan(500)
  })

  it('counts tools in the estimate that caps the bill', async () => {
    const g = await gateway()
    const { key, secret } = await createKey(store.db, { credits: 10_000_000, ratePerMin: 6000, burst: 100 })
    const tools = Array.from({ length: 40 }, (_, i) => ({
      type: 'function',
      function: { name: `tool_${i}`, description: `does thing number ${i} with great care and many words of documentation`, parameters: { type: 'object', properties: { a: { type: 'string' }, b: { type: 'number' } } } }
    }))
    const body = { messages: [{ role: 'user', content: 'hi' }], tools, max_tokens: 4 }
    const r = await post(`${g.url}/v1/chat/completions`, secret, body)
    expect(r.status).toBe(200)
    const served = (await r.json() as { usage: { prompt_tokens: number } }).usage.prompt_tokens
    await g.drain()
    expect(served).toBe(tokenCount(templated(body)))
    expect((await usageOf(key.id)).prompt).toBe(served)
  })

  it('holds of one key are shared by every gateway of the node: no spending the same credit twice', async () => {
    stub.delayMs = 300
    try {
      const a = await gateway()
      const b = await gateway({ modelSha256: SHA_B, modelName: 'model-b' })
      const reserve = chargeFor(estimatePromptTokens({ messages: [{ role: 'user', content: 'hi' }] }) + 10, [{ id: 'c', modelSha256: SHA_A, head: '', worker: '', layerStart: 0, layerEnd: 2, price: PRICE, expiresAt: 0, status: 'active' }], 0).total
      // Funded for 3 requests' reservations, not 4.
      const { secret } = await createKey(store.db, { credits: reserve * 3 + 1, ratePerMin: 6000, burst: 100 })
      const ask = async (g: Gateway, model: string): Promise<number> =>
        (await post(`${g.url}/v1/chat/completions`, secret, { model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 })).status
      const statuses = await Promise.all([a, a, a, b, b, b].map(async (g) => await ask(g, g === a ? 'model-a' : 'model-b')))
      expect(statuses.filter((s) => s === 200)).toHaveLength(3)
      expect(statuses.filter((s) => s === 402)).toHaveLength(3)
    } finally {
      stub.delayMs = 0
    }
  })

  it('one gateway sells several models on one port, keyed by model, with one reservation per key', async () => {
    const g = await gateway()
    g.serve({ modelName: 'model-b', modelSha256: SHA_B, upstream: stub.url })
    const { key, secret } = await createKey(store.db, { credits: 1_000_000, ratePerMin: 6000, burst: 100 })
    const listed = await (await fetch(`${g.url}/v1/models`, { headers: { authorization: `Bearer ${secret}` } })).json() as { data: Array<{ id: string }> }
    expect(listed.data.map((m) => m.id).sort()).toEqual(['model-a', 'model-b'])
    const r = await post(`${g.url}/v1/chat/completions`, secret, { model: 'model-b', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 })
    expect(r.status).toBe(200)
    expect((await r.json() as { model: string }).model).toBe('model-b')
    await g.drain()
    const billed = await store.db.get<{ model_sha256: string }>('SELECT model_sha256 FROM usage WHERE key_id = ?', [key.id])
    expect(billed?.model_sha256).toBe(SHA_B)
    // With two models the client must say which.
    const ambiguous = await post(`${g.url}/v1/chat/completions`, secret, { messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 })
    expect(ambiguous.status).toBe(400)
    expect((await post(`${g.url}/v1/chat/completions`, secret, { model: 'model-c', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 })).status).toBe(404)
    g.retarget(undefined, undefined, 'model-b')
    expect((await post(`${g.url}/v1/chat/completions`, secret, { model: 'model-b', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 })).status).toBe(503)
  })
})
