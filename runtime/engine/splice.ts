// Joins two byte pipes (TCP sockets or libp2p streams) both ways, with backpressure, half-close,
// error propagation, byte counting and an optional per-chunk delay and bandwidth cap (home-link
// emulation: this kernel has no netem, so the link shape lives in user space).
import type { Socket } from 'node:net';
import type { Stream } from '@libp2p/interface';

/** What splice needs from either side. */
export interface Endpoint {
  readonly label: string;
  /** false = the sink is full: stop feeding it until onDrain fires. */
  write(buf: Uint8Array): boolean;
  onDrain(cb: () => void): void;
  pause(): void;
  resume(): void;
  /** Half-close: no more writes from us; reading goes on. */
  endWrite(): void;
  abort(err: Error): void;
  attach(h: { data(buf: Uint8Array): void; end(): void; close(err?: Error): void }): void;
}

export function socketEndpoint(socket: Socket, label: string): Endpoint {
  let lastError: Error | undefined;
  return {
    label,
    write: (buf) => socket.write(buf),
    onDrain: (cb) => { socket.once('drain', cb); },
    pause: () => { socket.pause(); },
    resume: () => { socket.resume(); },
    endWrite: () => { socket.end(); },
    abort: () => { socket.destroy(); },
    attach(h) {
      socket.on('data', (b: Buffer) => h.data(b));
      socket.on('end', () => h.end());
      socket.on('error', (e) => { lastError = e; });
      socket.on('close', (hadError) => h.close(hadError ? (lastError ?? new Error(`${label}: socket error`)) : undefined));
    },
  };
}

/**
 * A libp2p stream as an endpoint. Pausing is deferred to a microtask: yamux undoes a pause issued
 * synchronously inside a 'message' handler that resume() triggered (stack.md gotcha #3), and the
 * latest wish wins so a pause/resume pair in one tick cannot leave the stream stuck.
 */
export function streamEndpoint(stream: Stream, label: string): Endpoint {
  let wantPaused = false;
  const settle = () => {
    try {
      if (wantPaused) stream.pause();
      else stream.resume();
    } catch { /* closing: nothing left to throttle */ }
  };
  return {
    label,
    write(buf) {
      try {
        return stream.send(buf);
      } catch (err) {
        stream.abort(err as Error);
        return true;
      }
    },
    onDrain: (cb) => { stream.onDrain().then(cb, () => {}); },
    pause: () => { wantPaused = true; queueMicrotask(settle); },
    resume: () => { wantPaused = false; settle(); },
    endWrite: () => { stream.close().catch((err: Error) => stream.abort(err)); },
    abort: (err) => { stream.abort(err); },
    attach(h) {
      let ended = false;
      stream.addEventListener('message', (evt) => h.data(evt.data instanceof Uint8Array ? evt.data : evt.data.subarray()));
      stream.addEventListener('end', () => { if (!ended) { ended = true; h.end(); } });
      stream.addEventListener('close', (evt) => {
        // A graceful close can arrive without 'end' (nothing left unread): end first, then close.
        if (!evt.error && !ended) { ended = true; h.end(); }
        h.close(evt.error);
      });
    },
  };
}

/** Link emulation for one direction: propagation delay and an optional bandwidth cap. */
export interface LinkShape {
  /** One-way propagation delay added to every byte. */
  delayMs?: number;
  /** Serialisation rate in Mbit/s (10^6 bit/s); undefined or 0 = unlimited. */
  bandwidthMbit?: number;
  /** Token-bucket depth in bytes: what may leave at once after an idle spell (DEFAULT_BURST_BYTES). */
  burstBytes?: number;
}

/**
 * One packet: every message pays its serialisation time, as on a DSL line whose sync rate is the cap.
 * (Cable operators shape with deep buckets that would hide a star's few KiB a token entirely; the
 * conservative model is the one worth benchmarking against.)
 */
export const DEFAULT_BURST_BYTES = 1500;

