// /clawmesh/rpc/1: llama.cpp's RPC protocol carried over a libp2p stream. The head runs a local TCP
// listener per worker (llama-server's --rpc points at it); each accepted socket opens one stream,
// says hello {contractId, modelSha256}, waits for the worker's verdict and then moves raw bytes.
// The worker side (worker.ts) checks the contract and splices the stream onto its rpc-server.
import { createServer, type Server, type Socket } from 'node:net';
import type { PeerId, Stream } from '@libp2p/interface';
import type { Host } from '../node/host.ts';
import { socketEndpoint, splice, streamEndpoint, type LinkShape, type Splice } from './splice.js';

export const RPC_PROTOCOL = '/clawmesh/rpc/1';
const MAX_FRAME = 64 * 1024;

export interface Hello {
  contractId: string;
  modelSha256: string;
  /** Check the contract and warm the worker's rpc-server, without opening an RPC connection. */
  probe?: boolean;
}
export type HelloReply = { ok: true } | { ok: false; reason: string };

/** 4-byte big-endian length + UTF-8 JSON. */
export function encodeFrame(value: unknown): Uint8Array {
  const body = new TextEncoder().encode(JSON.stringify(value));
  if (body.byteLength > MAX_FRAME) throw new Error(`frame of ${body.byteLength} bytes exceeds ${MAX_FRAME}`);
  const out = new Uint8Array(4 + body.byteLength);
  new DataView(out.buffer).setUint32(0, body.byteLength);
  out.set(body, 4);
  return out;
}

/**
 * Reads one frame from the stream. Bytes that arrived after it are pushed back (unshift) for
 * whoever attaches a 'message' listener next, so nothing of the raw RPC traffic is lost.
 */
export function readFrame(stream: Stream, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const cleanup = () => {
      clearTimeout(timer);
      stream.removeEventListener('message', onMessage);
      stream.removeEventListener('close', onClose);
    };
    const timer = setTimeout(() => { cleanup(); reject(new Error(`no hello frame within ${timeoutMs} ms`)); }, timeoutMs);
    const onClose = (evt: Event) => {
      cleanup();
      const err = (evt as Event & { error?: Error }).error;
      reject(new Error(`stream closed before a full frame arrived${err ? `: ${err.message}` : ''}`));
    };
    const onMessage = (evt: { data: Uint8Array | { subarray(): Uint8Array } }) => {
      const chunk = evt.data instanceof Uint8Array ? evt.data : evt.data.subarray();
      buf = Buffer.concat([buf, chunk]);
      if (buf.byteLength < 4) return;
      const len = buf.readUInt32BE(0);
      if (len > MAX_FRAME) { cleanup(); reject(new Error(`frame length ${len} exceeds ${MAX_FRAME}`)); return; }
      if (buf.byteLength < 4 + len) return;
      cleanup();
      const body = buf.subarray(4, 4 + len);
      if (buf.byteLength > 4 + len) stream.unshift(buf.subarray(4 + len));
      try {
        resolve(JSON.parse(new TextDecoder().decode(body)));
      } catch (err) {
        reject(new Error(`malformed frame: ${(err as Error).message}`));
      }
    };
    stream.addEventListener('message', onMessage);
    stream.addEventListener('close', onClose);
  });
}

/**
 * Byte counts and reply tracking for one worker link. `awaitingSince` is when the head first sent
 * bytes that the worker has not answered with any bytes yet: the stall detector's clock.
 */
export class LinkMeter {
  bytesToWorker = 0;
  bytesFromWorker = 0;
  lastFromWorkerAt = 0;
  awaitingSince: number | undefined;

  sent(n: number): void {
    this.bytesToWorker += n;
    this.awaitingSince ??= Date.now();
  }

  received(n: number): void {
    this.bytesFromWorker += n;
    this.lastFromWorkerAt = Date.now();
    this.awaitingSince = undefined;
  }
}

export class TunnelRefused extends Error {
  constructor(readonly worker: string, readonly reason: string) {
    super(`worker ${worker} refused the tunnel: ${reason}`);
    this.name = 'TunnelRefused';
  }
}

