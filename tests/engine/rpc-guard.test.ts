// The worker's meter on ggml-rpc (issue #15, finding 5): a head with a 1-layer contract asks a real
// rpc-server, through the libp2p tunnel, for 4 GiB and for a SET_TENSOR larger than its buffer. The
// worker cuts the connection before the command reaches rpc-server, names the refusal, and refuses
// the contract's next stream with the reason; a legitimate allocation passes and is metered.
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { Stream } from '@libp2p/interface';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MeshNode } from '../../runtime/node/node.js';
import { writeTestContract } from '../../runtime/engine/contracts.js';
import { SliceWorker } from '../../runtime/engine/worker.js';
import { openRpcStream, TunnelRefused } from '../../runtime/engine/tunnel.js';
import { GGML_OP_MUL_MAT, RPC_CMD, RPC_TENSOR_BYTES, RpcGuard, ContractMeter, limitsForLayers } from '../../runtime/engine/rpc-guard.js';
import { openNode, stopAll, tempDir } from '../helpers/mesh.js';
import { llamaBuildOrSkip, type BuildOutcome } from './helpers.js';

const SHA = 'c'.repeat(64);
const MiB = 1 << 20;

function msg(cmd: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h[0] = cmd;
  h.writeBigUInt64LE(BigInt(payload.byteLength), 1);
  return Buffer.concat([h, payload]);
}
const u64 = (...v: bigint[]) => { const b = Buffer.alloc(8 * v.length); v.forEach((x, i) => b.writeBigUInt64LE(x, 8 * i)); return b; };
const alloc = (size: number) => msg(RPC_CMD.ALLOC_BUFFER, Buffer.concat([Buffer.alloc(4), u64(BigInt(size))]));
const hello = () => msg(RPC_CMD.HELLO, Buffer.alloc(24));
/** An rpc_tensor of n f32 values at `data` in buffer `buffer` (layout: ggml-rpc.cpp, struct rpc_tensor). */
function tensor(buffer: bigint, data: bigint, n: number): Buffer {
  const t = Buffer.alloc(RPC_TENSOR_BYTES);
  t.writeBigUInt64LE(1n, 0); // id
  t.writeUInt32LE(0, 8); // GGML_TYPE_F32
  t.writeBigUInt64LE(buffer, 12);
  [n, 1, 1, 1].forEach((v, i) => t.writeUInt32LE(v, 20 + 4 * i));
  [4, 4 * n, 4 * n, 4 * n].forEach((v, i) => t.writeUInt32LE(v, 36 + 4 * i));
  t.writeBigUInt64LE(data, 8 + 4 + 8 + 16 + 16 + 4 + 64 + 4 + 80 + 16); // after op, op_params, flags, src[], view_src, view_offs
  return t;
}

/** An f32 rpc_tensor of shape [ne0, ne1] with an id, an op and sources (ids), as llama.cpp serialises graph nodes. */
function node2d(o: { id: bigint; buffer: bigint; data: bigint; ne0: number; ne1: number; op?: number; src?: bigint[]; name?: string }): Buffer {
  const t = tensor(o.buffer, o.data, o.ne0);
  t.writeBigUInt64LE(o.id, 0);
  t.writeUInt32LE(o.ne1, 24);
  [4, 4 * o.ne0, 4 * o.ne0 * o.ne1, 4 * o.ne0 * o.ne1].forEach((v, i) => t.writeUInt32LE(v, 36 + 4 * i));
  t.writeUInt32LE(o.op ?? 0, 52);
  if (o.op !== undefined) t.writeInt32LE(16, 120); // GGML_TENSOR_FLAG_COMPUTE: ggml-cpu skips nodes without it
  (o.src ?? []).forEach((id, i) => t.writeBigUInt64LE(id, 124 + 8 * i));
  t.write(o.name ?? '', 228, 'utf8');
  return t;
}
/** GRAPH_COMPUTE of out = W · x (W: [k, m] weights, x: [k, tokens]): out is [m, tokens], one MUL_MAT node. */
function matmulGraph(buffer: bigint, base: bigint, k: number, m: number, tokens: number): Buffer {
  const w = node2d({ id: 11n, buffer, data: base, ne0: k, ne1: m, name: 'blk.0.attn_q.weight' });
  const x = node2d({ id: 12n, buffer, data: base + BigInt(4 * k * m), ne0: k, ne1: tokens, name: 'attn_norm-0' });
  const out = node2d({ id: 13n, buffer, data: base + BigInt(4 * k * (m + tokens)), ne0: m, ne1: tokens, op: GGML_OP_MUL_MAT, src: [11n, 12n], name: 'Qcur-0' });
  const head = Buffer.alloc(8 + 8 + 4);
  head.writeUInt32LE(0, 0); // device
  head.writeUInt32LE(1, 4); // n_nodes
  head.writeBigUInt64LE(13n, 8);
  head.writeUInt32LE(3, 16); // n_tensors
  return msg(RPC_CMD.GRAPH_COMPUTE, Buffer.concat([head, w, x, out]));
}
const recompute = () => msg(RPC_CMD.GRAPH_RECOMPUTE, Buffer.alloc(4));

