import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { SqliteDb } from '../store/sqlite.ts'
import type { Logger } from '../log.ts'
import { billableContracts, type ContractRow } from '../ledger/contracts.ts'
import type { HeadBook, RecordedUsage } from '../ledger/head-book.ts'
import { findKeyBySecret, type ApiKey } from './keys.ts'
import { RateLimiter } from './rate-limit.ts'
import { ApiError, badRequest, insufficientCredit, invalidKey, modelNotFound, notFound, rateLimited, sendError, unavailable, upstreamFailed } from './errors.ts'
import { chargeFor, estimatePromptTokens } from './pricing.ts'
import { SseSplitter, eventData } from './sse.ts'
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
  /** The id clients use in `model`; one model per gateway. */
  modelName: string
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

/**
 * The paid, OpenAI-compatible front of a head's pipeline. Per request: authenticate (401), rate-limit
 * (429), reserve the most the request could cost against the key's balance minus its unsettled usage
 * and in-flight reservations (402, before any upstream work), proxy to the pipeline (SSE passed
 * through event by event), then record the usage and its receipt proposals and release the hold.
 * Credits move later, on double-signed receipts (HeadBook.settleUsage).
 */
export class Gateway {
  private server: Server | undefined
  private readonly limiter = new RateLimiter()
  private readonly holds = new Map<string, number>()
  private readonly background = new Set<Promise<unknown>>()
  /** Serialises reservations with the record-then-release that ends a request (see hold()). */
  private accounting: Promise<unknown> = Promise.resolve()
  private contractCache: { at: number, rows: ContractRow[] } | undefined
  readonly spotOutcomes: SpotOutcome[] = []
  /** Requests forwarded to the pipeline (tests check that refused requests never are). */
  upstreamRequests = 0
  private readonly createdS = Math.floor(Date.now() / 1000)

  /** Where requests go now; undefined while the head re-assembles its pipeline (503, nothing held). */
  private upstream: string | undefined
  private contractIds: ReadonlySet<string> | undefined

  constructor (private readonly o: GatewayOptions) {
    this.upstream = o.upstream
    this.contractIds = o.contractIds === undefined ? undefined : new Set(o.contractIds)
  }

  /**
   * Points the API at a new pipeline and the contracts it runs on (the head re-assembled after a worker
   * left, or moved onto renewed contracts), or at none while it re-assembles. Clients keep their URL
   * and keys; contracts are re-read at once.
   */
  retarget (upstream: string | undefined, contractIds?: readonly string[]): void {
    this.upstream = upstream
    if (contractIds !== undefined) this.contractIds = new Set(contractIds)
    this.contractCache = undefined
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
      if (isModels) { this.models(res, path); return }
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
    const key = await findKeyBySecret(this.o.db, m[1])
    if (key === undefined) throw invalidKey('invalid API key')
    if (key.revoked) throw invalidKey(`API key ${key.id} was revoked`)
    return key
  }

  private models (res: ServerResponse, path: string): void {
    const model = { id: this.o.modelName, object: 'model', created: this.createdS, owned_by: 'clawmesh' }
    if (path === '/v1/models') { sendJson(res, 200, { object: 'list', data: [model] }); return }
    const id = decodeURIComponent(path.slice('/v1/models/'.length))
    if (id !== this.o.modelName) throw modelNotFound(`the model '${id}' does not exist`)
    sendJson(res, 200, model)
  }

