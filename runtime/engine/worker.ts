// Worker (slice provider): serves its machine to contracted heads through /clawmesh/rpc/1 only.
//
// One rpc-server per active contract, started on the contract's first stream in a network
// namespace of its own where the machine allows (rpc-netns.ts; else on 127.0.0.1 at a free port,
// with a warning): ggml's rpc-server serves one client at a time and keeps that client's
// buffers, so sharing one process between heads would queue them behind each other and mix their
// allocations. Every stream is checked against the contract book before a byte reaches llama.cpp;
// refusals are answered with a reason, logged and kept in a short in-memory list. Past the gate,
// every byte goes through the contract's meter (rpc-guard.ts): a head that asks rpc-server for more
// memory or tensor-cache disk than its layers need is cut off, and its contract is suspended here.
import { mkdirSync } from 'node:fs';
import type { Connection, Stream } from '@libp2p/interface';
import type { MeshNode } from '../node/node.ts';
import type { Logger } from '../log.ts';
import { ContractBook, verifyMarketContract, type Contract, type ContractVerifier } from './contracts.js';
import { ContractMeter, RpcCapExceeded, RpcGuard, fmtBytes, limitsForLayers, type RpcLimits } from './rpc-guard.js';
import type { RpcServerHandle } from './llama-procs.js';
import { startContractRpcServer } from './rpc-netns.js';
import { socketEndpoint, splice, streamEndpoint, type Endpoint, type Splice } from './splice.js';
import { RPC_PROTOCOL, encodeFrame, readFrame, type Hello } from './tunnel.js';

export interface WorkerOptions {
  node: MeshNode;
  /** Path of ggml-rpc-server (ensureLlamaBuild().rpcServer). */
  rpcServerBin: string;
  threads?: number;
  /** rpc-server's tensor cache (-c) lives here (LLAMA_CACHE); default: llama.cpp's own (~/.cache/llama.cpp). */
  cacheDir?: string;
  /** Disable the tensor cache (it saves the transfer when a head reloads the same model). */
  noCache?: boolean;
  /** Checks each contract's document; default: the market's two-signature check. */
  verify?: ContractVerifier;
  log?: Logger;
  /** How long a head has to send its hello. */
  helloTimeoutMs?: number;
  /** How often rpc-servers of contracts that are over are released (default 5 s). */
  sweepMs?: number;
  /**
   * What a contract may make its rpc-server hold, or why that is unknown (the stream is then
   * refused). The agent's serve_slice derives it from the call for proposals the worker answered.
   */
  limits?: (c: Contract) => Promise<RpcLimits | string>;
  /** Bytes per layer assumed when `limits` is not given (tests, benchmarks, hand-written contracts). */
  layerBytes?: number;
  /**
   * Meter the ggml-rpc traffic (default true). Off only where something other than rpc-server
   * answers (the tunnel tests' byte echo): unmetered, a head can make rpc-server allocate anything.
   */
  meterRpc?: boolean;
}

export interface Refusal {
  at: number;
  peer: string;
  contractId?: string;
  reason: string;
}

export interface WorkerStatus {
  peerId: string;
  protocol: string;
  rpcServers: Array<{ contractId: string; endpoint: string; pid: number; isolation: 'netns' | 'loopback' }>;
  streams: number;
  refusals: number;
  /** Per contract: live buffers, the cap, the peak, cache writes and commands refused. */
  meters: Array<{ contractId: string; allocated: number; capBytes: number; peak: number; cached: number; cacheCapBytes: number; refused: number; rows: number; graphs: number }>;
}

export class SliceWorker {
  readonly refusals: Refusal[] = [];
  private readonly servers = new Map<string, Promise<RpcServerHandle>>();
  /** The same servers once started (status and tests need them synchronously). */
  private readonly ready = new Map<string, RpcServerHandle>();
  private readonly book: ContractBook;
  private readonly meters = new Map<string, ContractMeter>();
  /** Meters of released contracts, kept for their row counts until their receipts are settled. */
  private readonly retired = new Map<string, ContractMeter>();
  /** Contracts whose head broke their cap: later streams are refused with this reason. */
  private readonly suspended = new Map<string, string>();
  private readonly log: Logger;
  private streams = 0;
  private stopped = false;
  private sweeper: NodeJS.Timeout | undefined;

