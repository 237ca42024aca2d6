// Drives one clawmesh-stage process (stage/clawmesh-stage.cpp) over its stdin/stdout frames.
// Requests are answered in order, one at a time per process: the queue here is what lets a chain
// keep several micro-batches in flight without two of them racing inside llama.cpp.
import type { ChildProcess } from 'node:child_process';
import { spawnTied, stopChild } from './llama-procs.js';

export const enum StageOp {
  Info = 1,
  Eval = 2,
  SeqRm = 3,
  Embed = 4,
  Sample = 5,
  Sampler = 6,
  SamplerFree = 7,
  Tokenize = 8,
  Pieces = 9,
  Template = 10,
  SampleEmbed = 11,
}

export interface StageInfo {
  role: 'stage' | 'ends';
  n_embd: number;
  n_layer: number;
  n_vocab: number;
  n_ctx: number;
  n_batch: number;
  n_seq: number;
}

export interface StageProcessOptions {
  bin: string;
  model: string;
  role: 'stage' | 'ends';
  ctx?: number;
  batch?: number;
  seqs?: number;
  threads?: number;
}

export interface SamplerParams {
  temperature: number;
  topK?: number;
  topP?: number;
  minP?: number;
  seed?: number;
  logitBias?: Array<[number, number]>;
}

export class StageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StageError';
  }
}

interface Pending {
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

export class StageProcess {
  readonly child: ChildProcess;
  private readonly tail: string[];
  private readonly pending: Pending[] = [];
  private buf: Buffer = Buffer.alloc(0);
  private exited: string | undefined;
  info!: StageInfo;

  private constructor(readonly opts: StageProcessOptions) {
    const args = ['--model', opts.model, '--role', opts.role];
    if (opts.ctx) args.push('--ctx', String(opts.ctx));
    if (opts.batch) args.push('--batch', String(opts.batch));
    if (opts.seqs) args.push('--seqs', String(opts.seqs));
    if (opts.threads) args.push('--threads', String(opts.threads));
    this.child = spawnTied(opts.bin, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    this.tail = [];
    this.child.stderr!.on('data', (b: Buffer) => {
      for (const l of b.toString('utf8').split(/\r?\n/)) if (l) { this.tail.push(l); if (this.tail.length > 40) this.tail.shift(); }
    });
    this.child.stdout!.on('data', (d: Buffer) => this.onData(d));
    this.child.stdin!.on('error', () => {}); // a dead child is reported through 'exit'
    this.child.once('exit', (code, sig) => this.onExit(sig ? `signal ${sig}` : `exit code ${code}`));
    this.child.once('error', (e) => this.onExit(`spawn error: ${e.message}`));
  }

  static async start(opts: StageProcessOptions): Promise<StageProcess> {
    const p = new StageProcess(opts);
    try {
      p.info = JSON.parse((await p.call(StageOp.Info)).toString('utf8')) as StageInfo;
    } catch (err) {
      await p.stop();
      throw new StageError(`clawmesh-stage did not start on ${opts.model}: ${(err as Error).message}`);
    }
    return p;
  }

  get alive(): boolean {
    return this.exited === undefined;
  }

  /** Sends one request frame; resolves with the reply payload or rejects with the stage's reason. */
  call(op: StageOp, ...parts: Uint8Array[]): Promise<Buffer> {
    if (this.exited) return Promise.reject(new StageError(`stage process is gone (${this.exited})${this.lastWords()}`));
    const len = 1 + parts.reduce((n, p) => n + p.length, 0);
    // One buffer, one write: a pipe write per part costs a syscall each and can wake the child early.
    const frame = Buffer.allocUnsafe(4 + len);
    frame.writeUInt32LE(len, 0);
    frame.writeUInt8(op, 4);
    let o = 5;
    for (const p of parts) { frame.set(p, o); o += p.length; }
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.child.stdin!.write(frame);
    });
  }

  /** Hidden states in, hidden states after this stage's last layer out; rows of n_embd floats. */
  async eval(seqs: Int32Array, positions: Int32Array, hidden: Float32Array): Promise<Float32Array> {
    const n = seqs.length;
    const out = await this.call(StageOp.Eval, u32(n), bytes(seqs), bytes(positions), bytes(hidden));
    return floats(out);
  }

  async seqRm(seq: number, p0 = -1, p1 = -1): Promise<void> {
    const b = Buffer.alloc(12);
    b.writeInt32LE(seq, 0);
    b.writeInt32LE(p0, 4);
    b.writeInt32LE(p1, 8);
    await this.call(StageOp.SeqRm, b);
  }

  async embed(tokens: Int32Array): Promise<Float32Array> {
    return floats(await this.call(StageOp.Embed, u32(tokens.length), bytes(tokens)));
  }

