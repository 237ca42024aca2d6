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
