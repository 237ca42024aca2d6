// Head (the pipeline's coordinator): tunnels to its contracted workers, llama-server with --rpc on
// the tunnels' local ends and the layer placement computed from the agreed ranges, an OpenAI API on
// loopback, and a watchdog that turns a dead or stalled worker into one clear failure.
//
// Failure model: llama.cpp's RPC client blocks forever on a peer that stops answering, so the head
// never waits on llama-server to notice. It watches the tunnels instead: a stream reset or a worker
// hanging up (its rpc-server never closes first), no reply from a worker for stallTimeoutMs while a
// request is in flight, or libp2p pings failing. The first failure names the worker, errors the
// in-flight requests, kills llama-server and closes every tunnel; a new pipeline can then be built.
import { EventEmitter } from 'node:events';
import { peerIdFromString } from '@libp2p/peer-id';
import { multiaddr } from '@multiformats/multiaddr';
import type { PeerId } from '@libp2p/interface';
import type { MeshNode } from '../node/node.ts';
import type { Logger } from '../log.ts';
import { computeTensorSplit, PIN_TO_HEAD_ARGS, type LayerRange, type TensorSplit } from './split.js';
import { freePort, startLlamaServer, type LlamaServerHandle } from './llama-procs.js';
import { LinkMeter, openRpcStream, openTunnel, TunnelRefused, type Tunnel } from './tunnel.js';
import type { LinkShape } from './splice.js';
import { startFrontProxy, type FrontProxy } from './front-proxy.js';

export interface Assignment {
  /** Worker's PeerId (string form). */
  worker: string;
  /** Layers [start, end) of the model this worker computes. */
  start: number;
  end: number;
  contractId: string;
  /** Multiaddrs to dial if the node is not connected to the worker yet. */
  addrs?: string[];
}

export interface PipelineModel {
  path: string;
  sha256: string;
  nLayer: number;
}

export interface PipelineOptions {
  node: MeshNode;
  model: PipelineModel;
  assignments: Assignment[];
  /** Layers [0, headLayers) stay on the head's own CPU; the assignments then tile [headLayers, nLayer). */
  headLayers?: number;
  /** ensureLlamaBuild().llamaServer */
  llamaServerBin: string;
  threads?: number;
  ctxSize?: number;
  /** Emulated one-way link delay added in every tunnel (benchmarks). */
  delayMs?: number;
  /** Emulated bandwidth cap per direction in every tunnel, Mbit/s (benchmarks). */
  bandwidthMbit?: number;
  /** A worker that sends nothing back for this long while a request is in flight is declared stalled. */
  stallTimeoutMs?: number;
  /** Same, while llama-server loads the model (default: max(60 s, stallTimeoutMs)). */
  loadStallTimeoutMs?: number;
  /** libp2p ping period per worker (0 = off); two consecutive failures fail the worker. */
  pingIntervalMs?: number;
  extraArgs?: string[];
  log?: Logger;
}

export interface PipelineFailure {
  /** The worker at fault, when it is known. */
  worker?: string;
  contractId?: string;
  reason: string;
  at: number;
}

export interface LinkStats {
  worker: string;
  contractId: string;
  endpoint: string;
  bytesToWorker: number;
  bytesFromWorker: number;
}

export interface Pipeline {
  /** OpenAI-compatible API root on 127.0.0.1 (…/v1). */
  baseUrl: string;
  /** Server root (llama-server's native endpoints such as /completion and /health go through it too). */
  url: string;
  split: TensorSplit;
  /** llama-server's process id (for monitoring; the pipeline owns the process). */
  llamaServerPid: number;
  /** 'worker-failed' (PipelineFailure with worker set), 'failed' (any PipelineFailure), 'stopped'. */
  events: EventEmitter;
  readonly state: 'running' | 'failed' | 'stopped';
  readonly failure: PipelineFailure | undefined;
  /** Resolves once everything is torn down: with the failure, or undefined after stop(). */
  closed: Promise<PipelineFailure | undefined>;
  links(): LinkStats[];
  /** Reshapes every tunnel's emulated link (benchmarks: one model load, many link shapes). */
  setLinkShape(shape: LinkShape): void;
  stop(): Promise<void>;
}

export class PipelineError extends Error {
  constructor(message: string, readonly failure?: PipelineFailure) {
    super(message);
    this.name = 'PipelineError';
  }
}

const HEAD = '<head>';

async function ensureConnected(node: MeshNode, peer: PeerId, addrs: string[] | undefined): Promise<void> {
  const host = node.host!;
  if (host.getConnections(peer).length > 0) return;
  if (addrs !== undefined && addrs.length > 0) await host.dial(addrs.map((a) => multiaddr(a)), { signal: AbortSignal.timeout(10_000) });
}

