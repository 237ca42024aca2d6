// The chain engine over libp2p. Per step the head sends a micro-batch's hidden states to stage 1,
// stage 1 computes its layers and sends the result straight to stage 2, …, and the last stage sends
// the final hidden states back to the head: k + 1 one-way legs instead of the star's 2k, and only
// hidden states on the wire (logits stay at the head, see chain.ts).
//
// /clawmesh/stage/1 carries a route: the first frame is SETUP {signed ticket, index}. A stage checks
// the ticket (protocols/chain.ts: head signature, expiry, the sender is the hop before it), then its
// own contract with that head (ContractBook.checkAccess: both signatures, model, active, unexpired)
// and that the contract's layers are the hop's; only then does it open the stream to the next hop.
// /clawmesh/stage-return/1 carries the last hop's results back to the head, checked the same way.
// A stage that refuses or fails sends ERROR upstream, naming itself; every stage passes errors from
// downstream on, so the head always learns which hop broke and why.
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Connection, PeerId, PrivateKey, Stream } from '@libp2p/interface';
import { peerIdFromString } from '@libp2p/peer-id';
import { signChainTicket, verifyChainTicket, type ChainHop, type SignedChainTicket } from '../../protocols/chain.ts';
import type { Host } from '../node/host.ts';
import type { Logger } from '../log.ts';
import type { Store } from '../store/store.ts';
import { ContractBook, verifyMarketContract, type ContractVerifier } from './contracts.js';
import { DelayLine, type LinkShape } from './splice.js';
import { StageProcess } from './stage-proc.js';
import { writeStageGguf } from './stage-gguf.js';
import { fetchStageWeights } from './stage-weights.js';
import { sha256File } from './catalog.js';
import type { ChainPath } from './chain.js';

export const STAGE_PROTOCOL = '/clawmesh/stage/1';
export const STAGE_RETURN_PROTOCOL = '/clawmesh/stage-return/1';

const enum Frame {
  Setup = 1,
  Step = 2,
  Drop = 3,
  Error = 4,
}

/** A step of 512 rows of 8192 floats is 16 MiB; anything past this bound is refused unread. */
const MAX_FRAME = 64 << 20;
/** Until a link's route is checked, a frame is a setup (a ticket): a stranger cannot make us buffer more. */
const SETUP_FRAME = 64 << 10;
/** Steps a hop may send ahead while the route is still being set up. */
const MAX_EARLY_STEPS = 64;

export class ChainBroken extends Error {
  constructor(readonly hop: number | undefined, readonly peer: string | undefined, reason: string) {
    super(reason);
    this.name = 'ChainBroken';
  }
}

/** Frames over a libp2p stream: u32 length (big-endian), u8 type, payload. */
export class FrameLink {
  sent = 0;
  received = 0;
  /** Also counted here (a stage's per-contract totals, across the links of every session). */
  tally: { sent: number; received: number } | undefined;
  private chunks: Buffer[] = [];
  private buffered = 0;
  private readonly line: DelayLine;
  private closedWith: Error | undefined | null = null; // null: open
  /** Largest frame accepted; raised once the route is checked. */
  maxFrame = MAX_FRAME;