/** Bytes a paced link delivers in one piece at most, so the receiver sees a stream, not rare big jumps. */
export const PACE_SLICE = 16 << 10;

/**
 * Holds every chunk `delayMs` before delivering it, in order; chunks are timestamped on arrival so
 * a delayed link keeps its bandwidth (a pipeline, not a sleep per chunk). With a bandwidth cap a
 * token bucket paces each direction: a byte may leave once the bucket holds a token for it, then
 * travels delayMs, the way a home uplink serialises bytes and the path adds latency after.
 */
export class DelayLine {
  private readonly queue: Array<{ due: number; buf: Uint8Array }> = [];
  private timer: NodeJS.Timeout | undefined;
  private onEmpty: (() => void) | undefined;
  private delayMs = 0;
  /** Bytes per millisecond, or 0 for unlimited. */
  private rate = 0;
  private burst = 0;
  /** Token bucket: tokens (bytes) available at time `at` (negative = debt, paid back at `rate`). */
  private tokens = 0;
  private at = performance.now();
  bytes = 0;

  constructor(shape: number | LinkShape, private readonly deliver: (buf: Uint8Array) => void) {
    this.setShape(typeof shape === 'number' ? { delayMs: shape } : shape);
  }

  /**
   * Changes the link's shape for bytes pushed from now on (benchmarks reshape a loaded pipeline
   * between runs instead of reloading the model). Bytes already queued keep their order.
   */
  setShape(s: LinkShape): void {
    this.delayMs = Math.max(0, s.delayMs ?? 0);
    this.rate = s.bandwidthMbit !== undefined && s.bandwidthMbit > 0 ? (s.bandwidthMbit * 1e6) / 8 / 1000 : 0;
    this.burst = Math.max(0, s.burstBytes ?? DEFAULT_BURST_BYTES);
    this.tokens = this.burst;
    this.at = performance.now();
  }

  push(buf: Uint8Array): void {
    if (this.rate === 0) {
      if (this.delayMs <= 0 && this.queue.length === 0) { this.deliver(buf); return; }
      this.enqueue(performance.now() + this.delayMs, buf);
      return;
    }
    // Pacing: spend tokens slice by slice; a slice leaves when the bucket is back to zero debt.
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + (now - this.at) * this.rate);
    this.at = now;
    for (let off = 0; off < buf.byteLength; off += PACE_SLICE) {
      const slice = buf.subarray(off, Math.min(buf.byteLength, off + PACE_SLICE));
      this.tokens -= slice.byteLength;
      const due = (this.tokens >= 0 ? now : now - this.tokens / this.rate) + this.delayMs;
      // Within the burst and no delay: deliver now. A timer, even of 0 ms, costs about a millisecond
      // per hop, which the star pays several times a token (measured: 174 -> 72 tok/s on 3 links).
      if (due <= now && this.queue.length === 0) this.deliver(slice);
      else this.enqueue(due, slice);
    }
  }

  private enqueue(due: number, buf: Uint8Array): void {
    this.queue.push({ due, buf });
    this.bytes += buf.byteLength;
    this.schedule();
  }

  /** Calls cb once everything queued so far has been delivered. */
  whenEmpty(cb: () => void): void {
    if (this.queue.length === 0) cb();
    else this.onEmpty = cb;
  }

  clear(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.length = 0;
    this.bytes = 0;
    this.onEmpty = undefined;
  }

  private schedule(): void {
    if (this.timer !== undefined || this.queue.length === 0) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const now = performance.now();
      while (this.queue.length > 0 && this.queue[0].due <= now + 0.5) {
        const { buf } = this.queue.shift()!;
        this.bytes -= buf.byteLength;
        this.deliver(buf);
      }
      if (this.queue.length === 0) {
        const cb = this.onEmpty;
        this.onEmpty = undefined;
        cb?.();
      }
      this.schedule();
    }, Math.max(0, this.queue[0].due - performance.now()));
  }
}

export interface SpliceResult {
  /** Set when the splice ended abnormally: an endpoint reset/errored, or `failIfEndsFirst` ended first. */
  error?: Error;
  /** Label of the endpoint the problem came from. */
  from?: string;
}

