/**
 * Gateway benchmark: what the paid API costs on top of calling its upstream directly, measured side by
 * side in one run (direct and gateway requests alternate, so both see the same machine: on a shared
 * 2-core box the load from other processes drifts faster than one run).
 *   - llama-server on the tiny test model, streamed one request at a time: median time to first token
 *     and median generation tokens/s, direct and through the gateway, their ratio and the added TTFT;
 *     then 50 concurrent clients sending short non-streaming requests: requests/s each way.
 *   - an instant upstream that speaks OpenAI's JSON and SSE formats (sims/lib/instant-upstream.ts):
 *     the added TTFT with nothing upstream to hide it, and requests/s for 50 concurrent clients,
 *     non-streaming and streaming: the gateway's own ceiling, billing included. The concurrent
 *     clients run in a process of their own (sims/lib/load-client.ts), off the gateway's event loop.
 * The gateway bills every request for real (key lookup, reservation, usage and receipts recorded);
 * the workers' side (signing each receipt, settling) runs in-process as the receipt service would:
 * `--settle each` settles every request as it is recorded, `--settle tick` signs on arrival and
 * settles every 250 ms in one pass (the receipt service's tick), `--settle none` never signs (the
 * gateway's own work only; usage stays pending).
 * Usage: npx tsx sims/bench-gateway.ts [--requests 20] [--max-tokens 32] [--clients 50] [--window-s 10]
 *          [--stub-requests 200] [--stub-only] [--settle each|tick|none] [--json FILE]
 * --json FILE appends one row (see BenchRow) to the JSON array in FILE (created when missing), so
 * repeated runs can be compared; --stub-only skips llama-server (its fields are null).
 */
import '../runtime/polyfill.ts'
import { execFileSync } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
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
import { startInstantUpstream } from './lib/instant-upstream.ts'
import { runLoad } from './lib/load-client.ts'

const { values } = parseArgs({
  options: {
    requests: { type: 'string', default: '20' },
    'max-tokens': { type: 'string', default: '32' },
    clients: { type: 'string', default: '50' },
    'window-s': { type: 'string', default: '10' },
    'stub-requests': { type: 'string', default: '200' },
    'stub-only': { type: 'boolean', default: false },
    settle: { type: 'string', default: 'tick' },
    json: { type: 'string' }
  }
})
const REQUESTS = Number(values.requests)
const MAX_TOKENS = Number(values['max-tokens'])
const CLIENTS = Number(values.clients)
const WINDOW_MS = Number(values['window-s']) * 1000
const STUB_REQUESTS = Number(values['stub-requests'])
const STUB_ONLY = values['stub-only'] === true
const SETTLE = values.settle
if (!['each', 'tick', 'none'].includes(SETTLE)) throw new Error(`--settle must be each, tick or none, got ${SETTLE}`)
const MODEL_SHA = '00'.repeat(32)

const dir = await mkdtemp(join(tmpdir(), 'clawmesh-bench-gw-'))
const llama = STUB_ONLY ? undefined : await startLlama()

async function startLlama (): Promise<{ url: string, stop: () => Promise<void> }> {
  const build = await ensureLlamaBuild({ onProgress: (l) => process.stderr.write(l + '\n') })
  const modelPath = join(dir, 'tiny.gguf')
  await generateTestModel({ path: modelPath, seed: 3, ...TEST_MODEL_PRESETS.tiny })
  return await startLlamaServer({ bin: build.llamaServer, model: modelPath, port: await freePort(), ctxSize: 4096 })
}

const store = await Store.open(join(dir, 'head.sqlite'))
const headKey = await generateKeyPair('Ed25519')
const workers = [await generateKeyPair('Ed25519'), await generateKeyPair('Ed25519')]
const head = peerIdFromPrivateKey(headKey).toString()
for (const [i, w] of workers.entries()) {
  await putContract(store.db, { id: `c${i}`, modelSha256: MODEL_SHA, head, worker: peerIdFromPrivateKey(w).toString(), layerStart: i * 2, layerEnd: i * 2 + 2, price: 1_000_000, expiresAt: Date.now() + 3_600_000, status: 'active' })
}
const book = new HeadBook(store.db, headKey)

/**
 * The workers' side, in-process: sign every receipt (and, with --settle each, settle the usage at once);
 * with --settle none nobody signs, which leaves the gateway alone on the CPU.
 */
async function onRecorded (rec: RecordedUsage): Promise<void> {
  if (SETTLE === 'none') return
  for (const p of rec.proposals) await book.acceptWorkerSignature(await signAsWorker(workers[Number(p.contract.slice(1))], p))
  if (SETTLE === 'each') await book.settleUsage(rec.usageId)
}
let settling = Promise.resolve()
const settleTimer = SETTLE === 'tick'
  ? setInterval(() => { settling = settling.then(async () => { await book.settleReady() }).catch((err: unknown) => { console.error('settlement failed', err) }) }, 250)
  : undefined