  constructor(readonly stream: Stream, readonly label: string, handlers: { frame: (type: number, payload: Buffer) => void; close: (err?: Error) => void }, shape: LinkShape = {}) {
    this.line = new DelayLine(shape, (b) => {
      try { stream.send(b); } catch (err) { stream.abort(err as Error); }
    });
    stream.addEventListener('message', (evt) => {
      const chunk = evt.data instanceof Uint8Array ? evt.data : evt.data.subarray();
      this.received += chunk.byteLength;
      if (this.tally) this.tally.received += chunk.byteLength;
      // Chunks are joined once a whole frame is there, not on every chunk (a step of 8 rows of a
      // 4096-wide model arrives in several).
      this.chunks.push(Buffer.from(chunk)); // a copy: the transport's buffer is not ours to keep
      this.buffered += chunk.byteLength;
      while (this.buffered >= 5) {
        if (this.chunks[0].length < 5) this.chunks = [Buffer.concat(this.chunks)];
        const len = this.chunks[0].readUInt32BE(0);
        if (len < 1 || len > this.maxFrame) { this.abort(new Error(`${label}: frame of ${len} bytes is outside 1..${this.maxFrame}`)); return; }
        if (this.buffered < 4 + len) break;
        if (this.chunks[0].length < 4 + len) this.chunks = [Buffer.concat(this.chunks)];
        const head = this.chunks[0];
        const type = head[4];
        const payload = head.subarray(5, 4 + len);
        if (head.length === 4 + len) this.chunks.shift();
        else this.chunks[0] = head.subarray(4 + len);
        this.buffered -= 4 + len;
        handlers.frame(type, payload);
      }
    });
    stream.addEventListener('close', (evt) => {
      if (this.closedWith !== null) return;
      this.closedWith = evt.error;
      handlers.close(evt.error);
    });
  }

  get open(): boolean {
    return this.closedWith === null;
  }

  send(type: number, ...parts: Uint8Array[]): void {
    const len = 1 + parts.reduce((n, p) => n + p.byteLength, 0);
    const out = Buffer.alloc(4 + len);
    out.writeUInt32BE(len, 0);
    out[4] = type;
    let o = 5;
    for (const p of parts) { out.set(p, o); o += p.byteLength; }
    this.sent += out.length;
    if (this.tally) this.tally.sent += out.length;
    this.line.push(out);
  }

  sendJson(type: number, value: unknown): void {
    this.send(type, Buffer.from(JSON.stringify(value), 'utf8'));
  }

  setShape(shape: LinkShape): void {
    this.line.setShape(shape);
  }

  close(): void {
    void this.stream.close().catch((err: Error) => this.stream.abort(err));
  }

  abort(err: Error): void {
    this.stream.abort(err);
  }
}

/** STEP payload: u32 step, u32 n, n×i32 seq, n×i32 pos, n×n_embd f32. */
function encodeStep(step: number, seqs: Int32Array, pos: Int32Array, hidden: Float32Array): Uint8Array[] {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(step >>> 0, 0);
  h.writeUInt32LE(seqs.length, 4);
  return [h, view(seqs), view(pos), view(hidden)];
}

function decodeStep(p: Buffer, nEmbd: number): { step: number; seqs: Int32Array; pos: Int32Array; hidden: Float32Array } {
  if (p.length < 8) throw new Error('step frame is too short');
  const step = p.readUInt32LE(0);
  const n = p.readUInt32LE(4);
  if (p.length !== 8 + n * 8 + n * nEmbd * 4) throw new Error(`step of ${n} rows has ${p.length} bytes, expected ${8 + n * 8 + n * nEmbd * 4}`);
  const copy = p.buffer.slice(p.byteOffset + 8, p.byteOffset + p.length); // aligned copy
  return { step, seqs: new Int32Array(copy, 0, n), pos: new Int32Array(copy, 4 * n, n), hidden: new Float32Array(copy, 8 * n, n * nEmbd) };
}