  private async complete (req: IncomingMessage, res: ServerResponse, path: string, key: ApiKey): Promise<void> {
    const body = await readJson(req)
    const chat = path === '/v1/chat/completions'
    if (chat && (!Array.isArray(body.messages) || body.messages.length === 0)) throw badRequest('messages must be a non-empty array', 'messages')
    if (!chat && body.prompt === undefined) throw badRequest('prompt is required', 'prompt')
    if (body.model !== undefined && body.model !== this.o.modelName) throw modelNotFound(`the model '${String(body.model)}' does not exist; this gateway serves '${this.o.modelName}'`)
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? this.o.defaultMaxTokens ?? 256
    const cap = this.o.maxTokensCap ?? 4096
    if (typeof maxTokens !== 'number' || !Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > cap) {
      throw badRequest(`max_tokens must be an integer in [1, ${cap}]`, 'max_tokens')
    }
    if (typeof body.n === 'number' && body.n !== 1) throw badRequest('only n = 1 is supported', 'n')

    if (this.upstream === undefined) throw unavailable(`${this.o.modelName} is being re-assembled; try again shortly`)
    const contracts = await this.contracts()
    if (contracts.length === 0) throw unavailable(`no active contracts serve ${this.o.modelName} right now`)
    const fee = this.o.networkFeePerMTok ?? 0
    const promptEstimate = estimatePromptTokens(body)
    const reservedTokens = promptEstimate + maxTokens
    const reserve = chargeFor(reservedTokens, contracts, fee).total
    await this.serially(async () => { await this.hold(key.id, reserve) })
    let released = false
    try {
      const stream = body.stream === true
      // llama-server lets its native n_predict override max_tokens, and n_cmpl ask for several
      // completions: both would serve more than was reserved, so the gateway sets them itself.
      const upstreamBody: Record<string, unknown> = { ...body, max_tokens: maxTokens, n_predict: maxTokens }
      delete upstreamBody.max_completion_tokens
      delete upstreamBody.n_cmpl
      const clientWantsUsage = (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true
      if (stream) upstreamBody.stream_options = { ...(body.stream_options as object | undefined), include_usage: true }
      const usage = await this.proxy(req, res, path, upstreamBody, stream, clientWantsUsage)
      if (usage === undefined) return // upstream refused: nothing was served, nothing is billed
      // Never bill past the reservation (the estimate is an upper bound, this only guards its bugs).
      const prompt = Math.min(usage.prompt, reservedTokens)
      const completion = Math.min(usage.completion, reservedTokens - prompt)
      const recorded = await this.serially(async () => {
        try {
          return await this.o.book.recordUsage({
            keyId: key.id,
            modelSha256: this.o.modelSha256,
            promptTokens: prompt,
            completionTokens: completion,
            contracts,
            fee: chargeFor(prompt + completion, contracts, fee).fee
          })
        } finally {
          this.release(key.id, reserve)
          released = true
        }
      })
      this.o.serving?.record(this.o.modelSha256, prompt + completion)
      if (this.o.onRecorded !== undefined) this.track(this.o.onRecorded(recorded))
      this.maybeSpotCheck(path, upstreamBody, contracts)
    } finally {
      if (!released) this.release(key.id, reserve)
    }
  }

  /**
   * The pipeline's billable contracts, re-read at most every CONTRACTS_TTL_MS: they change on the
   * market's time scale, not per request, and the query is one more turn in the database queue.
   */
  private async contracts (): Promise<ContractRow[]> {
    const now = Date.now()
    if (this.contractCache === undefined || now - this.contractCache.at > CONTRACTS_TTL_MS) {
      this.contractCache = { at: now, rows: await billableContracts(this.o.db, this.o.head, this.o.modelSha256, now) }
    }
    const ids = this.contractIds
    return this.contractCache.rows.filter((c) => c.expiresAt > now && (ids === undefined || ids.has(c.id)))
  }

  private async serially<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.accounting.then(fn)
    this.accounting = run.catch(() => {})
    return await run
  }

  /**
   * Reserves credit for a request, or refuses it with 402. Runs serially with the record-and-release
   * at the end of requests: otherwise a request finishing between our read of the owed usage and our
   * read of the holds would be counted in neither, and two requests could spend the same credit.
   */
  private async hold (keyId: string, amount: number): Promise<void> {
    const { balance, pending } = await this.o.book.funds(keyId)
    const available = balance - pending - (this.holds.get(keyId) ?? 0)
    if (available < amount) {
      throw insufficientCredit(`this request may cost up to ${amount} credits; key ${keyId} has ${Math.max(0, available)} available (balance ${balance}, ${pending} owed for unsettled usage)`)
    }
    this.holds.set(keyId, (this.holds.get(keyId) ?? 0) + amount)
  }

