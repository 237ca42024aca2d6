import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { randomUUID } from 'node:crypto'

/**
 * Local stand-ins for the LLM servers the agent's brains talk to, speaking their real wire formats
 * so that @langchain/ollama and @langchain/openai run unmodified against them:
 * - Ollama: POST /api/chat, tools as `{type: "function", function: {…}}`, answers as NDJSON lines
 *   (`{"model", "created_at", "message": {"role", "content", "tool_calls": [{"function": {"name",
 *   "arguments": {…}}}]}, "done": false}` … then a `"done": true` line with the counters), or one JSON
 *   object when `stream` is false.
 * - OpenAI: POST /v1/chat/completions, a `chat.completion` object, or with `stream: true` server-sent
 *   events of `chat.completion.chunk` deltas (tool calls announced with id and name, their arguments
 *   sent in pieces), `finish_reason`, an optional usage chunk, and `data: [DONE]`.
 * What to answer comes from a `think` function that sees the request decoded into one neutral shape.
 */

export interface WireMessage {
  role: 'system' | 'user' | 'assistant' | 'tool'
  content: string
  toolCalls?: Array<{ id?: string, name: string, args: Record<string, unknown> }>
  /** OpenAI ties a tool result to its call; Ollama does not. */
  toolCallId?: string
}

export interface WireChat {
  model: string
  messages: WireMessage[]
  /** Names of the tools the client declared, with their JSON schemas. */
  tools: Array<{ name: string, description: string, parameters: Record<string, unknown> }>
  stream: boolean
}

export interface Thought {
  content: string
  calls?: Array<{ name: string, args: Record<string, unknown> }>
}

/**
 * answer: speak the format. garbage: 200 with an HTML error page. bad-call: a tool call whose
 * arguments are not JSON (OpenAI) or that names a tool nobody declared (Ollama: its arguments are
 * always an object). hang: accept the request and never answer.
 */
export type Mode = 'answer' | 'garbage' | 'bad-call' | 'hang'

export interface StandIn {
  url: string
  /** Every chat request, decoded, in order of arrival. */
  readonly requests: WireChat[]
  /** The raw JSON bodies, to check the clients' own encoding. */
  readonly bodies: Array<Record<string, unknown>>
  mode: Mode
  stop: () => Promise<void>
}

type Handler = (body: Record<string, unknown>, res: ServerResponse, stand: StandIn) => Promise<void>

async function serve (path: string, handler: Handler): Promise<StandIn> {
  const hung = new Set<ServerResponse>()
  const stand: StandIn = { url: '', requests: [], bodies: [], mode: 'answer', stop: async () => {} }
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    void (async () => {
      const chunks: Buffer[] = []
      for await (const c of req) chunks.push(c as Buffer)
      if (req.method !== 'POST' || req.url?.split('?')[0] !== path) {
        res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: `no route ${req.method ?? '?'} ${req.url ?? '?'}` }))
        return
      }
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>
      stand.bodies.push(body)
      if (stand.mode === 'hang') {
        hung.add(res)
        return
      }
      if (stand.mode === 'garbage') {
        res.writeHead(200, { 'content-type': 'text/html' }).end('<html><body><h1>502 Bad Gateway</h1>nginx</body></html>\n')
        return
      }
      await handler(body, res, stand)
    })().catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ error: `stand-in failed: ${(err as Error).stack ?? String(err)}` }))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  stand.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  stand.stop = async () => {
    for (const res of hung) res.destroy()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => { resolve() }))
  }
  return stand
}

function toolsOf (body: Record<string, unknown>): WireChat['tools'] {
  const tools = (body.tools ?? []) as Array<{ type: string, function: { name: string, description?: string, parameters?: Record<string, unknown> } }>
  return tools.map((t) => {
    if (t.type !== 'function') throw new Error(`tool of type ${t.type}, expected "function"`)
    return { name: t.function.name, description: t.function.description ?? '', parameters: t.function.parameters ?? {} }
  })
}

/** Words of a reply in small pieces, as a model streams them. */
function pieces (text: string, size = 7): string[] {
  const out: string[] = []
  for (let i = 0; i < text.length; i += size) out.push(text.slice(i, i + size))
  return out
}

// ---- Ollama ----

