// The head's side of the chain engine: tokens → ends (embeddings) → stage 1 → … → stage k → ends
// (sampling). Logits never leave the head; only hidden states travel. Sequences in flight share
// each pass (continuous batching: one eval carries a row per decoding sequence and chunks of new
// prompts), and the sequences are dealt into `lanes` groups that step independently, so while one
// lane's pass is inside stage 2 another's is inside stage 1 and the stages do not idle.
//
// The head keeps every sequence's tokens: when the path fails mid-generation (a stage died), a
// caller-supplied `repair` builds a new path and the head re-prefills each sequence's tokens on it,
// then carries on; greedy output is the same as if nothing had happened.
import { StageError, type SamplerParams, type StageProcess } from './stage-proc.js';

/** A route through all the model's layers: the head hands it rows and gets the last layer's output. */
export interface ChainPath {
  forward(seqs: Int32Array, positions: Int32Array, hidden: Float32Array): Promise<Float32Array>;
  /**
   * Forgets a sequence's KV cache on every stage: all of it (a finished request frees its slot), or from
   * position `from` on (drafted tokens that verification rejected).
   */
  drop(seq: number, from?: number): Promise<void>;
  close(): Promise<void>;
  /** Called once if the path breaks by itself (a stage died, a link closed), even with nothing in flight. */
  onBroken?(listener: (err: Error) => void): void;
  /** Bytes sent and received per link so far (for the benchmark's bytes per token per link). */
  traffic?(): Array<{ link: string; sent: number; received: number }>;
}

/** The stages on one machine, called in order: for tests and as the one-hop reference. */
export class LocalPath implements ChainPath {
  constructor(private readonly stages: StageProcess[]) {}
  async forward(seqs: Int32Array, positions: Int32Array, hidden: Float32Array): Promise<Float32Array> {
    let h = hidden;
    for (const s of this.stages) h = await s.eval(seqs, positions, h);
    return h;
  }
  async drop(seq: number, from?: number): Promise<void> {
    await Promise.all(this.stages.filter((s) => s.alive).map((s) => s.seqRm(seq, from ?? -1, -1)));
  }
  async close(): Promise<void> {}
}

export interface ChainRequest {
  prompt: Int32Array;
  maxTokens: number;
  sampling: SamplerParams;
  /** Called with each new token as it is sampled. */
  onToken?: (token: number) => void;
  signal?: AbortSignal;
}

export interface ChainResult {
  tokens: number[];
  finish: 'stop' | 'length' | 'aborted';
  /** Times the path failed under this request and was repaired (the request still completed). */
  repairs: number;
}

export interface ChainEngineOptions {
  ends: StageProcess;
  path: ChainPath;
  /** Sequence slots every stage was started with (--seqs). */
  slots: number;
  /** Rows per pass (--batch of every process). */
  batch: number;
  /** Groups of sequences stepping independently; 2 keeps a 2-stage chain busy, more for longer chains. */
  lanes?: number;
  /** Builds a fresh path after a failure (say, a stage was killed); undefined: failures end the requests. */
  repair?: (failed: ChainPath, err: Error) => Promise<ChainPath>;
  /** Context length of the stages: a sequence that would pass it ends with finish 'length'. */
  ctx?: number;
  /**
   * Speculative decoding for greedy requests: up to `k` tokens drafted by prompt lookup (the sequence's
   * own earlier n-grams) ride with each decode row and are verified in the same pass; the accepted
   * prefix and one more token come back per trip, rejected positions are dropped from every stage.
   * Output is exactly plain greedy decoding's. Undefined: off.
   */
  draft?: { k: number; ngram?: number };
}

interface Seq {
  slot: number;
  req: ChainRequest;
  /** Prompt then generated tokens: what a repaired path is re-filled with. */
  tokens: number[];
  /** Tokens already in the path's KV cache for this slot. */
  cached: number;
  generated: number[];
  lane: number;
  done: (r: ChainResult) => void;
  fail: (e: Error) => void;
  repairs: number;
  finished: boolean;
  /** Input row of tokens[embedAt], embedded by the ends together with sampling it (saves a call per step). */
  embedAt: number;
  embedded: Float32Array | undefined;
}

export class ChainEngine {
  private path: ChainPath;
  private readonly free: number[];
  private readonly waiting: Seq[] = [];
  private readonly active = new Map<number, Seq>();
  private readonly running = new Set<number>(); // lanes with a loop going
  private repairing: Promise<void> | undefined;
  private readonly lanes: number;
  private closed = false;
  /** Where the head's time goes: passes, rows, ms in the ends process (embed, sample) and on the path (stages and links). */
  readonly stats = { steps: 0, rows: 0, endsMs: 0, pathMs: 0, drafted: 0, accepted: 0 };

  constructor(private readonly o: ChainEngineOptions) {
    this.path = o.path;
    this.watch(o.path);
    this.free = Array.from({ length: o.slots }, (_, i) => o.slots - 1 - i);
    this.lanes = Math.max(1, o.lanes ?? 2);
  }

