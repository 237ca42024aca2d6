// A stage's weights: the head cuts a stage file once per (model, range), names it by its SHA-256
// and puts that hash in the signed route ticket; a worker that lacks the file fetches it from the
// head over /clawmesh/stage-weights/1 (only under an active contract for exactly that range),
// checks the hash and keeps it across restarts. A worker that holds the whole GGUF cuts its layers
// itself and receives nothing.
import { closeSync, createReadStream, existsSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { PeerId, Stream } from '@libp2p/interface';
import type { Host } from '../node/host.ts';
import type { Store } from '../store/store.ts';
import type { Logger } from '../log.ts';
import { ContractBook } from './contracts.js';
import { sha256File } from './catalog.js';
import { writeStageGguf } from './stage-gguf.js';

export const STAGE_WEIGHTS_PROTOCOL = '/clawmesh/stage-weights/1';

export interface WeightsRequest {
  model: string;
  start: number;
  end: number;
  contract: string;
}

/** Cuts (once) and hashes the stage file for a range; the head's cache, keyed by model and range. */
export class StageFiles {
  private readonly made = new Map<string, Promise<{ path: string; sha256: string; bytes: number }>>();
  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }

  get(modelPath: string, model: string, start: number, end: number): Promise<{ path: string; sha256: string; bytes: number }> {
    const key = `${model}-${start}-${end}`;
    let p = this.made.get(key);
    if (!p) {
      p = (async () => {
        const path = join(this.dir, `${model.slice(0, 16)}-${start}-${end}.gguf`);
        const bytes = existsSync(path) ? 0 : writeStageGguf(modelPath, path, { start, end });
        return { path, sha256: await sha256File(path), bytes };
      })();
      p.catch(() => this.made.delete(key));
      this.made.set(key, p);
    }
    return p;
  }
}

/** The head's side: serves stage files to workers it holds a contract with, for that contract's range. */
export class StageWeightsServer {
  private constructor(private readonly o: { host: Host; store: Store; peerId: PeerId; files: StageFiles; modelPath: (sha: string) => string | undefined; log?: Logger }) {}

  static async start(o: { host: Host; store: Store; peerId: PeerId; files: StageFiles; modelPath: (sha: string) => string | undefined; log?: Logger }): Promise<StageWeightsServer> {
    const s = new StageWeightsServer(o);
    await o.host.handle(STAGE_WEIGHTS_PROTOCOL, (stream, conn) => { void s.serve(stream, conn.remotePeer.toString()); }, { maxInboundStreams: 16 });
    return s;
  }

  async stop(): Promise<void> {
    await this.o.host.unhandle(STAGE_WEIGHTS_PROTOCOL).catch(() => {});
  }

  private async serve(stream: Stream, peer: string): Promise<void> {
    const reply = (v: unknown) => { stream.send(frame(v)); };
    try {
      const req = (await readJsonFrame(stream, 10_000)) as WeightsRequest;
      const c = await new ContractBook(this.o.store).get(String(req?.contract));
      const me = this.o.peerId.toString();
      const why = c === undefined ? `no contract ${req?.contract}`
        : c.head !== me ? `contract ${c.id} is not this head's`
          : c.worker !== peer ? `contract ${c.id} is not yours`
            : c.status !== 'active' || c.expiresAt <= Date.now() ? `contract ${c.id} is not active`
              : c.modelSha256 !== req.model || c.layerStart !== req.start || c.layerEnd !== req.end ? `contract ${c.id} covers [${c.layerStart}, ${c.layerEnd}) of ${c.modelSha256.slice(0, 12)}…, not what was asked`
                : undefined;
      const src = this.o.modelPath(req.model);
      if (why !== undefined || src === undefined) {
        reply({ ok: false, reason: why ?? 'this head does not hold the model file' });
        await stream.close();
        return;
      }
      const f = await this.o.files.get(src, req.model, req.start, req.end);
      const size = statSync(f.path).size;
      reply({ ok: true, sha256: f.sha256, bytes: size });
      for await (const chunk of createReadStream(f.path, { highWaterMark: 1 << 20 })) {
        if (!stream.send(chunk as Buffer)) await stream.onDrain();
      }
      await stream.close();
      this.o.log?.info('sent stage weights', { to: peer, contract: c!.id, layers: `${req.start}-${req.end - 1}`, bytes: size });
    } catch (err) {
      stream.abort(err as Error);
    }
  }
}

