/**
 * Gateway benchmark: what the paid API costs on top of calling the pipeline's llama-server directly.
 * One llama-server on the tiny test model; the gateway in front of it bills every request for real
 * (key lookup, reservation, usage + receipts recorded, workers' signatures and settlement in-process).
 * Prints
 *   - streaming, one client at a time: median time to first token and median generation tokens/s,
 *     direct and through the gateway, and their ratios;
 *   - 50 concurrent clients sending short non-streaming requests back to back: requests/s held,
 *     direct and through the gateway.
 * Usage: npx tsx sims/bench-gateway.ts [--requests 20] [--max-tokens 32] [--clients 50] [--window-s 10] [--json FILE]
 * --json FILE appends one row {direct_tok_s, gateway_tok_s, direct_ttft_ms, gateway_ttft_ms, stub_req_s}
 * to the JSON array in FILE (created when missing), so repeated runs can be compared.
 */
import '../runtime/polyfill.ts'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { ensureLlamaBuild } from '../runtime/engine/build.ts'
import { TEST_MODEL_PRESETS, generateTestModel } from '../runtime/engine/test-model.ts'
import { freePort, startLlamaServer } from '../runtime/engine/llama-procs.ts'
import { Store } from '../runtime/store/store.ts'
import { HeadBook, type RecordedUsage } from '../runtime/ledger/head-book.ts'
import { putContract } from '../runtime/ledger/contracts.ts'
import { verifyChain } from '../runtime/ledger/ledger.ts'
import { createKey } from '../runtime/gateway/keys.ts'
import { Gateway } from '../runtime/gateway/server.ts'
import { signAsWorker } from '../protocols/receipts.ts'
import { percentile } from './lib/stats.ts'

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '20' },
    'max-tokens': { type: 'string', default: '32' },
    clients: { type: 'string', default: '50' },
    'window-s': { type: 'string', default: '10' },
    json: { type: 'string' }
  }
})
const REQUESTS = Number(values.requests)
const MAX_TOKENS = Number(values['max-tokens'])
const CLIENTS = Number(values.clients)
const WINDOW_MS = Number(values['window-s']) * 1000
const MODEL_SHA = '00'.repeat(32)

const dir = await mkdtemp(join(tmpdir(), 'clawmesh-bench-gw-'))
const build = await ensureLlamaBuild({ onProgress: (l) => process.stderr.write(l + '\n') })
const modelPath = join(dir, 'tiny.gguf')
await generateTestModel({ path: modelPath, seed: 3, ...TEST_MODEL_PRESETS.tiny })
const server = await startLlamaServer({ bin: build.llamaServer, model: modelPath, port: await freePort(), ctxSize: 4096 })

const store = await Store.open(join(dir, 'head.sqlite'))
const headKey = await generateKeyPair('Ed25519')
const workers = [await generateKeyPair('Ed25519'), await generateKeyPair('Ed25519')]
const head = peerIdFromPrivateKey(headKey).toString()
for (const [i, w] of workers.entries()) {
  await putContract(store.db, { id: `c${i}`, modelSha256: MODEL_SHA, head, worker: peerIdFromPrivateKey(w).toString(), layerStart: i * 2, layerEnd: i * 2 + 2, price: 1_000_000, expiresAt: Date.now() + 3_600_000, status: 'active' })
}
const book = new HeadBook(store.db, headKey)
const gateway = new Gateway({
  db: store.db, head, book, upstream: server.url, modelSha256: MODEL_SHA, modelName: 'tiny', networkFeePerMTok: 100_000,
  onRecorded: async (rec) => { await settleInProcess(rec) }
})

/** The workers' side, in-process: sign every receipt, then settle the usage, as the mesh would. */
async function settleInProcess (rec: RecordedUsage): Promise<void> {
  for (const p of rec.proposals) await book.acceptWorkerSignature(await signAsWorker(workers[Number(p.contract.slice(1))], p))
  await book.settleUsage(rec.usageId)
}
await gateway.start()
const { secret } = await createKey(store.db, { credits: 1_000_000_000, ratePerMin: 1_000_000, burst: 10_000 })