  async sample(samplers: Uint32Array, hidden: Float32Array): Promise<Int32Array> {
    const out = await this.call(StageOp.Sample, u32(samplers.length), bytes(samplers), bytes(hidden));
    return new Int32Array(out.buffer.slice(out.byteOffset, out.byteOffset + out.length));
  }

  /**
   * Samples a token per row and, in the same call, embeds the sampled tokens: the next step's input
   * rows come back with the tokens (one round trip to this process per step instead of two).
   */
  async sampleEmbed(samplers: Uint32Array, hidden: Float32Array): Promise<{ tokens: Int32Array; eog: boolean[]; hidden: Float32Array }> {
    const n = samplers.length;
    const out = await this.call(StageOp.SampleEmbed, u32(n), bytes(samplers), bytes(hidden));
    const e = this.info.n_embd;
    if (out.length !== n * (4 * e + 5)) throw new StageError(`sample+embed answered ${out.length} bytes for ${n} rows`);
    const ab = out.buffer.slice(out.byteOffset, out.byteOffset + out.length);
    return {
      hidden: new Float32Array(ab, 0, n * e),
      tokens: new Int32Array(ab, 4 * n * e, n),
      eog: Array.from(new Uint8Array(ab, 4 * n * e + 4 * n, n), (b) => b === 1),
    };
  }

  async setSampler(id: number, p: SamplerParams): Promise<void> {
    const bias = p.logitBias ?? [];
    const b = Buffer.alloc(28 + 8 * bias.length);
    b.writeUInt32LE(id, 0);
    b.writeFloatLE(p.temperature, 4);
    b.writeInt32LE(p.topK ?? 0, 8);
    b.writeFloatLE(p.topP ?? 1, 12);
    b.writeFloatLE(p.minP ?? 0, 16);
    b.writeUInt32LE((p.seed ?? 0) >>> 0, 20);
    b.writeUInt32LE(bias.length, 24);
    bias.forEach(([tok, v], i) => {
      b.writeInt32LE(tok, 28 + 8 * i);
      b.writeFloatLE(v, 32 + 8 * i);
    });
    await this.call(StageOp.Sampler, b);
  }

  async freeSampler(id: number): Promise<void> {
    await this.call(StageOp.SamplerFree, u32(id));
  }

  async tokenize(text: string, addSpecial: boolean, parseSpecial: boolean): Promise<Int32Array> {
    const out = await this.call(StageOp.Tokenize, Buffer.from([addSpecial ? 1 : 0, parseSpecial ? 1 : 0]), Buffer.from(text, 'utf8'));
    return new Int32Array(out.buffer.slice(out.byteOffset, out.byteOffset + out.length));
  }

  /** Each token's bytes (a piece may be part of a UTF-8 character) and whether it ends generation. */
  async pieces(tokens: Int32Array): Promise<Array<{ bytes: Buffer; eog: boolean }>> {
    const out = await this.call(StageOp.Pieces, bytes(tokens));
    const res: Array<{ bytes: Buffer; eog: boolean }> = [];
    for (let o = 0; o < out.length; ) {
      const eog = out[o] === 1;
      const len = out.readUInt32LE(o + 1);
      res.push({ eog, bytes: out.subarray(o + 5, o + 5 + len) });
      o += 5 + len;
    }
    return res;
  }

  async applyTemplate(messages: Array<{ role: string; content: string }>, addAssistant = true): Promise<string> {
    const parts: Buffer[] = [Buffer.from([addAssistant ? 1 : 0]), u32(messages.length)];
    for (const m of messages) {
      for (const s of [m.role, m.content]) {
        const b = Buffer.from(s, 'utf8');
        parts.push(u32(b.length), b);
      }
    }
    return (await this.call(StageOp.Template, ...parts)).toString('utf8');
  }

  async stop(): Promise<void> {
    this.child.stdin!.end();
    await stopChild(this.child, 2000);
  }

  outputTail(): string[] {
    return [...this.tail];
  }

  private lastWords(): string {
    return this.tail.length ? `; last output: ${this.tail.slice(-3).join(' | ')}` : '';
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (this.buf.length < 4 + len) return;
      const status = this.buf[4];
      // A view, not a copy: the readers below copy into aligned memory, and this.buf is never written to.
      const payload = this.buf.subarray(5, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      const p = this.pending.shift();
      if (!p) continue;
      if (status === 0) p.resolve(payload);
      else p.reject(new StageError(payload.toString('utf8')));
    }
  }

  private onExit(why: string): void {
    if (this.exited) return;
    this.exited = why;
    const err = new StageError(`stage process exited (${why})${this.lastWords()}`);
    for (const p of this.pending.splice(0)) p.reject(err);
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
}

function bytes(a: Int32Array | Uint32Array | Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function floats(b: Buffer): Float32Array {
  // Copy into an aligned buffer: a Buffer's byteOffset need not be a multiple of 4.
  const ab = b.buffer.slice(b.byteOffset, b.byteOffset + b.length);
  return new Float32Array(ab);
}
