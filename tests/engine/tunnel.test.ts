// The /clawmesh/rpc/1 tunnel on its own, with a byte-echoing stand-in for rpc-server: bulk data both
// ways through yamux with backpressure, half-close, byte meters, the emulated delay, and the
// worker's contract gate (every refusal carries its reason and is logged).
import { createHash, randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { peerIdFromString } from '@libp2p/peer-id';
import type { MeshNode } from '../../runtime/node/node.js';
import { insertContractRow, writeTestContract, type Contract } from '../../runtime/engine/contracts.js';
import { SliceWorker } from '../../runtime/engine/worker.js';
import { openRpcStream, openTunnel, TunnelRefused } from '../../runtime/engine/tunnel.js';
import { openNode, stopAll, tempDir } from '../helpers/mesh.js';

const ECHO = join(fileURLToPath(new URL('.', import.meta.url)), 'fixtures', 'echo-rpc-server.mjs');
const SHA = 'a'.repeat(64);
let dir: { path: string; cleanup: () => Promise<void> };
let head: MeshNode, worker: MeshNode, stranger: MeshNode;
let slice: SliceWorker;
let contract: Contract;

beforeAll(async () => {
  dir = await tempDir('clawmesh-tunnel-');
  [head, worker, stranger] = await Promise.all(['head', 'worker', 'stranger'].map((n) => openNode(join(dir.path, n), n)));
  await Promise.all([head, worker, stranger].map((n) => n.start()));
  slice = await SliceWorker.start({ node: worker, rpcServerBin: ECHO, noCache: true, meterRpc: false });
  contract = await writeTestContract(worker.store, { modelSha256: SHA, headKey: head.key, workerKey: worker.key, layerStart: 0, layerEnd: 4 });
  for (const n of [head, stranger]) await n.host!.dial(worker.host!.getMultiaddrs()[0]);
});

afterAll(async () => {
  await slice?.stop();
  await stopAll([head, worker, stranger].filter(Boolean));
  await dir?.cleanup();
});

function connectTo(endpoint: string): Promise<Socket> {
  const [h, p] = endpoint.split(':');
  return new Promise((resolve, reject) => {
    const s = connect({ host: h, port: Number(p), allowHalfOpen: true });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

describe('rpc tunnel over libp2p', () => {
  it('carries 48 MiB through a slow reader intact, holds back the worker while the reader stalls, counts the bytes and propagates half-close', async () => {
    const failures: string[] = [];
    const t = await openTunnel({ host: head.host!, worker: worker.peerId, contractId: contract.id, modelSha256: SHA, onFailure: (r) => failures.push(r) });
    try {
      const payload = randomBytes(48 << 20);
      const sock = await connectTo(t.endpoint);
      const chunks: Buffer[] = [];
      const ended = new Promise<void>((resolve) => sock.on('end', resolve));
      sock.on('data', (b: Buffer) => chunks.push(b));
      // Read nothing for a while: the echo fills every buffer on the way back, so without
      // backpressure yamux would reset the stream (its read buffer is capped at 8 MiB).
      sock.pause();
      sock.end(payload);
      await new Promise((r) => setTimeout(r, 2000));
      // Backpressure reached the worker: only what fits in socket buffers and one yamux window came
      // back while nobody read (without it, the bytes pile up in the head's memory).
      const heldBack = t.meter.bytesFromWorker;
      sock.resume();
      await ended; // the echo server half-closes only after our end() travelled through the tunnel
      const got = Buffer.concat(chunks);
      expect(got.byteLength).toBe(payload.byteLength);
      expect(createHash('sha256').update(got).digest('hex')).toBe(createHash('sha256').update(payload).digest('hex'));
      expect(heldBack).toBeLessThan(12 << 20); // measured: ~4 MiB with backpressure, ~19 MiB with the stream pause disabled
      console.log(`[engine] tunnel: ${(heldBack / 2 ** 20).toFixed(1)} MiB came back while the reader was paused`);
      expect(t.meter.bytesToWorker).toBe(payload.byteLength);
      expect(t.meter.bytesFromWorker).toBe(payload.byteLength);
      await new Promise((r) => setTimeout(r, 200));
      expect(failures).toEqual([]);
    } finally {
      await t.close();
    }
  });

  it('adds the emulated one-way delay in each direction', async () => {
    const t = await openTunnel({ host: head.host!, worker: worker.peerId, contractId: contract.id, modelSha256: SHA, delayMs: 25, onFailure: () => {} });
    try {
      const sock = await connectTo(t.endpoint);
      const rtt = async () => {
        const t0 = performance.now();
        const back = new Promise((resolve) => sock.once('data', resolve));
        sock.write(Buffer.alloc(32, 7));
        await back;
        return performance.now() - t0;
      };
      await rtt(); // first exchange includes the stream setup
      const times = [await rtt(), await rtt(), await rtt()];
      for (const ms of times) {
        expect(ms).toBeGreaterThanOrEqual(49);
        expect(ms).toBeLessThan(250);
      }
      sock.destroy();
    } finally {
      await t.close();
    }
  });

  it('refuses peers without a valid contract, with the reason, and logs each refusal', async () => {
    const before = slice.refusals.length;
    const attempt = async (from: MeshNode, contractId: string, modelSha256 = SHA) => {
      const err = await openRpcStream({ host: from.host!, worker: worker.peerId, hello: { contractId, modelSha256 } }).then(
        (s) => { s.abort(new Error('unexpected')); return undefined; },
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(TunnelRefused);
      return (err as TunnelRefused).reason;
    };
    expect(await attempt(stranger, 'no-such-contract')).toMatch(/no contract no-such-contract/);
    // A stranger presenting someone else's contract id: the connection's authenticated peer decides.
    expect(await attempt(stranger, contract.id)).toMatch(/belongs to head/);
    expect(await attempt(head, contract.id, 'b'.repeat(64))).toMatch(/covers model/);
    const expired = await writeTestContract(worker.store, { modelSha256: SHA, headKey: head.key, workerKey: worker.key, layerStart: 0, layerEnd: 4, expiresAt: Date.now() - 1000 });
    expect(await attempt(head, expired.id)).toMatch(/expired/);
    const ended = await writeTestContract(worker.store, { modelSha256: SHA, headKey: head.key, workerKey: worker.key, layerStart: 0, layerEnd: 4, status: 'ended' });
    expect(await attempt(head, ended.id)).toMatch(/is ended, not active/);
    // A row nobody signed (or whose terms differ from what was signed) grants nothing.
    const forged = await insertContractRow(worker.store, { ...contract, id: 'forged-row', document: JSON.stringify({ unsigned: true }) });
    expect(await attempt(head, forged.id)).toMatch(/fails verification: malformed contract/);
    const widened = await insertContractRow(worker.store, { ...contract, id: 'widened-row', layerEnd: 8 });
    expect(await attempt(head, widened.id)).toMatch(/fails verification: id .* is not the signed document's/);
    expect(slice.refusals.length - before).toBe(7);
    expect(slice.refusals.at(-6)).toMatchObject({ peer: stranger.peerId.toString(), contractId: contract.id });

    // Through a tunnel, the refusal reaches the head as a failure and the local client is cut off.
    const failures: string[] = [];
    const t = await openTunnel({ host: stranger.host!, worker: peerIdFromString(worker.peerId.toString()), contractId: contract.id, modelSha256: SHA, onFailure: (r) => failures.push(r) });
    try {
      const sock = await connectTo(t.endpoint);
      await new Promise((resolve) => sock.on('end', resolve)); // allowHalfOpen: the tunnel's FIN shows as 'end'
      sock.destroy();
      expect(failures).toHaveLength(1);
      expect(failures[0]).toMatch(/^refused: contract .* belongs to head/);
    } finally {
      await t.close();
    }
  });
});