function view(a: Int32Array | Float32Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

interface SetupFrame {
  ticket: SignedChainTicket;
  index: number;
  /** Link emulation the head asks every hop to apply to what it sends (benchmarks only; default none). */
  shape?: LinkShape;
}

// ---------------------------------------------------------------------------------------------
// Worker side

export interface StageServerOptions {
  host: Host;
  store: Store;
  peerId: PeerId;
  /** The stage program (ensureStageBinary()). */
  bin: string;
  /** A full copy of the model with this SHA-256, if this machine has one (its stage files are cut from it, nothing is fetched). */
  modelFile: (sha256: string) => string | undefined | Promise<string | undefined>;
  /** Where stage files are kept, named by model and range, across restarts. */
  cacheDir: string;
  threads?: number;
  /** Sequence slots and rows per pass of each stage process. */
  seqs?: number;
  batch?: number;
  ctx?: number;
  verify?: ContractVerifier;
  log?: Logger;
  /** How often stage processes of contracts that are over are stopped (default 5 s). */
  sweepMs?: number;
}

export interface StageMeter {
  contract: string;
  head: string;
  /** Rows (token positions) this stage computed under the contract: its own count, not the head's claim. */
  tokens: number;
  steps: number;
  /** When rows were last counted (ms): the receipt audit judges a shortfall only once the stage is quiet. */
  lastAt: number;
  /** Milliseconds from handing a step to the stage process to its answer (compute, plus queueing when steps overlap). */
  busyMs: number;
}

export class StageServer {
  readonly refusals: Array<{ at: number; peer: string; reason: string }> = [];
  private readonly procs = new Map<string, Promise<StageProcess>>();
  private readonly meters = new Map<string, StageMeter>();
  private readonly suspended = new Map<string, string>();
  private readonly tallies = new Map<string, { contract: string; in: { sent: number; received: number }; out: { sent: number; received: number } }>();
  private readonly book: ContractBook;
  private stopped = false;
  private sweeper: NodeJS.Timeout | undefined;

  private constructor(private readonly o: StageServerOptions) {
    this.book = new ContractBook(o.store, o.verify ?? verifyMarketContract);
  }

  static async start(o: StageServerOptions): Promise<StageServer> {
    mkdirSync(o.cacheDir, { recursive: true });
    const s = new StageServer(o);
    await o.host.handle(STAGE_PROTOCOL, (stream, conn) => { void s.onStream(stream, conn); }, { maxInboundStreams: 64 });
    // A contract that ended, broke, lapsed or expired gives its memory back: its stage process goes.
    s.sweeper = setInterval(() => { void s.sweep().catch((err: Error) => o.log?.warn('stage sweep failed', { error: err.message })); }, o.sweepMs ?? 5000);
    s.sweeper.unref();
    return s;
  }

  /** Stops the stage processes of contracts that are no longer active and unexpired; returns their ids. */
  async sweep(now = Date.now()): Promise<string[]> {
    const released: string[] = [];
    for (const contract of [...this.procs.keys()]) {
      const c = await this.book.get(contract);
      if (c !== undefined && c.status === 'active' && c.expiresAt > now) continue;
      const p = this.procs.get(contract);
      this.procs.delete(contract);
      await p?.then((proc) => proc.stop()).catch(() => {});
      this.o.log?.info('contract over; its stage process is gone', { contract, status: c?.status ?? 'unknown' });
      released.push(contract);
    }
    return released;
  }

  meter(): StageMeter[] {
    return [...this.meters.values()].map((m) => ({ ...m }));
  }

  /**
   * Stops serving a contract whose head cheated on it (the receipt audit's verdict): its stage process
   * goes and every later setup under it is refused with the reason.
   */
  suspend(contract: string, reason: string): void {
    this.suspended.set(contract, reason);
    const p = this.procs.get(contract);
    this.procs.delete(contract);
    void p?.then((proc) => proc.stop()).catch(() => {});
  }

  /** This stage's own count for a contract, as the receipt audit asks it (runtime/ledger/audit.ts). */
  counted(contract: string): { rows: number; lastAt: number } | undefined {
    const m = this.meters.get(contract);
    return m === undefined ? undefined : { rows: m.tokens, lastAt: m.lastAt };
  }

  /**
   * Bytes per contract over every session so far: `received` is what came in from the hop before
   * (hidden states and control frames), `sent` what this stage sent on to the next hop (or the head).
   * Frame bytes, without libp2p's own framing (yamux, noise).
   */
  traffic(): Array<{ contract: string; received: number; sent: number }> {
    return [...this.tallies.values()].map((t) => ({ contract: t.contract, received: t.in.received, sent: t.out.sent }));
  }

  /** The stage process serving a contract (tests kill it to play a crash). */
  async processFor(contract: string): Promise<StageProcess | undefined> {
    return await this.procs.get(contract);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.sweeper);
    await this.o.host.unhandle(STAGE_PROTOCOL).catch(() => {});
    const all = [...this.procs.values()];
    this.procs.clear();
    await Promise.allSettled(all.map(async (p) => (await p).stop()));
  }

  private refuse(link: FrameLink, peer: string, hop: number | undefined, reason: string): void {
    this.refusals.push({ at: Date.now(), peer, reason });
    if (this.refusals.length > 100) this.refusals.shift();
    this.o.log?.warn('refused a stage stream', { peer, reason });
    link.sendJson(Frame.Error, { hop, peer: this.o.peerId.toString(), reason });
    link.close();
  }

  private async onStream(stream: Stream, conn: Connection): Promise<void> {
    const from = conn.remotePeer.toString();
    let setup: ((f: SetupFrame) => void) | undefined;
    let up: FrameLink | undefined;
    let down: FrameLink | undefined;
    let proc: StageProcess | undefined;
    let hopIndex: number | undefined;
    let meter: StageMeter | undefined;
    const me = this.o.peerId.toString();
    const pending: Buffer[] = []; // steps that arrived while the route was being set up
    let ready = false;
    /** Tells the head (through the hops before) what broke; `blame` is the hop at fault, default this one. */
    const fail = (reason: string, blame: { hop?: number; peer?: string } = { hop: hopIndex, peer: me }) => {
      if (up?.open) { up.sendJson(Frame.Error, { ...blame, reason }); up.close(); }
      down?.close();
    };
    const handle = (type: number, p: Buffer) => {
      if (!proc || !down) return;
      if (type === Frame.Step) {
        let step: ReturnType<typeof decodeStep>;
        try { step = decodeStep(p, proc.info.n_embd); } catch (err) { fail(`bad step: ${(err as Error).message}`); return; }
        const d = down;
        const t0 = performance.now();
        proc.eval(step.seqs, step.pos, step.hidden).then(
          (out) => {
            meter!.tokens += step.seqs.length;
            meter!.steps++;
            meter!.lastAt = Date.now();
            meter!.busyMs += performance.now() - t0;
            if (d.open) d.send(Frame.Step, ...encodeStep(step.step, step.seqs, step.pos, out));
          },
          (err: Error) => fail(`stage ${hopIndex} (${me}) failed: ${err.message}`),
        );
      } else if (type === Frame.Drop) {
        if (p.length < 4) { fail('bad drop frame'); return; }
        const seq = p.readInt32LE(0);
        const from = p.length >= 8 ? p.readInt32LE(4) : -1;
        proc.seqRm(seq, from, -1).catch(() => {});
        if (down.open) down.send(Frame.Drop, p);
      }
    };
    up = new FrameLink(stream, `stage from ${from}`, {
      frame: (type, p) => {
        if (type === Frame.Setup && setup) {
          try { setup(JSON.parse(p.toString('utf8')) as SetupFrame); } catch (err) { this.refuse(up!, from, undefined, `bad setup: ${(err as Error).message}`); }
          setup = undefined;
          return;
        }
        if (!ready) {
          if (pending.length >= MAX_EARLY_STEPS) { up!.abort(new Error(`more than ${MAX_EARLY_STEPS} frames before the route was checked`)); return; }
          pending.push(Buffer.concat([Buffer.from([type]), p]));
          return;
        }
        handle(type, p);
      },
      close: () => { down?.close(); },
    });
    up.maxFrame = SETUP_FRAME;
    const f = await new Promise<SetupFrame | undefined>((resolve) => {
      setup = resolve;
      setTimeout(() => resolve(undefined), 10_000).unref();
    });
    if (!f) { this.refuse(up, from, undefined, 'no setup frame within 10 s'); return; }
    if (this.stopped) { this.refuse(up, from, f.index, 'this stage is stopping'); return; }
    const v = await verifyChainTicket(f.ticket, { index: f.index, from });
    if (!v.ok) { this.refuse(up, from, f.index, v.reason); return; }
    const t = v.ticket;
    hopIndex = f.index;
    if (f.index >= t.route.length) { this.refuse(up, from, f.index, `hop ${f.index} is the head's return leg, not a stage`); return; }
    const hop = t.route[f.index];
    if (hop.peer !== me) { this.refuse(up, from, f.index, `hop ${f.index} is ${hop.peer}, not this node`); return; }
    const held = this.suspended.get(hop.contract);
    if (held !== undefined) { this.refuse(up, from, f.index, `contract ${hop.contract} is suspended on this worker: ${held}`); return; }
    const access = await this.book.checkAccess({ contractId: hop.contract, worker: me, head: t.head, modelSha256: t.model });
    if (!access.ok) { this.refuse(up, from, f.index, access.reason); return; }
    if (access.contract.layerStart !== hop.start || access.contract.layerEnd !== hop.end) {
      this.refuse(up, from, f.index, `contract ${hop.contract} covers layers [${access.contract.layerStart}, ${access.contract.layerEnd}), the ticket asks [${hop.start}, ${hop.end})`);
      return;
    }
    try {
      proc = await this.stageFor(hop, t.model, t.head);
    } catch (err) {
      this.refuse(up, from, f.index, `cannot start the stage: ${(err as Error).message}`);
      return;
    }
    meter = this.meters.get(hop.contract) ?? { contract: hop.contract, head: t.head, tokens: 0, steps: 0, lastAt: 0, busyMs: 0 };
    this.meters.set(hop.contract, meter);
    const tally = this.tallies.get(hop.contract) ?? { contract: hop.contract, in: { sent: 0, received: 0 }, out: { sent: 0, received: 0 } };
    this.tallies.set(hop.contract, tally);
    up.tally = tally.in;
    const last = f.index === t.route.length - 1;
    const next = last ? t.head : t.route[f.index + 1].peer;
    try {
      const s = await this.o.host.dialProtocol(peerIdFromString(next), last ? STAGE_RETURN_PROTOCOL : STAGE_PROTOCOL, { signal: AbortSignal.timeout(10_000) });
      down = new FrameLink(s, `stage to ${next}`, {
        frame: (type, p) => {
          // Errors from further down travel up unchanged: they already name their hop.
          if (type === Frame.Error && up!.open) { up!.send(Frame.Error, p); up!.close(); }
        },
        // The next hop went away (a stage that fails says so itself, with an error frame first).
        close: (err) => { if (up!.open) fail(`the link from hop ${f.index} to ${last ? 'the head' : `hop ${f.index + 1}`} (${next}) closed${err ? `: ${err.message}` : ''}`, last ? {} : { hop: f.index + 1, peer: next }); },
      }, f.shape);
      down.tally = tally.out;
      down.sendJson(Frame.Setup, { ticket: f.ticket, index: f.index + 1, shape: f.shape } satisfies SetupFrame);
    } catch (err) {
      fail(`hop ${f.index} (${me}) cannot reach ${last ? 'the head' : `hop ${f.index + 1}`} ${next}: ${(err as Error).message}`, last ? {} : { hop: f.index + 1, peer: next });
      return;
    }
    up.setShape(f.shape ?? {});
    // Now a step may be as large as this stage's batch allows, and no larger.
    up.maxFrame = 9 + 8 * proc.info.n_batch + 4 * proc.info.n_batch * proc.info.n_embd;
    ready = true;
    this.o.log?.info('stage hop joined a chain', { hop: f.index, of: t.route.length, layers: `${hop.start}-${hop.end - 1}`, contract: hop.contract, next });
    for (const b of pending.splice(0)) handle(b[0], b.subarray(1));
  }

  /**
   * One stage process per contract, started on first use. Its stage file is the one the ticket names
   * by hash: found on disk, cut from this node's own copy of the model (the cut is deterministic), or
   * fetched from the head.
   */
  private stageFor(hop: ChainHop, model: string, head: string): Promise<StageProcess> {
    let p = this.procs.get(hop.contract);
    if (p === undefined) {
      p = (async () => {
        const file = await this.stageFile(hop, model, head);
        const proc = await StageProcess.start({ bin: this.o.bin, model: file, role: 'stage', threads: this.o.threads, seqs: this.o.seqs, batch: this.o.batch, ctx: this.o.ctx });
        proc.child.once('exit', () => { if (this.procs.get(hop.contract) === p) this.procs.delete(hop.contract); });
        return proc;
      })();
      p.catch(() => { if (this.procs.get(hop.contract) === p) this.procs.delete(hop.contract); });
      this.procs.set(hop.contract, p);
    }
    return p;
  }

  private async stageFile(hop: ChainHop, model: string, head: string): Promise<string> {
    const src = await this.o.modelFile(model);
    const cut = join(this.o.cacheDir, `${model.slice(0, 16)}-${hop.start}-${hop.end}.gguf`);
    if (hop.weights === undefined) {
      if (src === undefined) throw new Error(`this node holds no copy of model ${model.slice(0, 12)}… and the ticket names no weights for layers ${hop.start}-${hop.end - 1}`);
      if (!existsSync(cut)) writeStageGguf(src, cut, { start: hop.start, end: hop.end });
      return cut;
    }
    const byHash = join(this.o.cacheDir, `${hop.weights}.gguf`);
    if (existsSync(byHash)) return byHash;
    if (src !== undefined) {
      if (!existsSync(cut)) writeStageGguf(src, cut, { start: hop.start, end: hop.end });
      if ((await sha256File(cut)) === hop.weights) { renameSync(cut, byHash); return byHash; }
      this.o.log?.warn('own cut of the model differs from the head\'s stage file; fetching the head\'s', { layers: `${hop.start}-${hop.end - 1}` });
    }
    const t0 = Date.now();
    const path = await fetchStageWeights(this.o.host, peerIdFromString(head), { model, start: hop.start, end: hop.end, contract: hop.contract, sha256: hop.weights }, this.o.cacheDir);
    this.o.log?.info('received stage weights', { layers: `${hop.start}-${hop.end - 1}`, ms: Date.now() - t0 });
    return path;
  }
}