export async function startPipeline(o: PipelineOptions): Promise<Pipeline> {
  const node = o.node;
  const host = node.host;
  if (host === undefined) throw new PipelineError('start the mesh node before building a pipeline');
  const log = o.log ?? node.log.child('engine-head');
  const headLayers = o.headLayers ?? 0;
  // One device per contract, not per worker: a worker may hold two contracts of one model (two ranges,
  // each its own rpc-server behind its own tunnel).
  const ranges: LayerRange[] = o.assignments.map((a) => ({ worker: a.contractId, start: a.start, end: a.end }));
  if (headLayers > 0) ranges.push({ worker: HEAD, start: 0, end: headLayers });
  const split = computeTensorSplit(ranges, o.model.nLayer, headLayers > 0 ? { cpuWorker: HEAD } : {});
  const byContract = new Map(o.assignments.map((a) => [a.contractId, a]));
  const stallMs = o.stallTimeoutMs ?? 15_000;

  const events = new EventEmitter();
  let state: 'starting' | 'running' | 'failed' | 'stopped' = 'starting';
  let failure: PipelineFailure | undefined;
  const tunnels = new Map<string, Tunnel>();
  let server: LlamaServerHandle | undefined;
  let proxy: FrontProxy | undefined;
  const timers: NodeJS.Timeout[] = [];
  const loading = new AbortController();
  let resolveClosed!: (f: PipelineFailure | undefined) => void;
  const closed = new Promise<PipelineFailure | undefined>((r) => { resolveClosed = r; });

  const teardown = async (hard: boolean) => {
    for (const t of timers) clearInterval(t);
    if (hard) {
      // After a failure llama-server may be blocked inside an RPC call forever: cut the links, no grace period.
      await Promise.allSettled([...tunnels.values()].map(async (t) => await t.close()));
      if (server !== undefined) {
        server.process.kill('SIGKILL');
        await server.stop();
      }
    } else {
      // A deliberate stop: llama-server goes first and hangs up its RPC connections, so every tunnel
      // ends cleanly and the workers see a head that left, not a broken link.
      await server?.stop();
      await Promise.allSettled([...tunnels.values()].map(async (t) => await t.close()));
    }
    await proxy?.close();
  };

  const fail = (f: Omit<PipelineFailure, 'at'>) => {
    if (state !== 'running' && state !== 'starting') return;
    const wasRunning = state === 'running';
    failure = { ...f, at: Date.now() };
    state = 'failed';
    const msg = f.worker !== undefined ? `worker ${f.worker} failed: ${f.reason}` : `pipeline failed: ${f.reason}`;
    log.error(msg, { contract: f.contractId ?? '-' });
    proxy?.failAll({ message: msg, type: f.worker !== undefined ? 'worker_failed' : 'pipeline_failed', ...(f.worker !== undefined ? { worker: f.worker } : {}) });
    if (f.worker !== undefined) events.emit('worker-failed', failure);
    events.emit('failed', failure);
    // During start, startPipeline's own catch tears down and throws; a load blocked on the dead worker is cut short.
    if (!wasRunning) loading.abort(new Error(msg));
    if (wasRunning) void teardown(true).finally(() => resolveClosed(failure));
  };

  // The watchdog also covers the load: a worker that stops answering then would otherwise leave
  // llama-server (and this call) waiting until its ready timeout.
  const loadStallMs = o.loadStallTimeoutMs ?? Math.max(60_000, stallMs);
  timers.push(setInterval(() => {
    let limit: number;
    if (state === 'starting') limit = loadStallMs;
    else if (state === 'running' && proxy !== undefined && proxy.inFlight() > 0) limit = stallMs;
    else return;
    const now = Date.now();
    for (const [id, t] of tunnels) {
      const since = t.meter.awaitingSince;
      if (since !== undefined && now - since > limit) {
        fail({ worker: byContract.get(id)!.worker, contractId: id, reason: `stalled: no reply for ${now - since} ms while ${state === 'starting' ? 'the model loaded' : 'a request was in flight'} (timeout ${limit} ms)` });
        return;
      }
    }
  }, Math.min(250, stallMs / 4)));

  try {
    // Connect and probe every worker first: a refused contract or an unreachable peer should fail
    // here, with its reason, not as an opaque RPC error inside llama-server.
    const peers = new Map<string, PeerId>();
    await Promise.all(o.assignments.map(async (a) => {
      let peer: PeerId;
      try {
        peer = peerIdFromString(a.worker);
      } catch {
        throw new PipelineError(`assignment for layers [${a.start}, ${a.end}) names an invalid peer id ${a.worker}`);
      }
      peers.set(a.worker, peer);
      try {
        await ensureConnected(node, peer, a.addrs);
        const s = await openRpcStream({ host, worker: peer, hello: { contractId: a.contractId, modelSha256: o.model.sha256, probe: true } });
        await s.close().catch(() => {});
      } catch (err) {
        const reason = err instanceof TunnelRefused ? `refused: ${err.reason}` : `unreachable: ${(err as Error).message}`;
        fail({ worker: a.worker, contractId: a.contractId, reason });
        throw new PipelineError(`worker ${a.worker} (contract ${a.contractId}, layers [${a.start}, ${a.end})) ${reason}`, failure);
      }
    }));

    for (const a of o.assignments) {
      const t = await openTunnel({
        host, worker: peers.get(a.worker)!, contractId: a.contractId, modelSha256: o.model.sha256, delayMs: o.delayMs, bandwidthMbit: o.bandwidthMbit, meter: new LinkMeter(),
        onFailure: (reason) => fail({ worker: a.worker, contractId: a.contractId, reason }),
      });
      tunnels.set(a.contractId, t);
    }
    const rpc = split.devices.map((w) => tunnels.get(w)!.endpoint);
    server = await startLlamaServer({
      bin: o.llamaServerBin, model: o.model.path, port: await freePort(), threads: o.threads, ctxSize: o.ctxSize, signal: loading.signal,
      readyTimeoutMs: 600_000, // loading a big model over home links takes minutes; failures abort it sooner
      // Output matrix and embeddings stay on the head: logits never cross the network (split.ts).
      extraArgs: [...(rpc.length > 0 ? ['--rpc', rpc.join(','), ...PIN_TO_HEAD_ARGS] : []), ...split.args, '--fit', 'off', ...(o.extraArgs ?? [])],
    });
    if (failure !== undefined) throw new PipelineError(`worker ${failure.worker} failed while the model loaded: ${failure.reason}`, failure);
    const srv = server;
    srv.process.once('exit', (code, sig) => {
      fail({ reason: `llama-server exited (${sig ?? `code ${code}`}); last output: ${srv.outputTail().slice(-5).join(' | ')}` });
    });
    proxy = await startFrontProxy(server.url, () => {
      // A new request after an idle spell: replies owed for fire-and-forget RPC commands sent while
      // idle are not a stall, so the stall clocks start now.
      if (proxy?.inFlight() === 0) for (const t of tunnels.values()) if (t.meter.awaitingSince !== undefined) t.meter.awaitingSince = Date.now();
    });
  } catch (err) {
    await teardown(true);
    state = 'failed';
    if (err instanceof PipelineError) throw err;
    const f = failure as PipelineFailure | undefined;
    const why = f?.worker !== undefined ? ` (worker ${f.worker} failed first: ${f.reason})` : '';
    throw new PipelineError(`could not start the pipeline${why}: ${(err as Error).message}`, f);
  }
  state = 'running';

  const pingEvery = o.pingIntervalMs ?? 5000;
  if (pingEvery > 0) {
    const misses = new Map<string, number>();
    timers.push(setInterval(() => {
      for (const a of o.assignments) {
        host.services.ping.ping(peerIdFromString(a.worker), { signal: AbortSignal.timeout(Math.max(pingEvery * 2, 5000)) })
          .then(() => misses.set(a.worker, 0))
          .catch((err: Error) => {
            const n = (misses.get(a.worker) ?? 0) + 1;
            misses.set(a.worker, n);
            if (n >= 2) fail({ worker: a.worker, contractId: a.contractId, reason: `libp2p ping failed twice: ${err.message}` });
          });
      }
    }, pingEvery));
  }

  log.info('pipeline running', { url: proxy!.url, split: split.args.join(' '), workers: split.devices.length });
  return {
    baseUrl: `${proxy!.url}/v1`,
    url: proxy!.url,
    split,
    llamaServerPid: server!.pid,
    events,
    get state() { return state === 'starting' ? 'running' : state; },
    get failure() { return failure; },
    closed,
    links: () => [...tunnels].map(([id, t]) => ({
      worker: byContract.get(id)!.worker, contractId: id, endpoint: t.endpoint, bytesToWorker: t.meter.bytesToWorker, bytesFromWorker: t.meter.bytesFromWorker,
    })),
    setLinkShape(shape) {
      for (const t of tunnels.values()) t.setShape(shape);
    },
    async stop() {
      if (state === 'running') {
        state = 'stopped';
        await teardown(false);
        events.emit('stopped');
        resolveClosed(undefined);
      } else {
        await closed;
      }
    },
  };
}

