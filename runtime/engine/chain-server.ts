// The head's OpenAI-compatible server over the chain engine, on 127.0.0.1: what llama-server is for
// the star. It speaks the subset the paid gateway and OpenAI clients use (completions and chat
// completions, streamed or not, with usage; /tokenize and /apply-template as llama-server has them,
// so that the gateway can count a prompt whose client hung up) and nothing else.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ChainEngine, ChainResult } from './chain.js';
import type { SamplerParams, StageProcess } from './stage-proc.js';

export interface ChainServerOptions {
  engine: ChainEngine;
  ends: StageProcess;
  /** The model id clients send and see. */
  model: string;
  /** Context length: prompt + max_tokens beyond it is refused. */
  ctx: number;
  host?: string;
  port?: number;
}

const MAX_BODY = 4 << 20;

class HttpError extends Error {
  constructor(readonly status: number, message: string, readonly param?: string) {
    super(message);
  }
}

export class ChainServer {
  private server: Server | undefined;
  private seed = 1;
  baseUrl = '';

  constructor(private readonly o: ChainServerOptions) {}

  /** Root URL without /v1 (llama-server's /tokenize and /apply-template live beside it). */
  get url(): string {
    return this.baseUrl;
  }

  async start(): Promise<void> {
    this.server = createServer((req, res) => {
      void this.handle(req, res).catch((err: Error) => {
        const status = err instanceof HttpError ? err.status : 500;
        if (res.headersSent) {
          if (!res.writableEnded) { res.write(`data: ${JSON.stringify({ error: { message: err.message, type: 'server_error' } })}\n\n`); res.end(); }
          return;
        }
        send(res, status, { error: { message: err.message, type: status >= 500 ? 'server_error' : 'invalid_request_error', param: (err as HttpError).param ?? null, code: null } });
      });
    });
    this.server.keepAliveTimeout = 60_000;
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.o.port ?? 0, this.o.host ?? '127.0.0.1', () => resolve());
    });
    const a = this.server.address() as AddressInfo;
    this.baseUrl = `http://${a.address}:${a.port}`;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method === 'GET' && path === '/health') return send(res, 200, { status: 'ok' });
    if (req.method === 'GET' && (path === '/v1/models' || path === '/models')) return send(res, 200, { object: 'list', data: [{ id: this.o.model, object: 'model', owned_by: 'clawmesh' }] });
    if (req.method !== 'POST') throw new HttpError(404, `no route ${req.method} ${path}`);
    const body = await readJson(req);
    if (path === '/tokenize') {
      if (typeof body.content !== 'string') throw new HttpError(400, 'content must be a string', 'content');
      return send(res, 200, { tokens: [...(await this.o.ends.tokenize(body.content, body.add_special === true, true))] });
    }
    if (path === '/apply-template') return send(res, 200, { prompt: await this.template(body.messages) });
    if (path === '/v1/completions' || path === '/completions') return await this.complete(req, res, body, false);
    if (path === '/v1/chat/completions' || path === '/chat/completions') return await this.complete(req, res, body, true);
    throw new HttpError(404, `no route POST ${path}`);
  }

  private async template(messages: unknown): Promise<string> {
    if (!Array.isArray(messages) || messages.length === 0) throw new HttpError(400, 'messages must be a non-empty array', 'messages');
    const flat = messages.map((m: { role?: unknown; content?: unknown }, i) => {
      if (typeof m?.role !== 'string') throw new HttpError(400, `messages[${i}].role must be a string`, 'messages');
      const content = typeof m.content === 'string' ? m.content
        : Array.isArray(m.content) ? m.content.map((p: { type?: string; text?: string }) => (p?.type === 'text' && typeof p.text === 'string' ? p.text : '')).join('')
          : m.content == null ? '' : undefined;
      if (content === undefined) throw new HttpError(400, `messages[${i}].content must be text`, 'messages');
      return { role: m.role, content };
    });
    return await this.o.ends.applyTemplate(flat, true);
  }

  private async complete(req: IncomingMessage, res: ServerResponse, body: Record<string, unknown>, chat: boolean): Promise<void> {
    let prompt: Int32Array;
    if (chat) {
      prompt = await this.o.ends.tokenize(await this.template(body.messages), true, true);
    } else if (typeof body.prompt === 'string') {
      prompt = await this.o.ends.tokenize(body.prompt, true, true);
    } else if (Array.isArray(body.prompt) && body.prompt.length > 0 && body.prompt.every((t) => Number.isInteger(t) && t >= 0 && t < this.o.ends.info.n_vocab)) {
      prompt = Int32Array.from(body.prompt as number[]);
    } else {
      throw new HttpError(400, 'prompt must be a string or an array of token ids (one prompt per request)', 'prompt');
    }
    const maxTokens = num(body.max_tokens ?? body.max_completion_tokens ?? body.n_predict, 'max_tokens', 1, 1 << 20) ?? 256;
    if (prompt.length + maxTokens > this.o.ctx) throw new HttpError(400, `prompt (${prompt.length} tokens) + max_tokens (${maxTokens}) exceed the context of ${this.o.ctx}`, 'max_tokens');
    const sampling = samplerFrom(body, () => this.seed++);
    const stops = typeof body.stop === 'string' ? [body.stop] : Array.isArray(body.stop) ? body.stop.filter((s): s is string => typeof s === 'string' && s.length > 0).slice(0, 4) : [];
    const stream = body.stream === true;
    const id = `${chat ? 'chatcmpl' : 'cmpl'}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
    const created = Math.floor(Date.now() / 1000);
    const abort = new AbortController();
    res.on('close', () => { if (!res.writableFinished) abort.abort(); });

    const text = new TextStream(stops);
    const pieces = new Map<number, Buffer>();
    const chunk = (delta: string, finish: string | null) => chat
      ? { id, object: 'chat.completion.chunk', created, model: this.o.model, choices: [{ index: 0, delta: delta === '' && finish === null ? { role: 'assistant', content: '' } : finish === null ? { content: delta } : {}, finish_reason: finish }] }
      : { id, object: 'text_completion', created, model: this.o.model, choices: [{ index: 0, text: delta, finish_reason: finish, logprobs: null }] };
    if (stream) {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      if (chat) res.write(`data: ${JSON.stringify(chunk('', null))}\n\n`);
    }
    let queue = Promise.resolve();
    const onToken = (tok: number) => {
      // Pieces are fetched in order; text is released only when it cannot be the start of a stop string.
      queue = queue.then(async () => {
        let b = pieces.get(tok);
        if (!b) { b = (await this.o.ends.pieces(Int32Array.of(tok)))[0].bytes; pieces.set(tok, b); }
        const out = text.push(b);
        if (text.stopped) abort.abort();
        if (stream && out) res.write(`data: ${JSON.stringify(chunk(out, null))}\n\n`);
      });
    };
    let result: ChainResult;
    try {
      result = await this.o.engine.generate({ prompt, maxTokens, sampling, onToken, signal: abort.signal });
    } catch (err) {
      throw new HttpError(503, `the chain did not answer: ${(err as Error).message}`);
    }
    await queue;
    const tail = text.end();
    const finish = text.stopped ? 'stop' : result.finish === 'length' ? 'length' : 'stop';
    const completion = result.tokens.length;
    const usage = { prompt_tokens: prompt.length, completion_tokens: completion, total_tokens: prompt.length + completion };
    if (result.finish === 'aborted' && !text.stopped) return; // the client left
    if (stream) {
      if (tail) res.write(`data: ${JSON.stringify(chunk(tail, null))}\n\n`);
      res.write(`data: ${JSON.stringify(chunk('', finish))}\n\n`);
      const opts = body.stream_options as { include_usage?: boolean } | undefined;
      if (opts?.include_usage === true) res.write(`data: ${JSON.stringify({ id, object: chat ? 'chat.completion.chunk' : 'text_completion', created, model: this.o.model, choices: [], usage })}\n\n`);
      res.end('data: [DONE]\n\n');
      return;
    }
    const all = text.text;
    send(res, 200, chat
      ? { id, object: 'chat.completion', created, model: this.o.model, choices: [{ index: 0, message: { role: 'assistant', content: all }, finish_reason: finish }], usage }
      : { id, object: 'text_completion', created, model: this.o.model, choices: [{ index: 0, text: all, finish_reason: finish, logprobs: null }], usage });
  }
}

/** UTF-8 pieces in, text out, held back while it could still turn into a stop string. */
class TextStream {
  text = '';
  stopped = false;
  private released = 0;
  private readonly decoder = new TextDecoder('utf-8');
  private readonly hold: number;

  constructor(private readonly stops: string[]) {
    this.hold = Math.max(0, ...stops.map((s) => s.length - 1));
  }

  push(b: Buffer): string {
    if (this.stopped) return '';
    this.text += this.decoder.decode(b, { stream: true });
    for (const s of this.stops) {
      const at = this.text.indexOf(s);
      if (at >= 0) { this.text = this.text.slice(0, at); this.stopped = true; }
    }
    const upTo = this.stopped ? this.text.length : Math.max(this.released, this.text.length - this.hold);
    const out = this.text.slice(this.released, upTo);
    this.released = upTo;
    return out;
  }

  end(): string {
    if (!this.stopped) this.text += this.decoder.decode();
    const out = this.text.slice(this.released);
    this.released = this.text.length;
    return out;
  }
}

function num(v: unknown, name: string, min: number, max: number): number | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new HttpError(400, `${name} must be a number in [${min}, ${max}]`, name);
  return v;
}

/** OpenAI's and llama-server's sampling fields; temperature 0 is greedy (exactly one process's tokens). */
function samplerFrom(body: Record<string, unknown>, nextSeed: () => number): SamplerParams {
  const temperature = num(body.temperature, 'temperature', 0, 2) ?? 1;
  const bias: Array<[number, number]> = [];
  const lb = body.logit_bias;
  if (lb && typeof lb === 'object') {
    const entries = Array.isArray(lb) ? (lb as unknown[]).map((e) => (Array.isArray(e) ? e : [])) : Object.entries(lb);
    for (const [k, v] of entries.slice(0, 1024)) {
      const tok = Number(k);
      const val = v === false ? -Infinity : Number(v);
      if (Number.isInteger(tok) && tok >= 0 && Number.isFinite(val)) bias.push([tok, Math.max(-100, Math.min(100, val))]);
      else if (Number.isInteger(tok) && val === -Infinity) bias.push([tok, -1e30]);
    }
  }
  const seed = num(body.seed, 'seed', 0, 2 ** 32 - 1);
  return {
    temperature,
    topK: num(body.top_k, 'top_k', 0, 1 << 20) ?? 0,
    topP: num(body.top_p, 'top_p', 0, 1) ?? 1,
    minP: num(body.min_p, 'min_p', 0, 1) ?? 0,
    seed: seed ?? nextSeed(),
    logitBias: bias,
  };
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > MAX_BODY) throw new HttpError(413, `request body over ${MAX_BODY} bytes`);
    parts.push(c as Buffer);
  }
  try {
    const v = JSON.parse(Buffer.concat(parts).toString('utf8')) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw new HttpError(400, `body is not a JSON object: ${(err as Error).message}`);
  }
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const b = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(b) });
  res.end(b);
}