// ---------------------------------------------------------------------------------------------
// Head side

export interface ChainClientOptions {
  host: Host;
  key: PrivateKey;
  peerId: PeerId;
  log?: Logger;
}

/** Opens routes for the head and receives their return legs. */
export class ChainClient {
  private readonly sessions = new Map<string, NetPath>();

  private constructor(private readonly o: ChainClientOptions) {}

  static async start(o: ChainClientOptions): Promise<ChainClient> {
    const c = new ChainClient(o);
    await o.host.handle(STAGE_RETURN_PROTOCOL, (stream, conn) => { c.onReturn(stream, conn); }, { maxInboundStreams: 64 });
    return c;
  }

  async stop(): Promise<void> {
    await this.o.host.unhandle(STAGE_RETURN_PROTOCOL).catch(() => {});
    for (const s of this.sessions.values()) await s.close();
  }

  /**
   * Signs a ticket for `route`, sets the chain up and resolves once the last hop's return leg has
   * arrived (every hop accepted), or rejects with the first refusal, naming its hop.
   */
  async open(q: { model: string; route: ChainHop[]; nEmbd: number; shape?: LinkShape; ttlMs?: number; stallMs?: number; setupMs?: number }): Promise<NetPath> {
    const ticket = await signChainTicket(this.o.key, {
      v: 1, session: randomUUID().replace(/-/g, ''), head: this.o.peerId.toString(), model: q.model, route: q.route, expires: Date.now() + (q.ttlMs ?? 3600_000),
    });
    const first = q.route[0].peer;
    let stream: Stream;
    try {
      stream = await this.o.host.dialProtocol(peerIdFromString(first), STAGE_PROTOCOL, { signal: AbortSignal.timeout(10_000) });
    } catch (err) {
      throw new ChainBroken(0, first, `cannot reach the first hop ${first}: ${(err as Error).message}`);
    }
    const path = new NetPath(ticket, q.nEmbd, q.stallMs ?? 30_000, () => this.sessions.delete(ticket.ticket.session));
    this.sessions.set(ticket.ticket.session, path);
    path.attachOut(stream, q.shape);
    path.out!.sendJson(Frame.Setup, { ticket, index: 0, shape: q.shape } satisfies SetupFrame);
    await path.whenReady(q.setupMs ?? 60_000);
    return path;
  }

