import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { SqliteDb } from '../store/sqlite.ts'
import type { Logger } from '../log.ts'
import { billableContracts, type ContractRow } from '../ledger/contracts.ts'
import type { HeadBook, RecordedUsage } from '../ledger/head-book.ts'
import type { ApiKey } from './keys.ts'
import { KeyCache } from './key-cache.ts'
import { RateLimiter } from './rate-limit.ts'
import { ApiError, badRequest, invalidKey, modelNotFound, notFound, rateLimited, sendError, unavailable, upstreamFailed } from './errors.ts'
import { MAX_PROMPTS, chargeFor, estimatePromptTokens, promptsOf } from './pricing.ts'
import { holdBookFor, type HoldBook } from './holds.ts'
import { SseSplitter, StreamRewriter } from './sse.ts'
import type { SpotChecker, SpotOutcome } from './spot-check.ts'

export interface GatewayOptions {
  db: SqliteDb
  /** The head's peer id: contracts are read for it. */
  head: string
  book: HeadBook
  /** OpenAI-compatible base URL of the pipeline (the head's llama-server), without /v1. */
  upstream: string
  /**
   * Ids of the contracts the pipeline runs on: only these are billed. Omitted: every billable contract
   * of the head for the model (right while they are exactly the pipeline's; not while renewals overlap).
   */
  contractIds?: readonly string[]
  modelSha256: string
  /** The id clients use in `model`. More models join the same gateway with serve(). */
  modelName: string
  /**
   * Reservations in flight, per key. Defaults to the one hold book of `db`, shared by every gateway on
   * the node's database: a key's credit must not be spendable once per gateway.
   */
  holds?: HoldBook
  host?: string
  /** 0 picks a free port. */
  port?: number
  networkFeePerMTok?: number
  /** max_tokens when the request names none. */
  defaultMaxTokens?: number
  /** Largest max_tokens accepted (it sizes the reservation). */
  maxTokensCap?: number
  /** Called once a served request is recorded: ask its workers to sign (ReceiptService.propose). */
  onRecorded?: (rec: RecordedUsage) => Promise<void>
  spotChecker?: SpotChecker
  /** Where the tokens of each billed request are counted (the node's ServingMeter: board, /metrics). */
  serving?: { record: (model: string, tokens: number) => void }
  log?: Logger
}

const MAX_BODY_BYTES = 1 << 20
const CONTRACTS_TTL_MS = 1000
const COMPLETION_PATHS = new Set(['/v1/chat/completions', '/v1/completions'])

interface Usage { prompt_tokens?: number, completion_tokens?: number }

/** One model the gateway sells: where its pipeline listens and which contracts it bills. */
export interface ModelRoute {
  modelName: string
  modelSha256: string
  /** The pipeline's base URL; undefined while the head re-assembles it (503, nothing held). */
  upstream: string | undefined
  /** Only these contracts are billed; undefined: every billable contract of the head for the model. */
  contractIds?: readonly string[]
}

interface Route {
  name: string
  sha256: string
  upstream: string | undefined
  contractIds: ReadonlySet<string> | undefined
  cache?: { at: number, rows: ContractRow[] }
}

interface Served { prompt: number, completion: number }

/**
 * What a proxied request came to: the tokens served (undefined: nothing to bill), an error for the
 * client, and the rest of the answer, sent once the usage is committed.
 */
interface Outcome { served?: Served, error?: ApiError, finish: () => void }

/**
 * The paid, OpenAI-compatible front of a head's pipeline. Per request: authenticate (401), rate-limit
 * (429), reserve the most the request could cost against the key's balance minus its unsettled usage
 * and in-flight reservations (402, before any upstream work), proxy to the pipeline (SSE passed
 * through event by event), then record the usage and its receipt proposals (grouped with other
 * requests finishing, HoldBook.record) and release the hold, before the answer or a stream's closing
 * events go out.
 * Credits move later, on double-signed receipts (HeadBook.settleUsage).
 */