// An upstream that answers at once: what the gateway itself can hold, billing included.
const stub = createServer((req, res) => {
  req.resume()
  req.on('end', () => {
    const body = JSON.stringify({ id: 'x', object: 'chat.completion', created: 0, model: 'stub', choices: [{ index: 0, finish_reason: 'length', message: { role: 'assistant', content: 'ok ok ok ok' } }], usage: { prompt_tokens: 12, completion_tokens: 4, total_tokens: 16 } })
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
    res.end(body)
  })
})
await new Promise<void>((resolve) => stub.listen(0, '127.0.0.1', resolve))
const stubUrl = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`
const stubGateway = new Gateway({ db: store.db, head, book, upstream: stubUrl, modelSha256: MODEL_SHA, modelName: 'tiny', networkFeePerMTok: 100_000, onRecorded: async (rec) => { await settleInProcess(rec) } })
await stubGateway.start()

const prompt = [{ role: 'user', content: 'Write a long story about a lighthouse keeper.' }]

interface StreamRun { ttftMs: number, tokensPerS: number }

async function streamOnce (base: string, auth: boolean): Promise<StreamRun> {
  const t0 = performance.now()
  const r = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(auth ? { authorization: `Bearer ${secret}` } : {}) },
    body: JSON.stringify({ messages: prompt, max_tokens: MAX_TOKENS, stream: true, temperature: 0, cache_prompt: false, ignore_eos: true })
  })
  if (!r.ok || r.body === null) throw new Error(`HTTP ${r.status}: ${await r.text()}`)
  let first = 0
  let last = 0
  let tokens = 0
  const decoder = new TextDecoder()
  for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) {
    const n = (decoder.decode(chunk, { stream: true }).match(/"content":"/g) ?? []).length
    if (n > 0) {
      const now = performance.now()
      if (first === 0) first = now
      last = now
      tokens += n
    }
  }
  return { ttftMs: first - t0, tokensPerS: (tokens - 1) / ((last - first) / 1000) }
}

interface BenchRow { direct_tok_s: number, gateway_tok_s: number, direct_ttft_ms: number, gateway_ttft_ms: number, stub_req_s: number }

const round = (x: number, d: number): number => Math.round(x * 10 ** d) / 10 ** d

/** FILE holds a JSON array of rows; a missing file starts one, anything else there is an error, not overwritten. */
async function appendRow (file: string, row: BenchRow): Promise<void> {
  let rows: unknown = []
  try {
    rows = JSON.parse(await readFile(file, 'utf8'))
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`--json ${file}: not a JSON array of rows (${(err as Error).message}); not overwriting it`)
  }
  if (!Array.isArray(rows)) throw new Error(`--json ${file}: holds ${typeof rows}, not a JSON array of rows; not overwriting it`)
  await writeFile(file, JSON.stringify([...rows, row], null, 2) + '\n')
}

const median = (xs: number[]): number => percentile([...xs].sort((a, b) => a - b), 50)

/**
 * Direct and gateway requests alternate, one at a time, so both see the same machine: on a shared
 * 2-core box the load from other processes drifts faster than a run of 20 requests.
 */
async function streaming (): Promise<{ direct: StreamRun, via: StreamRun }> {
  await streamOnce(server.url, false) // warm-up
  await streamOnce(gateway.url, true)
  const direct: StreamRun[] = []
  const via: StreamRun[] = []
  for (let i = 0; i < REQUESTS; i++) {
    direct.push(await streamOnce(server.url, false))
    via.push(await streamOnce(gateway.url, true))
    // One client at a time: the previous request's accounting finishes before the next starts.
    await gateway.drain()
  }
  const summary = (runs: StreamRun[]): StreamRun => ({ ttftMs: median(runs.map((r) => r.ttftMs)), tokensPerS: median(runs.map((r) => r.tokensPerS)) })
  return { direct: summary(direct), via: summary(via) }
}

async function concurrent (base: string, auth: boolean, windowMs: number): Promise<{ done: number, errors: number, seconds: number }> {
  const deadline = Date.now() + windowMs
  let done = 0
  let errors = 0
  const t0 = performance.now()
  await Promise.all(Array.from({ length: CLIENTS }, async () => {
    while (Date.now() < deadline) {
      const r = await fetch(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(auth ? { authorization: `Bearer ${secret}` } : {}) },
        body: JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4 })
      })
      await r.arrayBuffer()
      if (r.ok) done++
      else errors++
    }
  }))
  return { done, errors, seconds: (performance.now() - t0) / 1000 }
}

/** Alternating windows again, for the same reason as streaming(). */
async function load (targets: Array<{ url: string, auth: boolean }>, rounds = 2): Promise<Array<{ rps: number, errors: number }>> {
  const totals = targets.map(() => ({ done: 0, errors: 0, seconds: 0 }))
  for (let round = 0; round < rounds; round++) {
    for (const [i, t] of targets.entries()) {
      const r = await concurrent(t.url, t.auth, WINDOW_MS / rounds)
      totals[i].done += r.done; totals[i].errors += r.errors; totals[i].seconds += r.seconds
    }
  }
  return totals.map((t) => ({ rps: t.done / t.seconds, errors: t.errors }))
}

try {
  const { direct, via } = await streaming()
  const [directLoad, viaLoad, stubLoad] = await load([{ url: server.url, auth: false }, { url: gateway.url, auth: true }, { url: stubGateway.url, auth: true }])
  await gateway.drain()
  await stubGateway.drain()
  const settled = await store.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM usage WHERE status = 'settled'")
  const chain = await verifyChain(store.db)

  const f = (n: number, d = 1): string => n.toFixed(d)
  console.log(`gateway vs direct llama-server — tiny model (${TEST_MODEL_PRESETS.tiny.nLayer} layers), ${REQUESTS} streamed requests of ${MAX_TOKENS} tokens, one at a time`)
  console.log(`  time to first token  direct ${f(direct.ttftMs)} ms   gateway ${f(via.ttftMs)} ms   ratio ${f(via.ttftMs / direct.ttftMs, 2)}x (+${f(via.ttftMs - direct.ttftMs)} ms)`)
  console.log(`  tokens/s             direct ${f(direct.tokensPerS, 0)}   gateway ${f(via.tokensPerS, 0)}   ratio ${f(via.tokensPerS / direct.tokensPerS, 3)}`)
  console.log(`${CLIENTS} concurrent clients, non-streaming, max_tokens 4, ${WINDOW_MS / 1000} s each`)
  console.log(`  requests/s           direct ${f(directLoad.rps)}   gateway ${f(viaLoad.rps)}   ratio ${f(viaLoad.rps / directLoad.rps, 3)}   errors ${directLoad.errors}/${viaLoad.errors}`)
  console.log(`  gateway's own ceiling (instant stub upstream, full billing): ${f(stubLoad.rps)} requests/s, errors ${stubLoad.errors}`)
  console.log(`  billed and settled ${settled?.n ?? 0} requests; ledger ${chain.entries} entries, chain ${chain.ok ? 'intact' : 'BROKEN'}`)
  if (values.json !== undefined) {
    const row: BenchRow = {
      direct_tok_s: round(direct.tokensPerS, 1),
      gateway_tok_s: round(via.tokensPerS, 1),
      direct_ttft_ms: round(direct.ttftMs, 1),
      gateway_ttft_ms: round(via.ttftMs, 1),
      stub_req_s: round(stubLoad.rps, 1)
    }
    await appendRow(values.json, row)
    console.log(`  row appended to ${values.json}`)
  }
} finally {
  await gateway.stop()
  await stubGateway.stop()
  stub.close()
  await store.close()
  await server.stop()
  await rm(dir, { recursive: true, force: true })
}