  private onReturn(stream: Stream, conn: Connection): void {
    const from = conn.remotePeer.toString();
    let path: NetPath | undefined;
    let setupSeen = false;
    const link: FrameLink = new FrameLink(stream, `return from ${from}`, {
      frame: (type, p) => {
        if (path) { path.onReturnFrame(type, p); return; }
        if (setupSeen || type !== Frame.Setup) return; // nothing flows before the leg is accepted
        setupSeen = true;
        void (async () => {
          const f = JSON.parse(p.toString('utf8')) as SetupFrame;
          const v = await verifyChainTicket(f.ticket, { index: f.index, from });
          const mine = v.ok ? this.sessions.get(v.ticket.session) : undefined;
          if (!v.ok || mine === undefined || v.ticket.head !== this.o.peerId.toString() || f.index !== v.ticket.route.length) {
            link.sendJson(Frame.Error, { reason: v.ok ? 'no such chain at this head' : v.reason });
            link.close();
            return;
          }
          path = mine;
          link.maxFrame = MAX_FRAME; // a checked last hop of our own route
          mine.attachReturn(link);
        })().catch((err: Error) => link.abort(new Error(`bad return setup: ${err.message}`)));
      },
      close: (err) => path?.fail(new ChainBroken(undefined, from, `the return leg from the last hop (${from}) closed${err ? `: ${err.message}` : ''}`)),
    });
    link.maxFrame = SETUP_FRAME;
  }
}