/**
 * The worker's side: the stage file with this hash, fetched from the head if not on disk yet.
 * The file is written under a temporary name and kept only if its hash is the one the ticket named.
 */
export async function fetchStageWeights(host: Host, head: PeerId, req: WeightsRequest & { sha256: string }, dir: string, timeoutMs = 30 * 60_000): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, `${req.sha256}.gguf`);
  if (existsSync(path)) return path;
  const tmp = `${path}.part-${process.pid}-${Date.now()}`;
  const stream = await host.dialProtocol(head, STAGE_WEIGHTS_PROTOCOL, { signal: AbortSignal.timeout(10_000) });
  try {
    stream.send(frame({ model: req.model, start: req.start, end: req.end, contract: req.contract } satisfies WeightsRequest));
    void stream.close().catch(() => {}); // half-close: the request is all we send; the file comes back
    const head0 = (await readJsonFrame(stream, 30_000)) as { ok: boolean; reason?: string; sha256?: string; bytes?: number };
    if (!head0.ok) throw new Error(`the head refused the weights: ${head0.reason}`);
    if (head0.sha256 !== req.sha256) throw new Error(`the head offers weights ${head0.sha256?.slice(0, 12)}…, the ticket names ${req.sha256.slice(0, 12)}…`);
    const hash = createHash('sha256');
    // Plain synchronous writes: a disk keeps up with any home link, and a libp2p stream paused for a
    // file's backpressure can close under us (a resume would then throw).
    const fd = openSync(tmp, 'w');
    let got = 0;
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`weights did not arrive within ${timeoutMs} ms`)), timeoutMs);
        let settled = false;
        const settle = (err?: Error) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          if (err) reject(err); else resolve();
        };
        stream.addEventListener('message', (evt) => {
          const b = evt.data instanceof Uint8Array ? evt.data : evt.data.subarray();
          got += b.byteLength;
          if (got > (head0.bytes ?? 0)) { settle(new Error(`the head sent more than the ${head0.bytes} bytes it announced`)); return; }
          hash.update(b);
          for (let o = 0; o < b.byteLength; ) o += writeSync(fd, b, o);
          if (got === head0.bytes) settle();
        });
        // Ended or closed before the last byte: the transfer broke.
        const short = (err?: Error) => setTimeout(() => settle(err ?? new Error(`weights ended after ${got} of ${head0.bytes} bytes`)), 0);
        stream.addEventListener('end', () => short());
        stream.addEventListener('close', (evt) => short(evt.error));
        if (head0.bytes === 0) settle();
      });
    } finally {
      closeSync(fd);
    }
    const sha = hash.digest('hex');
    if (sha !== req.sha256) throw new Error(`received weights hash to ${sha.slice(0, 12)}…, not ${req.sha256.slice(0, 12)}…`);
    renameSync(tmp, path);
    return path;
  } catch (err) {
    rmSync(tmp, { force: true });
    stream.abort(err as Error);
    throw err;
  }
}

function frame(v: unknown): Uint8Array {
  const body = Buffer.from(JSON.stringify(v), 'utf8');
  const out = Buffer.alloc(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

/** One length-prefixed JSON frame; bytes after it are pushed back for the next reader. */
function readJsonFrame(stream: Stream, timeoutMs: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const done = () => { clearTimeout(timer); stream.removeEventListener('message', onMsg); stream.removeEventListener('close', onClose); };
    const timer = setTimeout(() => { done(); reject(new Error(`no frame within ${timeoutMs} ms`)); }, timeoutMs);
    const onClose = () => { done(); reject(new Error('stream closed before a frame arrived')); };
    const onMsg = (evt: { data: Uint8Array | { subarray(): Uint8Array } }) => {
      buf = Buffer.concat([buf, evt.data instanceof Uint8Array ? evt.data : evt.data.subarray()]);
      if (buf.length < 4) return;
      const len = buf.readUInt32BE(0);
      if (len > 64 << 10) { done(); reject(new Error(`frame of ${len} bytes is too large`)); return; }
      if (buf.length < 4 + len) return;
      done();
      if (buf.length > 4 + len) stream.unshift(buf.subarray(4 + len));
      try { resolve(JSON.parse(buf.subarray(4, 4 + len).toString('utf8'))); } catch (err) { reject(err as Error); }
    };
    stream.addEventListener('message', onMsg);
    stream.addEventListener('close', onClose);
  });
}