/**
 * Holds at most one pipeline and says whether a new one can be built: after a failure the old one is
 * fully torn down and the head is 'ready' again, with the failure kept for whoever asks.
 */
export class PipelineHead {
  private current: Pipeline | undefined;
  private starting = false;
  lastFailure: PipelineFailure | undefined;

  get state(): 'ready' | 'starting' | 'running' {
    if (this.starting) return 'starting';
    return this.current?.state === 'running' ? 'running' : 'ready';
  }

  get pipeline(): Pipeline | undefined {
    return this.current?.state === 'running' ? this.current : undefined;
  }

  async start(o: PipelineOptions): Promise<Pipeline> {
    if (this.starting) throw new PipelineError('a pipeline is already starting');
    this.starting = true;
    try {
      await this.stop();
      const p = await startPipeline(o);
      this.current = p;
      p.events.on('failed', (f: PipelineFailure) => { this.lastFailure = f; });
      return p;
    } catch (err) {
      if (err instanceof PipelineError && err.failure !== undefined) this.lastFailure = err.failure;
      throw err;
    } finally {
      this.starting = false;
    }
  }

  /** Stops the running pipeline, or waits for a failed one to finish tearing down. */
  async stop(): Promise<void> {
    const p = this.current;
    this.current = undefined;
    await p?.stop();
  }
}