  /** Generates for one request; resolves when it ends (stop token, max tokens or abort). */
  generate(req: ChainRequest): Promise<ChainResult> {
    if (this.closed) return Promise.reject(new StageError('chain engine is closed'));
    if (req.prompt.length === 0) return Promise.reject(new StageError('empty prompt'));
    return new Promise((done, fail) => {
      this.waiting.push({ slot: -1, req, tokens: [...req.prompt], cached: 0, generated: [], lane: 0, done, fail, repairs: 0, finished: false, embedAt: -1, embedded: undefined });
      this.admit();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of [...this.waiting, ...this.active.values()]) s.fail(new StageError('chain engine closed'));
    this.waiting.length = 0;
    this.active.clear();
    await this.path.close();
  }

  private admit(): void {
    while (this.waiting.length > 0 && this.free.length > 0) {
      const s = this.waiting.shift()!;
      s.slot = this.free.pop()!;
      s.lane = this.leastBusyLane();
      this.active.set(s.slot, s);
      void this.o.ends.setSampler(s.slot, s.req.sampling).catch((e: Error) => this.finish(s, undefined, e));
      this.kick(s.lane);
    }
  }

  private leastBusyLane(): number {
    const load = new Array<number>(this.lanes).fill(0);
    for (const s of this.active.values()) load[s.lane]++;
    return load.indexOf(Math.min(...load));
  }

  private kick(lane: number): void {
    if (this.running.has(lane)) return;
    this.running.add(lane);
    void this.loop(lane).finally(() => {
      this.running.delete(lane);
      if ([...this.active.values()].some((s) => s.lane === lane)) this.kick(lane);
    });
  }

  private async loop(lane: number): Promise<void> {
    for (;;) {
      if (this.repairing) await this.repairing;
      const mine = [...this.active.values()].filter((s) => s.lane === lane && !s.finished);
      if (mine.length === 0) return;
      const rows: Array<{ s: Seq; token: number; pos: number; sample: boolean; drafts?: number[] }> = [];
      // Decoding sequences first (one row each, latency matters, plus any drafted tokens to verify),
      // then prompt chunks fill the rest.
      for (const s of mine) {
        if (s.req.signal?.aborted) { this.finish(s, 'aborted'); continue; }
        if (s.tokens.length - s.cached !== 1 || rows.length >= this.o.batch) continue;
        const drafts = this.draftFor(s, this.o.batch - rows.length - 1);
        rows.push({ s, token: s.tokens[s.cached], pos: s.cached, sample: true, ...(drafts.length > 0 ? { drafts } : {}) });
        drafts.forEach((d, i) => rows.push({ s, token: d, pos: s.cached + 1 + i, sample: true }));
      }
      for (const s of mine) {
        const left = s.tokens.length - s.cached;
        if (s.finished || left <= 1) continue;
        const take = Math.min(this.o.batch - rows.length, left);
        for (let i = 0; i < take; i++) rows.push({ s, token: s.tokens[s.cached + i], pos: s.cached + i, sample: s.cached + i === s.tokens.length - 1 });
      }
      if (rows.length === 0) return;
      const path = this.path;
      const n = this.o.ends.info.n_embd;
      try {
        // Rows whose token the ends already embedded while sampling it need no call; the rest (prompt
        // chunks, re-prefills after a repair) are embedded here in one call.
        const hidden = new Float32Array(rows.length * n);
        const need: number[] = [];
        rows.forEach((r, i) => {
          if (r.pos === r.s.embedAt && r.s.embedded) hidden.set(r.s.embedded, i * n);
          else need.push(i);
        });
        let t = performance.now();
        if (need.length > 0) {
          const e = await this.o.ends.embed(Int32Array.from(need.map((i) => rows[i].token)));
          need.forEach((row, j) => hidden.set(e.subarray(j * n, j * n + n), row * n));
          this.stats.endsMs += performance.now() - t;
          t = performance.now();
        }
        const out = await path.forward(Int32Array.from(rows.map((r) => r.s.slot)), Int32Array.from(rows.map((r) => r.pos)), hidden);
        this.stats.pathMs += performance.now() - t;
        this.stats.steps++;
        this.stats.rows += rows.length;
        if (path !== this.path) continue; // repaired meanwhile: these rows are filled again on the new path
        for (const r of rows) r.s.cached = Math.max(r.s.cached, r.pos + 1);
        const at: number[] = [];
        rows.forEach((r, i) => { if (r.sample) at.push(i); });
        if (at.length === 0) continue;
        const sel = new Float32Array(at.length * n);
        at.forEach((row, i) => sel.set(out.subarray(row * n, row * n + n), i * n));
        t = performance.now();
        const got = await this.o.ends.sampleEmbed(Uint32Array.from(at.map((i) => rows[i].s.slot)), sel);
        this.stats.endsMs += performance.now() - t;
        for (let i = 0; i < at.length; i++) {
          const r = rows[at[i]];
          const s = r.s;
          if (r.drafts !== undefined) {
            // Verification: row i + j predicts what follows drafts[j - 1]; keep drafts while they match.
            const k = r.drafts.length;
            let j = 0;
            while (j < k && !got.eog[i + j] && got.tokens[i + j] === r.drafts[j]) j++;
            this.stats.drafted += k;
            this.stats.accepted += j;
            s.cached = r.pos + 1 + j;
            if (j < k) void path.drop(s.slot, s.cached).catch(() => {}); // rejected positions leave every stage
            for (let a = 0; a < j && !s.finished; a++) this.accept(s, r.drafts[a], false);
            if (!s.finished) {
              s.embedAt = s.tokens.length;
              s.embedded = got.hidden.subarray((i + j) * n, (i + j) * n + n);
              this.accept(s, got.tokens[i + j], got.eog[i + j]);
            }
            i += k;
            continue;
          }
          s.embedAt = s.tokens.length; // where the sampled token will sit
          s.embedded = got.hidden.subarray(i * n, i * n + n);
          this.accept(s, got.tokens[i], got.eog[i]);
        }
      } catch (err) {
        if (this.closed) return;
        await this.recover(path, err as Error);
      }
    }
  }

  /**
   * Prompt lookup: the longest recent n-gram (ngram down to 1 tokens) that ends the sequence and occurred
   * before predicts what follows it. Only for greedy requests (sampling would need the speculative
   * sampling rule), never past max_tokens or the context, and within the pass's free rows.
   */
  private draftFor(s: Seq, room: number): number[] {
    const d = this.o.draft;
    if (d === undefined || s.req.sampling.temperature > 0) return [];
    const k = Math.min(d.k, room, s.req.maxTokens - s.generated.length - 1, (this.o.ctx ?? Infinity) - s.tokens.length - 1);
    if (k <= 0) return [];
    const t = s.tokens;
    // The most recent match that still has k tokens after it (a recent match near the end has fewer).
    for (let n = Math.min(d.ngram ?? 3, t.length - 1); n >= 1; n--) {
      let best: number[] = [];
      for (let at = t.length - n - 1; at >= 0 && best.length < k; at--) {
        let same = true;
        for (let i = 0; i < n && same; i++) same = t[at + i] === t[t.length - n + i];
        if (!same) continue;
        const next = t.slice(at + n, Math.min(at + n + k, t.length));
        if (next.length > best.length) best = next;
      }
      if (best.length > 0) return best;
    }
    return [];
  }

  private accept(s: Seq, token: number, eog: boolean): void {
    if (s.finished) return;
    if (eog) { this.finish(s, 'stop'); return; }
    s.generated.push(token);
    s.tokens.push(token);
    s.req.onToken?.(token);
    if (s.generated.length >= s.req.maxTokens || (this.o.ctx !== undefined && s.tokens.length >= this.o.ctx)) this.finish(s, 'length');
  }

  private finish(s: Seq, finish: ChainResult['finish'] | undefined, err?: Error): void {
    if (s.finished) return;
    s.finished = true;
    this.active.delete(s.slot);
    const slot = s.slot;
    void Promise.allSettled([this.path.drop(slot), this.o.ends.freeSampler(slot)]).then(() => {
      this.free.push(slot);
      this.admit();
    });
    if (err || !finish) s.fail(err ?? new StageError('request failed'));
    else s.done({ tokens: s.generated, finish, repairs: s.repairs });
  }

  /** A path that breaks while idle is repaired at once, not when the next request finds it broken. */
  private watch(path: ChainPath): void {
    path.onBroken?.((err) => { void this.recover(path, err).catch(() => {}); });
  }

  /** One repair for all lanes: the first lane to see the failure builds the new path, the rest wait for it. */
  private async recover(failed: ChainPath, err: Error): Promise<void> {
    if (this.closed || this.path !== failed) return; // closing, or another lane already repaired it
    if (!this.repairing) {
      this.repairing = (async () => {
        const victims = [...this.active.values()];
        if (!this.o.repair) {
          for (const s of victims) this.finish(s, undefined, err);
          return;
        }
        try {
          const next = await this.o.repair(failed, err);
          void failed.close().catch(() => {});
          // Stages that survive into the new path may still hold these slots: clear them, then every
          // sequence is prefilled again from the head's copy of its tokens.
          await Promise.all(victims.map((s) => next.drop(s.slot)));
          this.path = next;
          this.watch(next);
          for (const s of victims) { s.cached = 0; s.repairs++; }
        } catch (e) {
          for (const s of victims) this.finish(s, undefined, new StageError(`chain failed (${err.message}) and could not be repaired: ${(e as Error).message}`));
        }
      })().finally(() => { this.repairing = undefined; });
    }
    await this.repairing;
  }
}