  private constructor(private readonly o: WorkerOptions) {
    this.book = new ContractBook(o.node.store, o.verify ?? verifyMarketContract);
    this.log = o.log ?? o.node.log.child('engine-worker');
  }

  /** Registers the protocol handler on a started node. */
  static async start(o: WorkerOptions): Promise<SliceWorker> {
    const host = o.node.host;
    if (host === undefined) throw new Error('start the mesh node before serving a slice');
    if (o.cacheDir !== undefined) mkdirSync(o.cacheDir, { recursive: true });
    const w = new SliceWorker(o);
    await host.handle(RPC_PROTOCOL, (stream, conn) => { void w.onStream(stream, conn); }, { maxInboundStreams: 64 });
    // A contract that ended, broke or lapsed gives its memory back: its rpc-server goes.
    w.sweeper = setInterval(() => { void w.sweep().catch((err: unknown) => w.log.warn('sweep failed', { error: (err as Error).message })); }, o.sweepMs ?? 5000);
    w.sweeper.unref();
    w.log.info('serving slices', { protocol: RPC_PROTOCOL });
    return w;
  }

  /** Releases the rpc-servers of contracts that are no longer active and unexpired. */
  async sweep(now = Date.now()): Promise<string[]> {
    const released: string[] = [];
    for (const contractId of [...this.servers.keys()]) {
      const c = await this.book.get(contractId);
      if (c !== undefined && c.status === 'active' && c.expiresAt > now) continue;
      this.log.info('contract over; releasing its rpc-server', { contract: contractId, status: c?.status ?? 'unknown' });
      await this.release(contractId);
      released.push(contractId);
    }
    return released;
  }

  status(): WorkerStatus {
    const rpcServers: WorkerStatus['rpcServers'] = [];
    for (const [contractId, h] of this.ready) rpcServers.push({ contractId, endpoint: h.endpoint, pid: h.pid, isolation: h.isolation });
    const meters = [...this.meters.values()].map((m) => ({
      contractId: m.contractId, allocated: m.allocated, capBytes: m.limits.allocBytes, peak: m.peakAllocated,
      cached: m.cached, cacheCapBytes: m.limits.cacheBytes, refused: m.refused, rows: m.rows, graphs: m.graphs,
    }));
    return { peerId: this.o.node.peerId.toString(), protocol: RPC_PROTOCOL, rpcServers, streams: this.streams, refusals: this.refusals.length, meters };
  }

  /**
   * Token rows this worker computed under a contract, from its own reading of the graphs it ran
   * (rpc-guard.ts graphRows), and when it last counted some: what the receipt audit asks
   * (runtime/ledger/work-meter.ts). Counts outlive the contract's rpc-server (receipts come after).
   */
  counted(contractId: string): { rows: number; lastAt: number } | undefined {
    const m = this.meters.get(contractId) ?? this.retired.get(contractId);
    return m === undefined ? undefined : { rows: m.rows, lastAt: m.lastAt };
  }

  /** Refuses the contract's later streams and cuts none in flight (the receipt audit caught its head). */
  suspend(contractId: string, reason: string): void {
    if (!this.suspended.has(contractId)) this.suspended.set(contractId, reason);
  }

  /** The running rpc-server of a contract, if any (tests kill it to simulate a crash). */
  rpcServerFor(contractId: string): RpcServerHandle | undefined {
    return this.ready.get(contractId);
  }