/** A bare ggml-rpc client on a tunnel stream: send bytes, read exact reply lengths, see the cut. */
function client(stream: Stream) {
  let buf = Buffer.alloc(0);
  let waiter: (() => void) | undefined;
  let closed = false;
  stream.addEventListener('message', (e) => { buf = Buffer.concat([buf, e.data instanceof Uint8Array ? e.data : e.data.subarray()]); waiter?.(); });
  stream.addEventListener('close', () => { closed = true; waiter?.(); });
  return {
    send: (b: Buffer) => stream.send(b),
    async read(n: number, ms = 5000): Promise<Buffer> {
      const deadline = Date.now() + ms;
      while (buf.byteLength < n) {
        if (closed) throw new Error(`stream closed after ${buf.byteLength} of ${n} bytes`);
        if (Date.now() > deadline) throw new Error('no reply');
        await new Promise<void>((r) => { waiter = r; setTimeout(r, 100); });
      }
      const out = buf.subarray(0, n);
      buf = buf.subarray(n);
      return out;
    },
    async cut(ms = 5000): Promise<boolean> {
      const deadline = Date.now() + ms;
      while (!closed && Date.now() < deadline) await new Promise<void>((r) => { waiter = r; setTimeout(r, 100); });
      return closed;
    },
  };
}