async function startGateway (upstream: string): Promise<Gateway> {
  const g = new Gateway({ db: store.db, head, book, upstream, modelSha256: MODEL_SHA, modelName: 'tiny', networkFeePerMTok: 100_000, onRecorded })
  await g.start()
  return g
}
const gateway = llama === undefined ? undefined : await startGateway(llama.url)
const instant = await startInstantUpstream({ tokens: 16 })
const stubGateway = await startGateway(instant.url)
const { secret } = await createKey(store.db, { credits: 1_000_000_000_000, ratePerMin: 100_000_000, burst: 1_000_000 })

const prompt = [{ role: 'user', content: 'Write a long story about a lighthouse keeper.' }]

interface StreamRun { ttftMs: number, tokensPerS: number }

async function streamOnce (base: string, auth: boolean, maxTokens: number): Promise<StreamRun> {
  const t0 = performance.now()
  const r = await fetch(`${base}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(auth ? { authorization: `Bearer ${secret}` } : {}) },
    body: JSON.stringify({ messages: prompt, max_tokens: maxTokens, stream: true, temperature: 0, cache_prompt: false, ignore_eos: true })
  })
  if (!r.ok || r.body === null) throw new Error(`${base}: HTTP ${r.status}: ${await r.text()}`)
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

/** Every numeric field is rounded; llama-server's fields are null with --stub-only. */
interface BenchRow {
  at: string
  commit: string
  settle: string
  direct_tok_s: number | null
  gateway_tok_s: number | null
  tok_s_ratio: number | null
  direct_ttft_ms: number | null
  gateway_ttft_ms: number | null
  added_ttft_ms: number | null
  direct_req_s: number | null
  gateway_req_s: number | null
  stub_direct_ttft_ms: number
  stub_gateway_ttft_ms: number
  stub_added_ttft_ms: number
  stub_direct_req_s: number
  /** Through the gateway, non-streaming (the field earlier rows have). */
  stub_req_s: number
  stub_stream_direct_req_s: number
  stub_stream_req_s: number
  errors: number
}

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

/** One request at a time, direct and gateway alternating; medians of each side. */
async function streaming (direct: string, via: Gateway, requests: number, maxTokens: number): Promise<{ direct: StreamRun, via: StreamRun }> {
  await streamOnce(direct, false, maxTokens) // warm-up
  await streamOnce(via.url, true, maxTokens)
  const d: StreamRun[] = []
  const v: StreamRun[] = []
  for (let i = 0; i < requests; i++) {
    d.push(await streamOnce(direct, false, maxTokens))
    v.push(await streamOnce(via.url, true, maxTokens))
    // One client at a time: the previous request's accounting finishes before the next starts.
    await via.drain()
  }
  const summary = (runs: StreamRun[]): StreamRun => ({ ttftMs: median(runs.map((r) => r.ttftMs)), tokensPerS: median(runs.map((r) => r.tokensPerS)) })
  return { direct: summary(d), via: summary(v) }
}

interface Target { url: string, auth: boolean, stream: boolean }

/** Alternating windows, for the same reason as streaming(). */
async function load (targets: Target[], rounds = 2): Promise<Array<{ rps: number, errors: number }>> {
  const totals = targets.map(() => ({ done: 0, errors: 0, seconds: 0 }))
  for (let round = 0; round < rounds; round++) {
    for (const [i, t] of targets.entries()) {
      const r = await runLoad({ url: t.url, secret: t.auth ? secret : undefined, stream: t.stream, clients: CLIENTS, windowMs: WINDOW_MS / rounds, maxTokens: 4 })
      totals[i].done += r.done; totals[i].errors += r.errors; totals[i].seconds += r.seconds
    }
  }
  return totals.map((t) => ({ rps: t.done / t.seconds, errors: t.errors }))
}

function gitCommit (): string {
  try {
    return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim()
  } catch {
    return 'unknown'
  }
}

try {
  const f = (n: number, d = 1): string => n.toFixed(d)
  let llamaStream: { direct: StreamRun, via: StreamRun } | undefined
  let llamaLoad: Array<{ rps: number, errors: number }> | undefined
  if (llama !== undefined && gateway !== undefined) {
    llamaStream = await streaming(llama.url, gateway, REQUESTS, MAX_TOKENS)
    llamaLoad = await load([{ url: llama.url, auth: false, stream: false }, { url: gateway.url, auth: true, stream: false }])
    const { direct, via } = llamaStream
    const [d, v] = llamaLoad
    console.log(`gateway vs direct llama-server — tiny model (${TEST_MODEL_PRESETS.tiny.nLayer} layers), ${REQUESTS} streamed requests of ${MAX_TOKENS} tokens, one at a time`)
    console.log(`  time to first token  direct ${f(direct.ttftMs)} ms   gateway ${f(via.ttftMs)} ms   ratio ${f(via.ttftMs / direct.ttftMs, 2)}x (+${f(via.ttftMs - direct.ttftMs, 2)} ms)`)
    console.log(`  tokens/s             direct ${f(direct.tokensPerS, 0)}   gateway ${f(via.tokensPerS, 0)}   ratio ${f(via.tokensPerS / direct.tokensPerS, 3)}`)
    console.log(`  ${CLIENTS} clients, non-streaming, max_tokens 4: requests/s direct ${f(d.rps)}   gateway ${f(v.rps)}   ratio ${f(v.rps / d.rps, 3)}   errors ${d.errors}/${v.errors}`)
  }

  const stubStream = await streaming(instant.url, stubGateway, STUB_REQUESTS, 16)
  const [sd, sv, ssd, ssv] = await load([
    { url: instant.url, auth: false, stream: false }, { url: stubGateway.url, auth: true, stream: false },
    { url: instant.url, auth: false, stream: true }, { url: stubGateway.url, auth: true, stream: true }
  ])
  await gateway?.drain()
  await stubGateway.drain()
  clearInterval(settleTimer)
  await settling
  await book.settleReady()
  const settled = await store.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM usage WHERE status = 'settled'")
  const billed = await store.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM usage')
  const chain = await verifyChain(store.db)

  console.log(`gateway vs direct — instant upstream (OpenAI JSON and SSE, 16 tokens), full billing, settle ${SETTLE}`)
  console.log(`  time to first token, ${STUB_REQUESTS} streamed one at a time: direct ${f(stubStream.direct.ttftMs, 2)} ms   gateway ${f(stubStream.via.ttftMs, 2)} ms   (+${f(stubStream.via.ttftMs - stubStream.direct.ttftMs, 2)} ms)`)
  console.log(`  ${CLIENTS} clients, non-streaming: requests/s direct ${f(sd.rps)}   gateway ${f(sv.rps)}   ratio ${f(sv.rps / sd.rps, 3)}   errors ${sd.errors}/${sv.errors}`)
  console.log(`  ${CLIENTS} clients, streaming:     requests/s direct ${f(ssd.rps)}   gateway ${f(ssv.rps)}   ratio ${f(ssv.rps / ssd.rps, 3)}   errors ${ssd.errors}/${ssv.errors}`)
  console.log(`  billed ${billed?.n ?? 0} requests, settled ${settled?.n ?? 0}; ledger ${chain.entries} entries, chain ${chain.ok ? 'intact' : 'BROKEN'}`)
  if (values.json !== undefined) {
    const opt = (x: number | undefined, d: number): number | null => x === undefined ? null : round(x, d)
    const ls = llamaStream
    const row: BenchRow = {
      at: new Date().toISOString(),
      commit: gitCommit(),
      settle: SETTLE,
      direct_tok_s: opt(ls?.direct.tokensPerS, 1),
      gateway_tok_s: opt(ls?.via.tokensPerS, 1),
      tok_s_ratio: opt(ls === undefined ? undefined : ls.via.tokensPerS / ls.direct.tokensPerS, 3),
      direct_ttft_ms: opt(ls?.direct.ttftMs, 2),
      gateway_ttft_ms: opt(ls?.via.ttftMs, 2),
      added_ttft_ms: opt(ls === undefined ? undefined : ls.via.ttftMs - ls.direct.ttftMs, 2),
      direct_req_s: opt(llamaLoad?.[0].rps, 1),
      gateway_req_s: opt(llamaLoad?.[1].rps, 1),
      stub_direct_ttft_ms: round(stubStream.direct.ttftMs, 2),
      stub_gateway_ttft_ms: round(stubStream.via.ttftMs, 2),
      stub_added_ttft_ms: round(stubStream.via.ttftMs - stubStream.direct.ttftMs, 2),
      stub_direct_req_s: round(sd.rps, 1),
      stub_req_s: round(sv.rps, 1),
      stub_stream_direct_req_s: round(ssd.rps, 1),
      stub_stream_req_s: round(ssv.rps, 1),
      errors: [sd, sv, ssd, ssv, ...(llamaLoad ?? [])].reduce((n, r) => n + r.errors, 0)
    }
    await appendRow(values.json, row)
    console.log(`  row appended to ${values.json}`)
  }
} finally {
  clearInterval(settleTimer)
  await gateway?.stop()
  await stubGateway.stop()
  await instant.close()
  await settling
  await store.close()
  await llama?.stop()
  await rm(dir, { recursive: true, force: true })
}