export class Gateway {
  private server: Server | undefined
  private readonly limiter = new RateLimiter()
  private readonly keys: KeyCache
  /** Reservations, and the queue that orders them with record-then-release (shared per database). */
  private readonly holds: HoldBook
  private readonly background = new Set<Promise<unknown>>()
  /** The models sold here, by the id clients send as `model`. */
  private readonly routes = new Map<string, Route>()
  readonly spotOutcomes: SpotOutcome[] = []
  /** Requests forwarded to the pipeline (tests check that refused requests never are). */
  upstreamRequests = 0
  private readonly createdS = Math.floor(Date.now() / 1000)

  constructor (private readonly o: GatewayOptions) {
    this.holds = o.holds ?? holdBookFor(o.db)
    this.keys = new KeyCache(o.db)
    this.serve({ modelName: o.modelName, modelSha256: o.modelSha256, upstream: o.upstream, contractIds: o.contractIds })
  }

  /**
   * Sells one more model on this gateway (same port, same keys), or replaces the route of a model
   * already sold under that name or file. A node serves all its models from one gateway: one port,
   * and one place where each key's reservations are counted.
   */
  serve (m: ModelRoute): void {
    for (const [name, r] of this.routes) if (r.sha256 === m.modelSha256 || name === m.modelName) this.routes.delete(name)
    this.routes.set(m.modelName, { name: m.modelName, sha256: m.modelSha256, upstream: m.upstream, contractIds: m.contractIds === undefined ? undefined : new Set(m.contractIds) })
  }

  /** The ids clients may send as `model`. */
  models (): string[] {
    return [...this.routes.keys()]
  }

  /**
   * Points a model's API at a new pipeline and the contracts it runs on (the head re-assembled after a
   * worker left, or moved onto renewed contracts), or at none while it re-assembles. Clients keep their
   * URL and keys; contracts are re-read at once. `model` (its id or file hash) may be left out while
   * the gateway sells one model.
   */
  retarget (upstream: string | undefined, contractIds?: readonly string[], model?: string): void {
    const route = model === undefined
      ? (this.routes.size === 1 ? [...this.routes.values()][0] : undefined)
      : [...this.routes.values()].find((r) => r.name === model || r.sha256 === model)
    if (route === undefined) throw new Error(`retarget: no single model ${model ?? ''} on this gateway (it sells ${this.models().join(', ')})`)
    route.upstream = upstream
    if (contractIds !== undefined) route.contractIds = new Set(contractIds)
    route.cache = undefined
  }

  get url (): string {
    const addr = this.server?.address() as AddressInfo | null | undefined
    if (addr == null) throw new Error('gateway is not listening')
    return `http://${addr.address}:${addr.port}`
  }

