/**
 * Splits a text/event-stream into whole events as bytes arrive, so the gateway can read each event
 * (to find the usage) and forward it unchanged without waiting for the stream to end.
 */
export class SseSplitter {
  private buffer = ''
  private readonly decoder = new TextDecoder()

  push (chunk: Uint8Array): string[] {
    this.buffer += this.decoder.decode(chunk, { stream: true })
    const events: string[] = []
    for (;;) {
      const m = /\r?\n\r?\n/.exec(this.buffer)
      if (m === null) break
      events.push(this.buffer.slice(0, m.index))
      this.buffer = this.buffer.slice(m.index + m[0].length)
    }
    return events
  }

  /** What is left when the stream ends without a final blank line. */
  rest (): string {
    const tail = this.buffer + this.decoder.decode()
    this.buffer = ''
    return tail.trim()
  }
}

/** The JSON payload of an event's data lines, or undefined ([DONE], comments, non-JSON). */
export function eventData (event: string): unknown {
  const data = event.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n')
  if (data === '' || data === '[DONE]') return undefined
  try { return JSON.parse(data) } catch { return undefined }
}

interface Usage { prompt_tokens?: number, completion_tokens?: number }

/**
 * Rewrites a pipeline's stream for the client, one event at a time: the model named by its id instead
 * of the pipeline's file path, the usage event the gateway asked for dropped unless the client asked
 * too, and the closing events ([DONE], the usage event) kept back for closing(), which the gateway
 * sends once the request's usage is committed. Counts the events with choices and keeps the usage.
 *
 * A plain token event (one compact `data: {…}` line with choices, no usage, and the model the
 * pipeline named before) is passed through by swapping the model's string in place: decoding and
 * re-encoding every token's JSON was most of the gateway's work per token. Anything else is decoded.
 */
export class StreamRewriter {
  usage: Usage | undefined
  /** Events that carried at least one choice. */
  chunks = 0
  /** The pipeline's model, JSON-encoded as it sends it, once an event has shown it; and ours. */
  private theirs: string | undefined
  private readonly ours: string
  private tail = ''

  constructor (model: string, private readonly clientWantsUsage: boolean) {
    this.ours = JSON.stringify(model)
  }

  /** The text to send now for one event (without its blank line); '' when nothing goes out yet. */
  event (raw: string): string {
    const fast = this.passThrough(raw)
    return this.emit(fast ?? this.decode(raw))
  }

  /** The closing events kept back, then nothing more. */
  closing (): string {
    const out = this.tail
    this.tail = ''
    return out
  }

  private emit (out: string): string {
    if (out === '') return ''
    if (this.tail !== '') { this.tail += out; return '' }
    return out
  }

  private passThrough (raw: string): string | undefined {
    if (this.theirs === undefined || !raw.startsWith('data: {') || raw.includes('\n') || raw.includes('"usage"') || !raw.includes('"choices":[{')) return undefined
    const at = raw.indexOf(`"model":${this.theirs}`)
    if (at < 0) return undefined
    this.chunks++
    const from = at + 8 // after "model":
    return `${raw.slice(0, from)}${this.ours}${raw.slice(from + this.theirs.length)}\n\n`
  }

  private decode (raw: string): string {
    const data = eventData(raw) as { usage?: Usage | null, choices?: unknown[], model?: unknown } | undefined
    if (data === undefined) {
      // [DONE] closes the stream: kept back with whatever follows; comments pass.
      if (/^data:\s*\[DONE\]\s*$/m.test(raw)) { this.tail += raw + '\n\n'; return '' }
      return raw + '\n\n'
    }
    if (data.usage != null) this.usage = data.usage
    const choices = Array.isArray(data.choices) ? data.choices.length : 0
    if (choices > 0) this.chunks++
    if (typeof data.model === 'string') this.theirs = JSON.stringify(data.model)
    // The usage chunk exists because we asked for it; a client that did not ask never sees it.
    if (!this.clientWantsUsage) {
      if (choices === 0 && data.usage != null) return ''
      delete data.usage
    }
    if (data.model !== undefined) data.model = JSON.parse(this.ours)
    const out = `data: ${JSON.stringify(data)}\n\n`
    if (choices === 0 && data.usage != null) { this.tail += out; return '' }
    return out
  }
}
