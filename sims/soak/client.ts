// An outside user of the paid API: one request at a time, alternating streamed and plain chat
// completions, every outcome recorded with its time, so outages can be measured from the client's side.

export interface RequestOutcome {
  /** When the request was sent (ms since epoch). */
  at: number
  ms: number
  ok: boolean
  status: number
  stream: boolean
  tokens: number
  error?: string
}

export interface ClientOptions {
  baseUrl: string
  apiKey: string
  model: string
  maxTokens?: number
  /** Pause between one answer and the next request. */
  intervalMs?: number
  timeoutMs?: number
}

export async function paidRequest (o: ClientOptions, stream: boolean): Promise<RequestOutcome> {
  const at = Date.now()
  const done = (ok: boolean, status: number, tokens: number, error?: string): RequestOutcome => ({ at, ms: Date.now() - at, ok, status, stream, tokens, ...(error !== undefined ? { error } : {}) })
  try {
    const res = await fetch(`${o.baseUrl}/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${o.apiKey}` },
      body: JSON.stringify({ model: o.model, messages: [{ role: 'user', content: 'Say something about meshes.' }], max_tokens: o.maxTokens ?? 16, temperature: 0, stream, ...(stream ? { stream_options: { include_usage: true } } : {}) }),
      signal: AbortSignal.timeout(o.timeoutMs ?? 30_000)
    })
    const text = await res.text()
    if (!res.ok) return done(false, res.status, 0, text.slice(0, 300))
    if (!stream) {
      const body = JSON.parse(text) as { usage?: { completion_tokens?: number }, choices?: unknown[] }
      return done(Array.isArray(body.choices), res.status, body.usage?.completion_tokens ?? 0)
    }
    // A stream that ends with an error event, or without [DONE], was not answered.
    let tokens = 0
    let finished = false
    for (const line of text.split('\n')) {
      if (!line.startsWith('data: ')) continue
      const data = line.slice(6).trim()
      if (data === '[DONE]') { finished = true; continue }
      const event = JSON.parse(data) as { error?: { message?: string }, usage?: { completion_tokens?: number } }
      if (event.error !== undefined) return done(false, res.status, tokens, `stream error: ${event.error.message ?? ''}`)
      if (event.usage?.completion_tokens !== undefined) tokens = event.usage.completion_tokens
    }
    return done(finished, res.status, tokens, finished ? undefined : 'stream ended without [DONE]')
  } catch (err) {
    return done(false, 0, 0, (err as Error).message)
  }
}

/** Sends requests until the signal aborts; every outcome goes to `record`. */
export async function requestLoop (o: ClientOptions, signal: AbortSignal, record: (r: RequestOutcome) => void): Promise<void> {
  let n = 0
  while (!signal.aborted) {
    record(await paidRequest(o, n++ % 2 === 1))
    await new Promise((resolve) => setTimeout(resolve, o.intervalMs ?? 1000))
  }
}

export interface Outage { from: number, to: number, ms: number, failures: number }

/**
 * Spans of failed requests, from the first failure to the next success (or the last failure when no
 * success followed). A single failure between two successes is an outage as long as its gap.
 */
export function outages (outcomes: readonly RequestOutcome[]): Outage[] {
  const sorted = [...outcomes].sort((a, b) => a.at - b.at)
  const spans: Outage[] = []
  let open: Outage | undefined
  for (const r of sorted) {
    if (!r.ok) {
      if (open === undefined) open = { from: r.at, to: r.at + r.ms, ms: 0, failures: 0 }
      open.failures++
      open.to = r.at + r.ms
    } else if (open !== undefined) {
      open.to = r.at
      open.ms = open.to - open.from
      spans.push(open)
      open = undefined
    }
  }
  if (open !== undefined) { open.ms = open.to - open.from; spans.push(open) }
  return spans
}