export class NetPath implements ChainPath {
  out: FrameLink | undefined;
  private ret: FrameLink | undefined;
  private step = 0;
  private readonly waiting = new Map<number, { resolve: (h: Float32Array) => void; reject: (e: Error) => void; at: number }>();
  private broken: ChainBroken | undefined;
  private readyWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private stallTimer: NodeJS.Timeout;
  private closing = false;
  private readonly brokenListeners: Array<(err: Error) => void> = [];

  constructor(readonly ticket: SignedChainTicket, private readonly nEmbd: number, private readonly stallMs: number, private readonly onClose: () => void) {
    this.stallTimer = setInterval(() => {
      const oldest = Math.min(...[...this.waiting.values()].map((w) => w.at));
      if (Number.isFinite(oldest) && Date.now() - oldest > this.stallMs) this.fail(new ChainBroken(undefined, undefined, `a step got no answer within ${this.stallMs} ms: the chain stalled`));
    }, Math.max(250, Math.min(this.stallMs / 4, 2000)));
    this.stallTimer.unref();
  }

  get route(): ChainHop[] {
    return this.ticket.ticket.route;
  }

  attachOut(stream: Stream, shape?: LinkShape): void {
    this.out = new FrameLink(stream, `chain to ${this.route[0].peer}`, {
      frame: (type, p) => {
        if (type !== Frame.Error) return;
        let e: { hop?: number; peer?: string; reason?: string } = {};
        try { e = JSON.parse(p.toString('utf8')); } catch { /* keep the default */ }
        this.fail(new ChainBroken(e.hop, e.peer, e.reason ?? 'a stage failed'));
      },
      close: (err) => this.fail(new ChainBroken(0, this.route[0].peer, `the link to the first hop (${this.route[0].peer}) closed${err ? `: ${err.message}` : ''}`)),
    }, shape);
  }