export interface SpliceOptions {
  /** One-way delay added each way (link emulation). */
  delayMs?: number;
  /** Bandwidth cap per direction, Mbit/s (link emulation; token-bucket paced, see DelayLine). */
  bandwidthMbit?: number;
  /** Bytes moved a → b and b → a, as they leave the source (for link meters). */
  onAtoB?: (n: number) => void;
  onBtoA?: (n: number) => void;
  /**
   * Treat this endpoint ending its side first as a failure. An RPC server never hangs up on its
   * client, so a worker-side end before the client's means the worker went away.
   */
  failIfEndsFirst?: 'a' | 'b';
  /** Max bytes held in a delay line before its source is paused. */
  highWaterMark?: number;
}

export interface Splice {
  done: Promise<SpliceResult>;
  /** Reshapes both directions' link emulation (see DelayLine.setShape). */
  setShape(shape: LinkShape): void;
  /** Tears both sides down now (used when the pipeline fails or stops). */
  abort(err: Error): void;
}

export function splice(a: Endpoint, b: Endpoint, o: SpliceOptions = {}): Splice {
  const hwm = o.highWaterMark ?? 4 << 20;
  let resolveDone!: (r: SpliceResult) => void;
  const done = new Promise<SpliceResult>((r) => { resolveDone = r; });
  let finished = false;
  const closed = { a: false, b: false };
  const ended = { a: false, b: false };
  const lines: DelayLine[] = [];

  const finish = (r: SpliceResult) => {
    if (finished) return;
    finished = true;
    for (const l of lines) l.clear();
    resolveDone(r);
  };
  const fail = (from: Endpoint, err: Error) => {
    if (finished) return;
    const other = from === a ? b : a;
    finish({ error: err, from: from.label });
    other.abort(err);
    from.abort(err);
  };

  const direction = (src: Endpoint, dst: Endpoint, side: 'a' | 'b', meter?: (n: number) => void) => {
    let waitingDrain = false;
    let heldByLine = false;
    const maybeResume = () => { if (!waitingDrain && !heldByLine) src.resume(); };
    const line = new DelayLine({ delayMs: o.delayMs, bandwidthMbit: o.bandwidthMbit }, (buf) => {
      if (finished) return;
      if (!dst.write(buf) && !waitingDrain) {
        waitingDrain = true;
        src.pause();
        dst.onDrain(() => { waitingDrain = false; maybeResume(); });
      }
      if (heldByLine && line.bytes < hwm / 2) { heldByLine = false; maybeResume(); }
    });
    lines.push(line);
    src.attach({
      data(buf) {
        if (finished) return;
        meter?.(buf.byteLength);
        line.push(buf);
        if (line.bytes > hwm && !heldByLine) { heldByLine = true; src.pause(); }
      },
      end() {
        if (finished || ended[side]) return;
        ended[side] = true;
        const otherSide = side === 'a' ? 'b' : 'a';
        if (o.failIfEndsFirst === side && !ended[otherSide]) {
          fail(src, new Error(`${src.label} closed the connection while its peer was still using it`));
          return;
        }
        line.whenEmpty(() => { if (!finished) dst.endWrite(); });
      },
      close(err) {
        closed[side] = true;
        if (err !== undefined) { fail(src, err); return; }
        if (!ended[side]) {
          // Closed without ending its data: an abrupt close (a destroyed socket, a dead process).
          const otherSide = side === 'a' ? 'b' : 'a';
          if (!ended[otherSide] || o.failIfEndsFirst === side) { fail(src, new Error(`${src.label} closed abruptly`)); return; }
        }
        if (closed.a && closed.b) finish({});
      },
    });
  };
  direction(a, b, 'a', o.onAtoB);
  direction(b, a, 'b', o.onBtoA);
  return { done, abort: (err) => fail(a, err), setShape: (shape) => { for (const l of lines) l.setShape(shape); } };
}