export async function startOllamaStandIn (think: (chat: WireChat) => Thought): Promise<StandIn> {
  return await serve('/api/chat', async (body, res, stand) => {
    const raw = (body.messages ?? []) as Array<{ role: WireMessage['role'], content?: string, tool_calls?: Array<{ function: { name: string, arguments: Record<string, unknown> } }> }>
    const chat: WireChat = {
      model: String(body.model),
      stream: body.stream !== false,
      tools: toolsOf(body),
      messages: raw.map((m) => ({ role: m.role, content: m.content ?? '', toolCalls: m.tool_calls?.map((c) => ({ name: c.function.name, args: c.function.arguments })) }))
    }
    stand.requests.push(chat)
    const thought = think(chat)
    let calls = (thought.calls ?? []).map((c) => ({ function: { name: c.name, arguments: c.args } }))
    if (stand.mode === 'bad-call') calls = [{ function: { name: 'transfer_all_credits', arguments: { to: 'mallory' } } }]
    const base = { model: chat.model, created_at: new Date().toISOString() }
    const done = { ...base, message: { role: 'assistant', content: '' }, done: true, done_reason: 'stop', total_duration: 1_000_000, load_duration: 1000, prompt_eval_count: 42, prompt_eval_duration: 1000, eval_count: 7, eval_duration: 1000 }
    if (!chat.stream) {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({ ...done, message: { role: 'assistant', content: thought.content, ...(calls.length > 0 ? { tool_calls: calls } : {}) } }))
      return
    }
    res.writeHead(200, { 'content-type': 'application/x-ndjson' })
    const line = (o: unknown): void => { res.write(JSON.stringify(o) + '\n') }
    for (const p of pieces(thought.content)) line({ ...base, message: { role: 'assistant', content: p }, done: false })
    // Ollama sends a model's tool calls whole, in one message, once it has parsed them.
    if (calls.length > 0) line({ ...base, message: { role: 'assistant', content: '', tool_calls: calls }, done: false })
    line(done)
    res.end()
  })
}

// ---- OpenAI ----

export async function startOpenAIStandIn (think: (chat: WireChat) => Thought): Promise<StandIn> {
  return await serve('/v1/chat/completions', async (body, res, stand) => {
    const raw = (body.messages ?? []) as Array<{ role: string, content?: string | null | Array<{ type: string, text?: string }>, tool_calls?: Array<{ id: string, function: { name: string, arguments: string } }>, tool_call_id?: string }>
    const chat: WireChat = {
      model: String(body.model),
      stream: body.stream === true,
      tools: toolsOf(body),
      messages: raw.map((m) => ({
        // Newer clients send the system prompt as "developer" for some models.
        role: (m.role === 'developer' ? 'system' : m.role) as WireMessage['role'],
        content: typeof m.content === 'string' ? m.content : Array.isArray(m.content) ? m.content.map((p) => p.text ?? '').join('') : '',
        toolCalls: m.tool_calls?.map((c) => ({ id: c.id, name: c.function.name, args: JSON.parse(c.function.arguments) as Record<string, unknown> })),
        toolCallId: m.tool_call_id
      }))
    }
    stand.requests.push(chat)
    const thought = think(chat)
    const calls = (thought.calls ?? []).map((c) => ({ id: `call_${randomUUID().replace(/-/g, '').slice(0, 24)}`, type: 'function' as const, function: { name: c.name, arguments: JSON.stringify(c.args) } }))
    if (stand.mode === 'bad-call' && calls.length > 0) calls[0].function.arguments = '{"start": 0, "end": '
    else if (stand.mode === 'bad-call') calls.push({ id: 'call_bad', type: 'function', function: { name: 'propose', arguments: '{"start": 0, "end": ' } })
    const id = `chatcmpl-${randomUUID()}`
    const created = Math.floor(Date.now() / 1000)
    const finish = calls.length > 0 ? 'tool_calls' : 'stop'
    const usage = { prompt_tokens: 42, completion_tokens: 7, total_tokens: 49 }
    if (!chat.stream) {
      res.writeHead(200, { 'content-type': 'application/json' })
      res.end(JSON.stringify({
        id,
        object: 'chat.completion',
        created,
        model: chat.model,
        choices: [{ index: 0, message: { role: 'assistant', content: thought.content === '' ? null : thought.content, ...(calls.length > 0 ? { tool_calls: calls } : {}), refusal: null }, finish_reason: finish, logprobs: null }],
        usage
      }))
      return
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    const event = (choices: unknown[], extra: Record<string, unknown> = {}): void => {
      res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: chat.model, choices, ...extra })}\n\n`)
    }
    event([{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }])
    for (const p of pieces(thought.content)) event([{ index: 0, delta: { content: p }, finish_reason: null }])
    calls.forEach((c, i) => {
      event([{ index: 0, delta: { tool_calls: [{ index: i, id: c.id, type: 'function', function: { name: c.function.name, arguments: '' } }] }, finish_reason: null }])
      for (const p of pieces(c.function.arguments, 9)) event([{ index: 0, delta: { tool_calls: [{ index: i, function: { arguments: p } }] }, finish_reason: null }])
    })
    event([{ index: 0, delta: {}, finish_reason: finish }])
    if ((body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true) event([], { usage })
    res.write('data: [DONE]\n\n')
    res.end()
  })
}