describe('rpc meter, framing alone', () => {
  it('parses messages split at every byte and keeps a running total across FREE_BUFFER', () => {
    const meter = new ContractMeter('c', limitsForLayers(1, MiB, 'test'));
    const g = new RpcGuard(meter, { cache: true });
    const wire = Buffer.concat([hello(), alloc(8 * MiB), msg(RPC_CMD.DEVICE_COUNT, Buffer.alloc(0))]);
    let passed = 0;
    for (let i = 0; i < wire.byteLength; i++) for (const b of g.fromHead(wire.subarray(i, i + 1))) passed += b.byteLength;
    expect(passed).toBe(wire.byteLength);
    expect(meter.allocated).toBe(8 * MiB); // reserved until the reply says what was granted
    const helloReply = Buffer.concat([u64(28n), Buffer.from([7, 0, 0, 0]), Buffer.alloc(24, 9)]);
    const out = Buffer.concat(g.fromServer(Buffer.concat([helloReply, u64(16n), u64(0xabcn, BigInt(8 * MiB)), u64(4n), Buffer.alloc(4)])).map((b) => Buffer.from(b)));
    expect(out.subarray(12, 36).every((x) => x === 0)).toBe(true); // no RDMA upgrade off the metered socket
    expect(meter.allocated).toBe(8 * MiB);
    g.fromHead(msg(RPC_CMD.FREE_BUFFER, u64(0xabcn)));
    expect(meter.allocated).toBe(0);
    expect(() => g.fromHead(alloc(600 * MiB))).toThrow(/ALLOC_BUFFER of 600.0 MiB would bring contract c's buffers to 600.0 MiB, over its cap of 513.3 MiB/);
    expect(meter.refused).toBe(1);
  });

  it('counts the token rows of each GRAPH_COMPUTE from its MUL_MAT shapes, and again on GRAPH_RECOMPUTE (finding 7)', () => {
    const meter = new ContractMeter('c', limitsForLayers(1, MiB, 'test'));
    const g = new RpcGuard(meter, { cache: true });
    const wire = Buffer.concat([hello(), matmulGraph(1n, 4096n, 8, 6, 7), recompute(), matmulGraph(1n, 4096n, 8, 6, 1), recompute(), recompute()]);
    let passed = 0;
    for (let i = 0; i < wire.byteLength; i += 97) for (const b of g.fromHead(wire.subarray(i, i + 97))) passed += b.byteLength;
    expect(passed).toBe(wire.byteLength); // read whole, passed on unchanged
    expect(meter.rows).toBe(7 + 7 + 1 + 1 + 1);
    expect(meter.graphs).toBe(5);
  });
});

let build: BuildOutcome;
let dir: { path: string; cleanup: () => Promise<void> };
let head: MeshNode, worker: MeshNode;
let slice: SliceWorker;

beforeAll(async () => {
  build = await llamaBuildOrSkip();
  if ('skip' in build) return;
  dir = await tempDir('clawmesh-rpc-guard-');
  [head, worker] = await Promise.all(['head', 'worker'].map((n) => openNode(join(dir.path, n), n)));
  await Promise.all([head, worker].map((n) => n.start()));
  slice = await SliceWorker.start({ node: worker, rpcServerBin: build.build.rpcServer, threads: 1, cacheDir: join(dir.path, 'cache'), layerBytes: MiB });
  await head.host!.dial(worker.host!.getMultiaddrs()[0]);
}, 900_000);

afterAll(async () => {
  await slice?.stop();
  await stopAll([head, worker].filter(Boolean));
  await dir?.cleanup();
});

describe('rpc meter in front of a real rpc-server', () => {
  it('cuts a 4 GiB ALLOC_BUFFER and an oversized SET_TENSOR of a 1-layer contract, names them, and suspends the contract', async (ctx) => {
    if ('skip' in build) ctx.skip();
    const contract = await writeTestContract(worker.store, { modelSha256: SHA, headKey: head.key, workerKey: worker.key, layerStart: 0, layerEnd: 1 });
    const c = client(await openRpcStream({ host: head.host!, worker: worker.peerId, hello: { contractId: contract.id, modelSha256: SHA } }));
    c.send(hello());
    expect((await c.read(8 + 28))[8]).toBe(7); // protocol major version from the real server
    c.send(alloc(4 * MiB));
    const granted = await c.read(8 + 16);
    const ptr = granted.readBigUInt64LE(8);
    expect(ptr).not.toBe(0n);
    expect(slice.status().meters[0]).toMatchObject({ contractId: contract.id, allocated: 4 * MiB, refused: 0 });
    // A legitimate upload and read-back pass the meter untouched (and check its idea of the layout).
    c.send(msg(RPC_CMD.BUFFER_GET_BASE, u64(ptr)));
    const base = (await c.read(16)).readBigUInt64LE(8);
    const values = Buffer.alloc(4096, 7);
    c.send(msg(RPC_CMD.SET_TENSOR, Buffer.concat([tensor(ptr, base, 1024), Buffer.from([0]), u64(0n), values])));
    c.send(msg(RPC_CMD.GET_TENSOR, Buffer.concat([tensor(ptr, base, 1024), u64(0n, 4096n)])));
    expect((await c.read(8 + 4096)).subarray(8).equals(values)).toBe(true);

    // Finding 7: the worker counts the rows it computes itself. A real product of 5 token rows
    // through a [8 → 6] weight runs on rpc-server (the result reads back) and counts 5, a
    // recompute 5 more; nothing the head says about tokens enters the count.
    const W = Buffer.alloc(4 * 8 * 6);
    for (let i = 0; i < 48; i++) W.writeFloatLE(i % 7 === 0 ? 1 : 0, 4 * i);
    const X = Buffer.alloc(4 * 8 * 5);
    for (let i = 0; i < 40; i++) X.writeFloatLE(i, 4 * i);
    c.send(msg(RPC_CMD.SET_TENSOR, Buffer.concat([node2d({ id: 11n, buffer: ptr, data: base, ne0: 8, ne1: 6 }), Buffer.from([0]), u64(0n), W])));
    c.send(msg(RPC_CMD.SET_TENSOR, Buffer.concat([node2d({ id: 12n, buffer: ptr, data: base + 192n, ne0: 8, ne1: 5 }), Buffer.from([0]), u64(0n), X])));
    c.send(matmulGraph(ptr, base, 8, 6, 5));
    c.send(recompute());
    c.send(msg(RPC_CMD.GET_TENSOR, Buffer.concat([node2d({ id: 13n, buffer: ptr, data: base + 352n, ne0: 6, ne1: 5 }), u64(0n, 120n)])));
    const out = (await c.read(8 + 120)).subarray(8);
    expect(out.readFloatLE(0)).toBe(0 + 7); // row 0 of W picks x[0] and x[7]
    expect(slice.counted(contract.id)).toMatchObject({ rows: 10 });
    expect(slice.status().meters[0]).toMatchObject({ rows: 10, graphs: 2 });

    // Finding 8: the rpc-server sits in a network namespace of its own; a local process dialling
    // its port (50052 inside) meets nothing, so it cannot skip the contract check and the meter.
    const rpc = slice.rpcServerFor(contract.id)!;
    if (rpc.isolation === 'netns') {
      const direct = await new Promise<string>((resolve) => {
        const s = connect({ host: '127.0.0.1', port: 50052 });
        s.once('connect', () => { s.destroy(); resolve('connected'); });
        s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
      });
      expect(direct).toBe('ECONNREFUSED');
      expect(readFileSync(`/proc/${rpc.pid}/net/tcp`, 'utf8')).toMatch(/:C384 00000000:0000 0A/); // it does listen, in there
    } else {
      console.log(`[engine] rpc-server not isolated on this machine: ${rpc.endpoint}`);
    }
    const rpcPid = rpc.pid;
    c.send(alloc(4 * 2 ** 30));
    expect(await c.cut()).toBe(true);
    const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${rpcPid}/status`, 'utf8'))![1]) * 1024;
    expect(rss).toBeLessThan(256 * MiB); // the 4 GiB never reached rpc-server, which lives on
    const refusal = slice.refusals.at(-1)!;
    expect(refusal.contractId).toBe(contract.id);
    expect(refusal.reason).toMatch(/ALLOC_BUFFER was refused: ALLOC_BUFFER of 4.00 GiB would bring contract .* over its cap of 513.3 MiB \(1 layer\(s\) × 1.0 MiB/);
    console.log(`[engine] rpc meter: ${refusal.reason}`);
    // The head's next stream (its pipeline rebuilding) hears why.
    const err = await openRpcStream({ host: head.host!, worker: worker.peerId, hello: { contractId: contract.id, modelSha256: SHA, probe: true } }).then(() => undefined, (e: Error) => e);
    expect(err).toBeInstanceOf(TunnelRefused);
    expect((err as TunnelRefused).reason).toMatch(/is suspended on this worker: its head's ALLOC_BUFFER was refused/);
    expect(slice.status().meters.find((m) => m.contractId === contract.id)).toMatchObject({ allocated: 0, refused: 1 });

    // A SET_TENSOR bigger than any buffer the connection holds is cut before rpc-server buffers it.
    const other = await writeTestContract(worker.store, { modelSha256: SHA, headKey: head.key, workerKey: worker.key, layerStart: 1, layerEnd: 2 });
    const d = client(await openRpcStream({ host: head.host!, worker: worker.peerId, hello: { contractId: other.id, modelSha256: SHA } }));
    d.send(hello());
    await d.read(36);
    d.send(alloc(MiB));
    await d.read(24);
    const header = msg(RPC_CMD.SET_TENSOR, Buffer.alloc(0));
    header.writeBigUInt64LE(BigInt(RPC_TENSOR_BYTES + 9 + 300 * MiB), 1);
    d.send(header);
    expect(await d.cut()).toBe(true);
    expect(slice.refusals.at(-1)!.reason).toMatch(/SET_TENSOR of 300.0 MiB is larger than any buffer this connection holds \(1.0 MiB\)/);
  }, 60_000);
});