  /** Stops a contract's rpc-server (its contract ended); a later valid stream would start a new one. */
  async release(contractId: string): Promise<void> {
    const p = this.servers.get(contractId);
    this.servers.delete(contractId);
    this.ready.delete(contractId);
    const m = this.meters.get(contractId);
    if (m !== undefined) this.retired.set(contractId, m);
    this.meters.delete(contractId);
    this.suspended.delete(contractId);
    if (p !== undefined) await (await p).stop();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.sweeper);
    await this.o.node.host?.unhandle(RPC_PROTOCOL).catch(() => {});
    const all = [...this.servers.values()];
    this.servers.clear();
    await Promise.allSettled(all.map(async (p) => { await (await p).stop(); }));
  }

  private refuse(stream: Stream, peer: string, contractId: string | undefined, reason: string): void {
    this.refusals.push({ at: Date.now(), peer, contractId, reason });
    if (this.refusals.length > 100) this.refusals.shift();
    this.log.warn('refused an rpc stream', { peer, contract: contractId ?? '-', reason });
    try {
      stream.send(encodeFrame({ ok: false, reason }));
      void stream.close().catch(() => {});
    } catch {
      stream.abort(new Error(reason));
    }
  }

  private async onStream(stream: Stream, conn: Connection): Promise<void> {
    // The remote peer is authenticated by noise: it is the key that signed the handshake.
    const peer = conn.remotePeer.toString();
    let hello: Hello;
    try {
      hello = (await readFrame(stream, this.o.helloTimeoutMs ?? 10_000)) as Hello;
      if (typeof hello?.contractId !== 'string' || typeof hello?.modelSha256 !== 'string') throw new Error('hello lacks contractId or modelSha256');
    } catch (err) {
      this.refuse(stream, peer, undefined, `bad hello: ${(err as Error).message}`);
      return;
    }
    if (this.stopped) { this.refuse(stream, peer, hello.contractId, 'worker is stopping'); return; }
    const decision = await this.book.checkAccess({ contractId: hello.contractId, worker: this.o.node.peerId.toString(), head: peer, modelSha256: hello.modelSha256 });
    if (!decision.ok) { this.refuse(stream, peer, hello.contractId, decision.reason); return; }
    const breach = this.suspended.get(hello.contractId);
    if (breach !== undefined) { this.refuse(stream, peer, hello.contractId, `contract ${hello.contractId} is suspended on this worker: ${breach}`); return; }
    let meter: ContractMeter | undefined;
    if (this.o.meterRpc !== false) {
      try {
        meter = await this.meterFor(decision.contract);
      } catch (err) {
        this.refuse(stream, peer, hello.contractId, (err as Error).message);
        return;
      }
    }

    let rpc: RpcServerHandle;
    try {
      rpc = await this.rpcServer(hello.contractId);
    } catch (err) {
      this.refuse(stream, peer, hello.contractId, `this worker could not start its rpc-server: ${(err as Error).message.split('\n')[0]}`);
      return;
    }
    if (hello.probe === true) {
      stream.send(encodeFrame({ ok: true }));
      await stream.close().catch(() => {});
      return;
    }
    let socket;
    try {
      socket = await rpc.connect();
      socket.setNoDelay(true);
    } catch (err) {
      this.refuse(stream, peer, hello.contractId, `rpc-server at ${rpc.endpoint} is unreachable: ${(err as Error).message}`);
      return;
    }
    stream.send(encodeFrame({ ok: true }));
    this.streams++;
    let headEnd = streamEndpoint(stream, `head ${peer}`);
    let serverEnd = socketEndpoint(socket, `rpc-server ${rpc.endpoint}`);
    let s: Splice | undefined;
    const guard = meter !== undefined ? new RpcGuard(meter, { cache: this.o.noCache !== true }) : undefined;
    if (guard !== undefined) {
      const cut = (err: RpcCapExceeded) => {
        this.capBreached(peer, hello.contractId, err);
        s?.abort(err);
      };
      headEnd = filtered(headEnd, (b) => guard.fromHead(b), cut);
      serverEnd = filtered(serverEnd, (b) => guard.fromServer(b), cut);
    }
    s = splice(headEnd, serverEnd, { failIfEndsFirst: 'b' });
    const r = await s.done;
    guard?.close();
    this.streams--;
    if (r.error !== undefined && !this.stopped) {
      const exit = rpc.process.exitCode ?? rpc.process.signalCode;
      this.log.warn('rpc stream ended abnormally', {
        peer, contract: hello.contractId, from: r.from ?? '-', error: r.error.message,
        ...(exit !== null ? { rpcServerExit: exit, rpcServerTail: rpc.outputTail().slice(-3).join(' | ') } : {}),
      });
    }
  }

  /** The contract's meter, made on its first stream; throws when the contract cannot be capped. */
  private async meterFor(c: Contract): Promise<ContractMeter> {
    const have = this.meters.get(c.id);
    if (have !== undefined) return have;
    const layers = c.layerEnd - c.layerStart;
    const limits = this.o.limits !== undefined
      ? await this.o.limits(c)
      : this.o.layerBytes !== undefined ? limitsForLayers(layers, this.o.layerBytes, 'the worker\'s configured layer size') : 'this worker has no layer size for it';
    if (typeof limits === 'string') throw new Error(`contract ${c.id} cannot be metered, so it is not served: ${limits}`);
    const m = this.meters.get(c.id) ?? new ContractMeter(c.id, limits);
    // A contract served again after a release keeps counting from where it was.
    const was = this.retired.get(c.id);
    if (was !== undefined) { m.rows = was.rows; m.graphs = was.graphs; m.lastAt = was.lastAt; this.retired.delete(c.id); }
    this.meters.set(c.id, m);
    this.log.info('contract metered', { contract: c.id, capBytes: limits.allocBytes, cacheCapBytes: limits.cacheBytes, basis: limits.basis });
    return m;
  }

  /** A head asked for more than its contract allows: named, counted, and the contract suspended. */
  private capBreached(peer: string, contractId: string, err: RpcCapExceeded): void {
    const reason = `its head's ${err.command} was refused: ${err.reason}`;
    if (!this.suspended.has(contractId)) this.suspended.set(contractId, reason);
    this.refusals.push({ at: Date.now(), peer, contractId, reason });
    if (this.refusals.length > 100) this.refusals.shift();
    const m = this.meters.get(contractId);
    this.log.warn('cut an rpc connection over its contract cap', {
      peer, contract: contractId, command: err.command, reason: err.reason,
      ...(m !== undefined ? { allocated: fmtBytes(m.allocated), cap: fmtBytes(m.limits.allocBytes) } : {}),
    });
  }

  /** The contract's rpc-server, started on first use; a dead one is replaced on the next stream. */
  private rpcServer(contractId: string): Promise<RpcServerHandle> {
    let p = this.servers.get(contractId);
    if (p === undefined) {
      p = (async () => {
        const env = this.o.cacheDir !== undefined ? { ...process.env, LLAMA_CACHE: this.o.cacheDir } : process.env;
        const h = await startContractRpcServer({ bin: this.o.rpcServerBin, threads: this.o.threads, cache: this.o.noCache !== true, env }, (why) => {
          this.log.warn('rpc-server runs on loopback: any local process can reach it without a contract', { contract: contractId, why });
        });
        this.ready.set(contractId, h);
        this.log.info('rpc-server started', { contract: contractId, endpoint: h.endpoint, pid: h.pid, isolation: h.isolation });
        h.process.once('exit', (code, sig) => {
          this.ready.delete(contractId);
          if (this.servers.get(contractId) === p) this.servers.delete(contractId);
          if (!this.stopped) this.log.warn('rpc-server exited', { contract: contractId, code, signal: sig, tail: h.outputTail().slice(-3).join(' | ') });
        });
        return h;
      })();
      p.catch(() => { if (this.servers.get(contractId) === p) this.servers.delete(contractId); });
      this.servers.set(contractId, p);
    }
    return p;
  }
}

/**
 * An endpoint whose incoming bytes pass through `filter` first (the rpc meter); a refusal from the
 * filter goes to `onRefused` instead of the data, and nothing of the refused message is passed on.
 */
function filtered(ep: Endpoint, filter: (b: Uint8Array) => Uint8Array[], onRefused: (err: RpcCapExceeded) => void): Endpoint {
  let refused = false;
  return {
    ...ep,
    attach(h) {
      ep.attach({
        ...h,
        data(buf) {
          if (refused) return;
          let out: Uint8Array[];
          try {
            out = filter(buf);
          } catch (err) {
            refused = true;
            if (err instanceof RpcCapExceeded) onRefused(err);
            else onRefused(new RpcCapExceeded('?', `the rpc meter failed: ${(err as Error).message}`));
            return;
          }
          for (const b of out) h.data(b);
        },
      });
    },
  };
}
