import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'

/**
 * An upstream that answers at once, in llama-server's OpenAI format: a chat completion as one JSON
 * body, or with `stream: true` as server-sent events (role chunk, one chunk per token, finish chunk,
 * the usage chunk when stream_options.include_usage asks for it, then [DONE]), each event its own
 * write as llama-server sends them. With nothing to compute, whatever a client measures through a
 * proxy in front of it is the proxy's own cost.
 */
export interface InstantUpstream {
  url: string
  close: () => Promise<void>
}

export interface InstantUpstreamOptions {
  /** Tokens in each answer (capped by the request's max_tokens). */
  tokens?: number
  promptTokens?: number
}

export async function startInstantUpstream (o: InstantUpstreamOptions = {}): Promise<InstantUpstream> {
  const tokens = o.tokens ?? 16
  const promptTokens = o.promptTokens ?? 12
  const server: Server = createServer((req, res) => {
    const parts: Buffer[] = []
    req.on('data', (c: Buffer) => parts.push(c))
    req.on('end', () => {
      let body: { stream?: boolean, max_tokens?: number, stream_options?: { include_usage?: boolean } }
      try {
        body = JSON.parse(Buffer.concat(parts).toString('utf8'))
      } catch (err) {
        res.writeHead(400, { 'content-type': 'application/json' })
        res.end(JSON.stringify({ error: { message: `instant upstream: body is not JSON (${(err as Error).message})` } }))
        return
      }
      const n = Math.min(tokens, body.max_tokens ?? tokens)
      const usage = { prompt_tokens: promptTokens, completion_tokens: n, total_tokens: promptTokens + n }
      const base = { id: 'chatcmpl-instant', created: 0, model: '/models/instant.gguf', system_fingerprint: 'b0-instant' }
      if (body.stream !== true) {
        const whole = JSON.stringify({ ...base, object: 'chat.completion', choices: [{ index: 0, finish_reason: 'length', message: { role: 'assistant', content: ' ok'.repeat(n) } }], usage })
        res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(whole) })
        res.end(whole)
        return
      }
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
      const event = (choices: unknown[], extra: Record<string, unknown> = {}): string =>
        `data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices, ...extra })}\n\n`
      res.write(event([{ index: 0, finish_reason: null, delta: { role: 'assistant', content: null } }]))
      for (let i = 0; i < n; i++) res.write(event([{ index: 0, finish_reason: null, delta: { content: ' ok' } }]))
      res.write(event([{ index: 0, finish_reason: 'length', delta: {} }]))
      if (body.stream_options?.include_usage === true) res.write(event([], { usage }))
      res.end('data: [DONE]\n\n')
    })
  })
  server.keepAliveTimeout = 30_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}