  async start (): Promise<string> {
    // Tracked: a request's accounting continues after its response is sent, and drain() must see it.
    const server = createServer((req, res) => { this.track(this.handle(req, res)) })
    server.keepAliveTimeout = 30_000
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.o.port ?? 0, this.o.host ?? '127.0.0.1', () => { server.off('error', reject); resolve() })
    })
    this.server = server
    return this.url
  }

  async stop (): Promise<void> {
    const server = this.server
    this.server = undefined
    if (server !== undefined) {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
    await this.drain()
  }

  /** Waits for requests in flight and their background work (recording, proposals, spot checks). */
  async drain (): Promise<void> {
    while (this.background.size > 0) await Promise.allSettled([...this.background])
  }

  private async handle (req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const path = new URL(req.url ?? '/', 'http://gateway').pathname.replace(/\/+$/, '')
      if (req.method === 'GET' && path === '/health') { sendJson(res, 200, { status: 'ok' }); return }
      const isModels = path === '/v1/models' || path.startsWith('/v1/models/')
      if (!(isModels && req.method === 'GET') && !(COMPLETION_PATHS.has(path) && req.method === 'POST')) {
        throw notFound(`no route ${req.method ?? ''} ${path}`)
      }
      const key = await this.authenticate(req)
      const wait = this.limiter.take(key.id, key.ratePerMin, key.burst)
      if (wait > 0) throw rateLimited(wait)
      if (isModels) { this.listModels(res, path); return }
      await this.complete(req, res, path, key)
    } catch (err) {
      const e = err instanceof ApiError ? err : new ApiError(500, `gateway error: ${(err as Error).message}`, 'server_error')
      if (e.status >= 500) this.o.log?.error('request failed', { url: req.url, error: e.message })
      sendError(res, e)
    }
  }

  private async authenticate (req: IncomingMessage): Promise<ApiKey> {
    const header = req.headers.authorization
    const m = header === undefined ? null : /^Bearer\s+(\S+)$/i.exec(header)
    if (m === null) throw invalidKey('missing API key: send "Authorization: Bearer cm_…"')
    const key = await this.keys.find(m[1])
    if (key === undefined) throw invalidKey('invalid API key')
    if (key.revoked) throw invalidKey(`API key ${key.id} was revoked`)
    return key
  }

  private listModels (res: ServerResponse, path: string): void {
    const model = (id: string): Record<string, unknown> => ({ id, object: 'model', created: this.createdS, owned_by: 'clawmesh' })
    if (path === '/v1/models') { sendJson(res, 200, { object: 'list', data: this.models().map(model) }); return }
    const id = decodeURIComponent(path.slice('/v1/models/'.length))
    if (!this.routes.has(id)) throw modelNotFound(`the model '${id}' does not exist`)
    sendJson(res, 200, model(id))
  }

  /** The model a request names; with one model sold, `model` may be left out. */
  private routeFor (model: unknown): Route {
    if (model === undefined && this.routes.size === 1) return [...this.routes.values()][0]
    if (model === undefined) throw badRequest(`model is required: this gateway serves ${this.models().map((m) => `'${m}'`).join(', ')}`, 'model')
    const route = typeof model === 'string' ? this.routes.get(model) : undefined
    if (route === undefined) throw modelNotFound(`the model '${String(model)}' does not exist; this gateway serves ${this.models().map((m) => `'${m}'`).join(', ')}`)
    return route
  }

  private async complete (req: IncomingMessage, res: ServerResponse, path: string, key: ApiKey): Promise<void> {
    const body = await readJson(req)
    const chat = path === '/v1/chat/completions'
    if (chat && (!Array.isArray(body.messages) || body.messages.length === 0)) throw badRequest('messages must be a non-empty array', 'messages')
    if (!chat && body.prompt === undefined) throw badRequest('prompt is required', 'prompt')
    const route = this.routeFor(body.model)
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? this.o.defaultMaxTokens ?? 256
    const cap = this.o.maxTokensCap ?? 4096
    if (typeof maxTokens !== 'number' || !Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > cap) {
      throw badRequest(`max_tokens must be an integer in [1, ${cap}]`, 'max_tokens')
    }
    if (typeof body.n === 'number' && body.n !== 1) throw badRequest('only n = 1 is supported', 'n')
    const stream = body.stream === true
    // llama-server runs one completion per element of a prompt array but reports the usage of the
    // first only: the gateway sends each prompt on its own and bills every one.
    const prompts = chat ? undefined : promptsOf(body.prompt)
    if (prompts === undefined && !chat) throw badRequest(`prompt must be a string, an array of token ids, or an array of at most ${MAX_PROMPTS} prompts`, 'prompt')
    if (prompts !== undefined && prompts.length > 1 && stream) throw badRequest('stream one prompt per request: an array of prompts is served only without stream', 'prompt')

    if (route.upstream === undefined) throw unavailable(`${route.name} is being re-assembled; try again shortly`)
    const contracts = await this.contracts(route)
    if (contracts.length === 0) throw unavailable(`no active contracts serve ${route.name} right now`)
    const fee = this.o.networkFeePerMTok ?? 0
    const promptEstimate = prompts === undefined
      ? estimatePromptTokens(body)
      : prompts.reduce((n: number, p) => n + estimatePromptTokens({ ...body, prompt: p }), 0)
    const reservedTokens = promptEstimate + (prompts?.length ?? 1) * maxTokens
    const reserve = chargeFor(reservedTokens, contracts, fee).total
    await this.holds.reserve(this.o.book, key.id, reserve)
    // The reservation is released here unless holds.record took it over (it releases once the usage is committed).
    let handedOver = false
    try {
      // llama-server lets its native n_predict override max_tokens, and n_cmpl ask for several
      // completions: both would serve more than was reserved, so the gateway sets them itself.
      const upstreamBody: Record<string, unknown> = { ...body, max_tokens: maxTokens, n_predict: maxTokens }
      delete upstreamBody.max_completion_tokens
      delete upstreamBody.n_cmpl
      const clientWantsUsage = (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true
      if (stream) upstreamBody.stream_options = { ...(body.stream_options as object | undefined), include_usage: true }
      const abort = new AbortController()
      res.on('close', () => { if (!res.writableFinished) abort.abort() })
      const outcome: Outcome = prompts !== undefined && prompts.length > 1
        ? await this.proxyEach(route, res, path, upstreamBody, prompts, abort)
        : stream ? await this.proxyStream(route, res, path, upstreamBody, clientWantsUsage, abort, promptEstimate) : await this.proxyOnce(route, res, path, upstreamBody, abort)
      const usage = outcome.served
      if (usage !== undefined) {
        // Never bill past the reservation (the estimate is an upper bound, this only guards its bugs).
        const prompt = Math.min(usage.prompt, reservedTokens)
        const completion = Math.min(usage.completion, reservedTokens - prompt)
        handedOver = true
        const recorded = await this.holds.record(this.o.book, {
          keyId: key.id,
          modelSha256: route.sha256,
          promptTokens: prompt,
          completionTokens: completion,
          contracts,
          fee: chargeFor(prompt + completion, contracts, fee).fee
        }, reserve)
        this.o.serving?.record(route.sha256, prompt + completion)
        if (this.o.onRecorded !== undefined) this.track(this.o.onRecorded(recorded))
        // A prompt array is checked on its first prompt: replaying all of them would double the work.
        if (outcome.error === undefined) this.maybeSpotCheck(path, prompts !== undefined && prompts.length > 1 ? { ...upstreamBody, prompt: prompts[0] } : upstreamBody, contracts)
      }
      // The answer (the body, or a stream's closing events) goes out only now that its usage is
      // committed: a crash can lose an answer the client never got, never the bill of one it got.
      outcome.finish()
      if (outcome.error !== undefined) throw outcome.error
    } finally {
      if (!handedOver) this.holds.release(key.id, reserve)
    }
  }

  /**
   * A route's billable contracts, re-read at most every CONTRACTS_TTL_MS: they change on the market's
   * time scale, not per request, and the query is one more turn in the database queue.
   */
  private async contracts (route: Route): Promise<ContractRow[]> {
    const now = Date.now()
    if (route.cache === undefined || now - route.cache.at > CONTRACTS_TTL_MS) {
      route.cache = { at: now, rows: await billableContracts(this.o.db, this.o.head, route.sha256, now) }
    }
    const ids = route.contractIds
    return route.cache.rows.filter((c) => c.expiresAt > now && (ids === undefined || ids.has(c.id)))
  }

  /** Sends a request to the route's pipeline; an answer other than 2xx becomes the client's error. */
  private async forward (route: Route, path: string, body: Record<string, unknown>, abort: AbortController): Promise<Response> {
    const base = route.upstream
    if (base === undefined) throw unavailable(`${route.name} is being re-assembled; try again shortly`)
    this.upstreamRequests++
    let upstream: Response
    try {
      upstream = await fetch(base + path, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: abort.signal
      })
    } catch (err) {
      // The pipeline failed under this request and the head is rebuilding it: that is a 503 (come back
      // shortly), not a broken gateway.
      if (route.upstream !== base) throw unavailable(`${route.name} is being re-assembled (${(err as Error).message}); try again shortly`)
      throw upstreamFailed(`the pipeline did not answer: ${(err as Error).message}`)
    }
    if (!upstream.ok) {
      const text = await upstream.text()
      if (upstream.status >= 500 && route.upstream !== base) throw unavailable(`${route.name} is being re-assembled; try again shortly`)
      let parsed: { error?: { message?: string } } | undefined
      try { parsed = JSON.parse(text) } catch { /* not JSON */ }
      throw new ApiError(upstream.status >= 500 ? 502 : upstream.status, `pipeline: ${parsed?.error?.message ?? text.slice(0, 300)}`,
        upstream.status >= 500 ? 'server_error' : 'invalid_request_error', 'upstream_error')
    }
    return upstream
  }

  /** One non-streamed completion: the tokens served and the answer (an upstream refusal throws: nothing billed). */
  private async proxyOnce (route: Route, res: ServerResponse, path: string, body: Record<string, unknown>, abort: AbortController): Promise<Outcome> {
    const upstream = await this.forward(route, path, body, abort)
    const json = await upstream.json() as { usage?: Usage, model?: string }
    json.model = route.name
    return { served: { prompt: json.usage?.prompt_tokens ?? 0, completion: json.usage?.completion_tokens ?? 0 }, finish: () => { sendJson(res, 200, json) } }
  }

  /**
   * An array of prompts, one upstream request each (concurrently: llama-server queues them on its
   * slots), answered as one completion whose choices follow the prompts' order and whose usage is
   * their sum. Prompts served before another failed are billed; the client gets the error.
   */
  private async proxyEach (route: Route, res: ServerResponse, path: string, body: Record<string, unknown>, prompts: unknown[], abort: AbortController): Promise<Outcome> {
    const parts = await Promise.allSettled(prompts.map(async (prompt) =>
      await (await this.forward(route, path, { ...body, prompt }, abort)).json() as { usage?: Usage, choices?: Array<Record<string, unknown>>, model?: string }))
    let served: Served | undefined
    let error: ApiError | undefined
    let first: Record<string, unknown> | undefined
    const choices: Array<Record<string, unknown>> = []
    for (const [i, p] of parts.entries()) {
      if (p.status === 'rejected') {
        error ??= p.reason instanceof ApiError ? p.reason : upstreamFailed(`prompt ${i}: ${(p.reason as Error).message}`)
        continue
      }
      first ??= p.value
      served = { prompt: (served?.prompt ?? 0) + (p.value.usage?.prompt_tokens ?? 0), completion: (served?.completion ?? 0) + (p.value.usage?.completion_tokens ?? 0) }
      for (const c of p.value.choices ?? []) choices.push({ ...c, index: i })
    }
    const finish = (): void => {
      if (error !== undefined || first === undefined || served === undefined) return
      sendJson(res, 200, { ...first, model: route.name, choices, usage: { prompt_tokens: served.prompt, completion_tokens: served.completion, total_tokens: served.prompt + served.completion } })
    }
    return { served, error, finish }
  }

  /**
   * A streamed completion, passed through event by event as it arrives, except its closing events
   * ([DONE], and the usage event for a client that asked for it), which finish() sends once the usage
   * is committed. Returns the tokens served.
   */
  private async proxyStream (route: Route, res: ServerResponse, path: string, body: Record<string, unknown>, clientWantsUsage: boolean, abort: AbortController, promptEstimate: number): Promise<Outcome> {
    const upstream = await this.forward(route, path, body, abort)
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
    res.flushHeaders()
    const splitter = new SseSplitter()
    const rewriter = new StreamRewriter(route.name, clientWantsUsage)
    const pass = (event: string): void => {
      const out = rewriter.event(event)
      if (out !== '') res.write(out)
    }
    try {
      for await (const chunk of upstream.body as unknown as AsyncIterable<Uint8Array>) {
        for (const event of splitter.push(chunk)) pass(event)
      }
      const rest = splitter.rest()
      if (rest !== '') pass(rest)
    } catch (err) {
      if (!abort.signal.aborted) this.o.log?.warn('pipeline stream broke', { error: (err as Error).message })
    }
    const finish = (): void => { if (!res.writableEnded) res.end(rewriter.closing()) }
    const usage = rewriter.usage
    if (usage?.prompt_tokens !== undefined && usage.completion_tokens !== undefined) return { served: { prompt: usage.prompt_tokens, completion: usage.completion_tokens }, finish }
    // The stream ended before its usage event (the client hung up, or the pipeline broke): the prompt was
    // processed all the same, so it is billed from the gateway's own count, plus one token per content
    // chunk streamed (the first chunk carries only the role).
    // When the pipeline cannot count (it broke), a client that hung up pays the estimate; a client the
    // pipeline failed pays only what it received.
    const fallback = abort.signal.aborted ? promptEstimate : 0
    return { served: { prompt: await this.countPrompt(route, path, body, promptEstimate, fallback), completion: Math.max(0, rewriter.chunks - 1) }, finish }
  }

  /**
   * The prompt tokens of a request, counted by the pipeline's own tokenizer (llama-server's
   * /apply-template and /tokenize), at most the estimate; `fallback` when the pipeline cannot say.
   */
  private async countPrompt (route: Route, path: string, body: Record<string, unknown>, estimate: number, fallback: number): Promise<number> {
    const base = route.upstream
    try {
      if (base === undefined) throw new Error('no pipeline')
      const call = async <T>(endpoint: string, payload: unknown): Promise<T> => {
        const r = await fetch(base + endpoint, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(payload), signal: AbortSignal.timeout(10_000) })
        if (!r.ok) throw new Error(`${endpoint}: HTTP ${r.status}`)
        return await r.json() as T
      }
      let content: unknown = body.prompt
      if (path === '/v1/chat/completions') content = (await call<{ prompt: string }>('/apply-template', body)).prompt
      if (Array.isArray(content) && content.every((t) => typeof t === 'number')) return Math.min(content.length, estimate)
      const { tokens } = await call<{ tokens: unknown[] }>('/tokenize', { content, add_special: true })
      return Math.min(tokens.length, estimate)
    } catch (err) {
      this.o.log?.warn('could not count the prompt of an unfinished stream', { model: route.name, billed: fallback, error: (err as Error).message })
      return fallback
    }
  }

  private maybeSpotCheck (path: string, body: Record<string, unknown>, contracts: ContractRow[]): void {
    const pick = this.o.spotChecker?.pick(contracts)
    if (pick === undefined || this.o.spotChecker === undefined) return
    this.track(this.o.spotChecker.check(path, body, pick.contract, pick.replay).then((outcome) => {
      this.spotOutcomes.push(outcome)
      if (outcome.outcome === 'error') this.o.log?.warn('spot check could not run', { contract: outcome.contract, error: outcome.error })
    }))
  }

  private track (p: Promise<unknown>): void {
    const tracked = p.catch((err: unknown) => this.o.log?.error('background task failed', { error: (err as Error).message }))
    this.background.add(tracked)
    void tracked.finally(() => this.background.delete(tracked))
  }
}

function sendJson (res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value)
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
  res.end(body)
}

async function readJson (req: IncomingMessage): Promise<Record<string, unknown>> {
  const parts: Buffer[] = []
  let size = 0
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.byteLength
    if (size > MAX_BODY_BYTES) throw new ApiError(413, `request body over ${MAX_BODY_BYTES} bytes`, 'invalid_request_error')
    parts.push(chunk)
  }
  let value: unknown
  try {
    value = JSON.parse(Buffer.concat(parts).toString('utf8'))
  } catch (err) {
    throw badRequest(`request body is not JSON: ${(err as Error).message}`)
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw badRequest('request body must be a JSON object')
  return value as Record<string, unknown>
}