export interface OpenStreamOptions {
  host: Host;
  worker: PeerId;
  hello: Hello;
  timeoutMs?: number;
}

/** Dials /clawmesh/rpc/1 and performs the hello exchange; resolves with a stream ready for raw bytes. */
export async function openRpcStream(o: OpenStreamOptions): Promise<Stream> {
  const timeoutMs = o.timeoutMs ?? 15_000;
  const stream = await o.host.dialProtocol(o.worker, RPC_PROTOCOL, { signal: AbortSignal.timeout(timeoutMs) });
  try {
    stream.send(encodeFrame(o.hello));
    const reply = (await readFrame(stream, timeoutMs)) as HelloReply;
    if (reply?.ok !== true) throw new TunnelRefused(o.worker.toString(), (reply as { reason?: string })?.reason ?? 'malformed reply');
    return stream;
  } catch (err) {
    stream.abort(err as Error);
    throw err;
  }
}

export interface TunnelOptions {
  host: Host;
  worker: PeerId;
  contractId: string;
  modelSha256: string;
  /** Extra one-way delay on every chunk, both directions (link emulation). */
  delayMs?: number;
  /** Bandwidth cap per direction in Mbit/s (link emulation). */
  bandwidthMbit?: number;
  meter?: LinkMeter;
  /** The link broke or the worker refused: called once per broken connection, never during close(). */
  onFailure: (reason: string) => void;
  /** Called when a local client connects (llama-server opens several connections over its life). */
  onConnection?: () => void;
}

export interface Tunnel {
  /** host:port for llama-server's --rpc. */
  endpoint: string;
  meter: LinkMeter;
  /** Connections currently spliced. */
  active(): number;
  /** Reshapes the emulated link of open and future connections (benchmarks). */
  setShape(shape: LinkShape): void;
  close(): Promise<void>;
}

/** Head side: a loopback listener whose every connection becomes a contract-checked stream to the worker. */
export async function openTunnel(o: TunnelOptions): Promise<Tunnel> {
  const meter = o.meter ?? new LinkMeter();
  const splices = new Set<Splice>();
  const pending = new Set<Socket>();
  let closing = false;
  const worker = o.worker.toString();
  let shape: LinkShape = { delayMs: o.delayMs, bandwidthMbit: o.bandwidthMbit };

  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => {
    o.onConnection?.();
    socket.setNoDelay(true);
    pending.add(socket);
    openRpcStream({ host: o.host, worker: o.worker, hello: { contractId: o.contractId, modelSha256: o.modelSha256 } })
      .then((stream) => {
        pending.delete(socket);
        if (closing || socket.destroyed) { stream.abort(new Error('tunnel closed')); socket.destroy(); return; }
        const s = splice(socketEndpoint(socket, 'llama-server'), streamEndpoint(stream, `worker ${worker}`), {
          ...shape,
          onAtoB: (n) => meter.sent(n),
          onBtoA: (n) => meter.received(n),
          failIfEndsFirst: 'b',
        });
        splices.add(s);
        socket.resume();
        void s.done.then((r) => {
          splices.delete(s);
          if (r.error !== undefined && !closing && r.from !== 'llama-server') o.onFailure(`tunnel to the worker broke: ${r.error.message}`);
        });
      })
      .catch((err: Error) => {
        pending.delete(socket);
        socket.destroy();
        if (!closing) o.onFailure(err instanceof TunnelRefused ? `refused: ${err.reason}` : `could not open a stream: ${err.message}`);
      });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve(); });
  });
  const addr = server.address();
  if (addr === null || typeof addr !== 'object') throw new Error('tunnel listener has no address');
  return {
    endpoint: `127.0.0.1:${addr.port}`,
    meter,
    active: () => splices.size,
    setShape(next) {
      shape = { ...next };
      for (const s of splices) s.setShape(shape);
    },
    async close() {
      closing = true;
      const err = new Error('pipeline stopped');
      for (const s of splices) s.abort(err);
      for (const s of pending) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