  attachReturn(link: FrameLink): void {
    this.ret = link;
    for (const w of this.readyWaiters.splice(0)) w.resolve();
  }

  whenReady(timeoutMs: number): Promise<void> {
    if (this.ret) return Promise.resolve();
    if (this.broken) return Promise.reject(this.broken);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new ChainBroken(undefined, undefined, `the chain was not set up within ${timeoutMs} ms`)), timeoutMs);
      this.readyWaiters.push({ resolve: () => { clearTimeout(timer); resolve(); }, reject: (e) => { clearTimeout(timer); reject(e); } });
    });
  }

  onReturnFrame(type: number, p: Buffer): void {
    if (type === Frame.Error) {
      let e: { hop?: number; peer?: string; reason?: string } = {};
      try { e = JSON.parse(p.toString('utf8')); } catch { /* keep the default */ }
      this.fail(new ChainBroken(e.hop, e.peer, e.reason ?? 'the head refused the return leg'));
      return;
    }
    if (type !== Frame.Step) return;
    let s: ReturnType<typeof decodeStep>;
    try { s = decodeStep(p, this.nEmbd); } catch (err) { this.fail(new ChainBroken(this.route.length - 1, this.route.at(-1)!.peer, `bad result: ${(err as Error).message}`)); return; }
    const w = this.waiting.get(s.step);
    if (!w) return;
    this.waiting.delete(s.step);
    w.resolve(s.hidden);
  }

  forward(seqs: Int32Array, positions: Int32Array, hidden: Float32Array): Promise<Float32Array> {
    if (this.broken) return Promise.reject(this.broken);
    const step = ++this.step;
    return new Promise((resolve, reject) => {
      this.waiting.set(step, { resolve, reject, at: Date.now() });
      this.out!.send(Frame.Step, ...encodeStep(step, seqs, positions, hidden));
    });
  }

  /** DROP payload: i32 seq, i32 from (-1: the whole sequence). Sent in order with the steps, so it lands before the next. */
  async drop(seq: number, from = -1): Promise<void> {
    if (this.broken || !this.out?.open) return;
    const b = Buffer.alloc(8);
    b.writeInt32LE(seq, 0);
    b.writeInt32LE(from, 4);
    this.out.send(Frame.Drop, b);
  }

  onBroken(listener: (err: Error) => void): void {
    if (this.broken && !this.closing) { listener(this.broken); return; }
    this.brokenListeners.push(listener);
  }

  fail(err: ChainBroken): void {
    if (this.broken) return;
    this.broken = err;
    if (!this.closing) for (const l of this.brokenListeners.splice(0)) queueMicrotask(() => l(err));
    clearInterval(this.stallTimer);
    for (const w of this.waiting.values()) w.reject(err);
    this.waiting.clear();
    for (const w of this.readyWaiters.splice(0)) w.reject(err);
    this.out?.close();
    this.ret?.close();
    this.onClose();
  }

  async close(): Promise<void> {
    this.closing = true;
    this.fail(new ChainBroken(undefined, undefined, 'closed by the head'));
  }

  traffic(): Array<{ link: string; sent: number; received: number }> {
    return [
      { link: `head → ${this.route[0].peer}`, sent: this.out?.sent ?? 0, received: this.out?.received ?? 0 },
      { link: `${this.route.at(-1)!.peer} → head`, sent: this.ret?.sent ?? 0, received: this.ret?.received ?? 0 },
    ];
  }
}