  private release (keyId: string, amount: number): void {
    const left = (this.holds.get(keyId) ?? 0) - amount
    if (left > 0) this.holds.set(keyId, left)
    else this.holds.delete(keyId)
  }

  /** Forwards the request; returns the tokens served, or undefined when the upstream refused it. */
  private async proxy (req: IncomingMessage, res: ServerResponse, path: string, body: Record<string, unknown>, stream: boolean, clientWantsUsage: boolean): Promise<{ prompt: number, completion: number } | undefined> {
    const abort = new AbortController()
    res.on('close', () => { if (!res.writableFinished) abort.abort() })
    let upstream: Response
    this.upstreamRequests++
    const base = this.upstream
    if (base === undefined) throw unavailable(`${this.o.modelName} is being re-assembled; try again shortly`)
    try {
      upstream = await fetch(base + path, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: abort.signal
      })
    } catch (err) {
      // The pipeline failed under this request and the head is rebuilding it: that is a 503 (come back
      // shortly), not a broken gateway.
      if (this.upstream !== base) throw unavailable(`${this.o.modelName} is being re-assembled (${(err as Error).message}); try again shortly`)
      throw upstreamFailed(`the pipeline did not answer: ${(err as Error).message}`)
    }
    if (!upstream.ok) {
      const text = await upstream.text()
      if (upstream.status >= 500 && this.upstream !== base) throw unavailable(`${this.o.modelName} is being re-assembled; try again shortly`)
      let parsed: { error?: { message?: string } } | undefined
      try { parsed = JSON.parse(text) } catch { /* not JSON */ }
      throw new ApiError(upstream.status >= 500 ? 502 : upstream.status, `pipeline: ${parsed?.error?.message ?? text.slice(0, 300)}`,
        upstream.status >= 500 ? 'server_error' : 'invalid_request_error', 'upstream_error')
    }
    if (!stream) {
      const json = await upstream.json() as { usage?: Usage, model?: string }
      json.model = this.o.modelName
      sendJson(res, 200, json)
      return { prompt: json.usage?.prompt_tokens ?? 0, completion: json.usage?.completion_tokens ?? 0 }
    }

    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' })
    res.flushHeaders()
    const splitter = new SseSplitter()
    let usage: Usage | undefined
    let chunks = 0
    const forward = (event: string): void => {
      const data = eventData(event) as { usage?: Usage | null, choices?: unknown[], model?: string } | undefined
      if (data === undefined) { res.write(event + '\n\n'); return } // [DONE], comments
      if (data.usage != null) usage = data.usage
      const choices = Array.isArray(data.choices) ? data.choices.length : 0
      if (choices > 0) chunks++
      // The usage chunk exists because we asked for it; a client that did not ask never sees it.
      if (!clientWantsUsage) {
        if (choices === 0 && data.usage != null) return
        delete data.usage
      }
      // Re-encoded rather than copied: the pipeline names its model by file path, clients by model id.
      if (data.model !== undefined) data.model = this.o.modelName
      res.write(`data: ${JSON.stringify(data)}\n\n`)
    }
    try {
      for await (const chunk of upstream.body as unknown as AsyncIterable<Uint8Array>) {
        for (const event of splitter.push(chunk)) forward(event)
      }
      const rest = splitter.rest()
      if (rest !== '') forward(rest)
    } catch (err) {
      if (!abort.signal.aborted) this.o.log?.warn('pipeline stream broke', { error: (err as Error).message })
    }
    if (!res.writableEnded) res.end()
    // A client that hung up mid-stream pays for what was generated: one token per content chunk.
    return { prompt: usage?.prompt_tokens ?? 0, completion: usage?.completion_tokens ?? Math.max(0, chunks - 1) }
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
