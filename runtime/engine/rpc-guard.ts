// The worker's meter on ggml-rpc: it reads the head's commands on their way to rpc-server and the
// server's replies on their way back, and cuts the connection before a command would make the
// contract's rpc-server hold more than the contract allows. rpc-server itself grants any
// ALLOC_BUFFER it can (measured: 4 GiB and 16 GiB for a 1-layer contract on a 23 GiB machine) and
// writes every cached SET_TENSOR to disk, so the cap has to live on the wire.
//
// Wire format (llama.cpp ggml/src/ggml-rpc/ggml-rpc.cpp, protocol 7.x, little-endian):
//   request:  | cmd (1 byte) | size (8 bytes) | payload (size bytes) |   HELLO first, once
//   reply:    | size (8 bytes) | payload |   only for some commands, in the order they were sent
// The server answers commands one by one, so replies line up with a FIFO of answered commands.

export const RPC_CMD = {
  ALLOC_BUFFER: 0, GET_ALIGNMENT: 1, GET_MAX_SIZE: 2, BUFFER_GET_BASE: 3, FREE_BUFFER: 4, BUFFER_CLEAR: 5,
  SET_TENSOR: 6, SET_TENSOR_HASH: 7, GET_TENSOR: 8, COPY_TENSOR: 9, GRAPH_COMPUTE: 10, GET_DEVICE_MEMORY: 11,
  INIT_TENSOR: 12, GET_ALLOC_SIZE: 13, HELLO: 14, DEVICE_COUNT: 15, GRAPH_RECOMPUTE: 16, MEMSET_TENSOR: 17,
} as const;
const CMD_NAMES = Object.fromEntries(Object.entries(RPC_CMD).map(([k, v]) => [v, k])) as Record<number, string>;

/** sizeof(rpc_tensor) with GGML_MAX_DIMS 4, GGML_MAX_OP_PARAMS 64, GGML_MAX_SRC 10, GGML_MAX_NAME 64. */
export const RPC_TENSOR_BYTES = 296;
const HELLO_BYTES = 24;
/** rpc_tensor + cache_flag (1) + offset (8): what precedes a SET_TENSOR's data. */
const SET_TENSOR_HEAD = RPC_TENSOR_BYTES + 9;

/** Payload size of each fixed-size request; SET_TENSOR and GRAPH_COMPUTE vary. */
const FIXED_REQUEST: Record<number, number> = {
  [RPC_CMD.ALLOC_BUFFER]: 12, [RPC_CMD.GET_ALIGNMENT]: 4, [RPC_CMD.GET_MAX_SIZE]: 4, [RPC_CMD.BUFFER_GET_BASE]: 8,
  [RPC_CMD.FREE_BUFFER]: 8, [RPC_CMD.BUFFER_CLEAR]: 9, [RPC_CMD.SET_TENSOR_HASH]: RPC_TENSOR_BYTES + 16,
  [RPC_CMD.GET_TENSOR]: RPC_TENSOR_BYTES + 16, [RPC_CMD.COPY_TENSOR]: 2 * RPC_TENSOR_BYTES, [RPC_CMD.GET_DEVICE_MEMORY]: 4,
  [RPC_CMD.INIT_TENSOR]: RPC_TENSOR_BYTES, [RPC_CMD.GET_ALLOC_SIZE]: 4 + 11 * RPC_TENSOR_BYTES, [RPC_CMD.HELLO]: HELLO_BYTES,
  [RPC_CMD.DEVICE_COUNT]: 0, [RPC_CMD.GRAPH_RECOMPUTE]: 4, [RPC_CMD.MEMSET_TENSOR]: RPC_TENSOR_BYTES + 17,
};
/** Commands the server answers (the rest are fire-and-forget). */
const ANSWERED = new Set<number>([
  RPC_CMD.HELLO, RPC_CMD.DEVICE_COUNT, RPC_CMD.ALLOC_BUFFER, RPC_CMD.GET_ALLOC_SIZE, RPC_CMD.GET_ALIGNMENT, RPC_CMD.GET_MAX_SIZE,
  RPC_CMD.BUFFER_GET_BASE, RPC_CMD.SET_TENSOR_HASH, RPC_CMD.GET_TENSOR, RPC_CMD.COPY_TENSOR, RPC_CMD.GET_DEVICE_MEMORY,
]);
/**
 * A serialised graph is 8 bytes a node plus one rpc_tensor per tensor: an 80-layer model's graph is a
 * few MB. The server buffers the whole message before parsing it, so the bound is what it may hold.
 */
export const MAX_GRAPH_BYTES = 64 << 20;

/** What one contract may make its rpc-server hold. */
export interface RpcLimits {
  /** Bytes of live buffers (weights, KV cache, compute) across the contract's connections. */
  allocBytes: number;
  /** Bytes of SET_TENSOR data rpc-server may write to its tensor cache for this contract. */
  cacheBytes: number;
  /** How the cap was computed, for logs and refusals. */
  basis: string;
}

/** Head room over the contracted layers' weights, stated once (README, Security). */
export const KV_SHARE = 0.25;
export const COMPUTE_MARGIN_BYTES = 512 << 20;
/** A tensor resent after a reload goes to the cache again (same hash, same file): one extra copy. */
export const CACHE_MARGIN_BYTES = 64 << 20;

/**
 * The cap for `layers` layers of `layerBytes` each (the head's call for proposals states layerBytes,
 * and it is what the worker's agent checked against its lendable memory before it signed): the
 * weights, a quarter more for the KV cache of those layers, and a fixed compute-buffer margin.
 */
export function limitsForLayers(layers: number, layerBytes: number, source: string): RpcLimits {
  const weights = layers * layerBytes;
  return {
    allocBytes: Math.ceil(weights * (1 + KV_SHARE)) + COMPUTE_MARGIN_BYTES,
    cacheBytes: weights + CACHE_MARGIN_BYTES,
    basis: `${layers} layer(s) × ${fmtBytes(layerBytes)} (${source}) + ${KV_SHARE * 100}% KV + ${fmtBytes(COMPUTE_MARGIN_BYTES)} compute`,
  };
}

export function fmtBytes(n: number): string {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(2)} GiB`;
  if (n >= 2 ** 20) return `${(n / 2 ** 20).toFixed(1)} MiB`;
  if (n >= 2 ** 10) return `${(n / 2 ** 10).toFixed(1)} KiB`;
  return `${n} B`;
}

/** A command the worker refused to pass on; the connection is cut. */
export class RpcCapExceeded extends Error {
  constructor(readonly command: string, readonly reason: string) {
    super(reason);
    this.name = 'RpcCapExceeded';
  }
}

/** One contract's running totals, shared by all of its connections. */
export class ContractMeter {
  allocated = 0;
  peakAllocated = 0;
  cached = 0;
  refused = 0;
  /** Token rows the contract's layers computed (graphRows per GRAPH_COMPUTE, repeated by GRAPH_RECOMPUTE). */
  rows = 0;
  graphs = 0;
  /** Graphs in which no row count was found (no MUL_MAT node): computed, but counted as 0 rows. */
  uncounted = 0;
  /** When rows were last counted (ms): the receipt audit waits for a quiet meter before it judges a shortfall. */
  lastAt = 0;
  constructor(readonly contractId: string, readonly limits: RpcLimits) {}

  add(n: number): void {
    this.allocated += n;
    this.peakAllocated = Math.max(this.peakAllocated, this.allocated);
  }

  count(rows: number, now = Date.now()): void {
    this.rows += rows;
    this.graphs++;
    if (rows === 0) this.uncounted++;
    this.lastAt = now;
  }
}

/** ggml_op values (ggml.h of the llama.cpp the engine builds; the enum has been append-mostly). */
export const GGML_OP_MUL_MAT = 29;
const T_NE = 20;
const T_OP = 52;
const T_NAME = 228;

/**
 * Token rows one serialised graph computes: the largest ne[1] of its MUL_MAT nodes. Every matrix
 * product a transformer layer does on its activations has the ubatch's tokens as ne[1]: the weight
 * products ([n_out, n_tokens]) and the attention products (KQ [n_kv, n_tokens, n_head], KQV
 * [head_dim, n_tokens, n_head]). Rows pruned to the outputs on the last layer (get_rows on
 * inp_out_ids) come after its attention, so the maximum is still the whole ubatch. Counting the
 * work's shape rather than names (attn_norm-N, inp_pos) keeps a head that renames tensors from
 * hiding rows. Limits: a graph with no MUL_MAT counts 0 (counted apart as `uncounted`); a head
 * running a patched llama.cpp that lays products out transposed ([n_tokens, n_out]) could make
 * rows look like n_out (more, not less, than the truth, for n_tokens < n_out) or hide work in ops
 * other than MUL_MAT; MoE expert products (MUL_MAT_ID) are not looked at, their layers' attention
 * products carry the count.
 *
 * Layout: | device u32 | n_nodes u32 | nodes u64 × n_nodes | n_tensors u32 | rpc_tensor × n_tensors |.
 */
export function graphRows(body: Buffer): { device: number; rows: number } {
  if (body.byteLength < 8) return { device: 0, rows: 0 };
  const device = body.readUInt32LE(0);
  const nNodes = body.readUInt32LE(4);
  const at = 8 + 8 * nNodes;
  if (body.byteLength < at + 4) return { device, rows: 0 };
  const nTensors = body.readUInt32LE(at);
  let rows = 0;
  for (let i = 0; i < nTensors; i++) {
    const t = at + 4 + i * RPC_TENSOR_BYTES;
    if (t + RPC_TENSOR_BYTES > body.byteLength) break;
    if (body.readUInt32LE(t + T_OP) === GGML_OP_MUL_MAT) rows = Math.max(rows, body.readUInt32LE(t + T_NE + 4));
  }
  return { device, rows };
}

/** A tensor's name in an rpc_tensor (NUL-terminated, at most 64 bytes); for logs and tests. */
export function tensorName(t: Buffer): string {
  const raw = t.subarray(T_NAME, T_NAME + 64);
  const end = raw.indexOf(0);
  return raw.subarray(0, end < 0 ? 64 : end).toString('utf8');
}

type Parsed = { out: Uint8Array[] };

/**
 * One connection's view of the protocol. `fromHead` and `fromServer` take the bytes of each
 * direction as they arrive and return what may be passed on, or throw RpcCapExceeded.
 */
export class RpcGuard {
  /** Buffers this connection holds on the server: remote_ptr → size. */
  private readonly live = new Map<bigint, number>();
  /** Answered commands in flight; an ALLOC_BUFFER carries the size it reserved. */
  private readonly expect: Array<{ cmd: number; reserved: number }> = [];
  private greeted = false;
  private closed = false;
  /** Rows of the graph each device last stored: GRAPH_RECOMPUTE runs it again. */
  private readonly lastRows = new Map<number, number>();
  private readonly head = new Framer(9);
  private readonly server = new Framer(8);

  constructor(private readonly meter: ContractMeter, private readonly o: { cache: boolean }) {}

  /** Bytes from the head, toward rpc-server. */
  fromHead(chunk: Uint8Array): Uint8Array[] {
    return this.head.push(chunk, (hdr) => this.inspectRequest(hdr), (hdr, body) => this.decideRequest(hdr, body)).out;
  }

  /** Bytes from rpc-server, toward the head. */
  fromServer(chunk: Uint8Array): Uint8Array[] {
    return this.server.push(chunk, (hdr) => this.inspectReply(hdr), (hdr, body) => this.decideReply(hdr, body)).out;
  }

  /** The connection is gone: rpc-server frees its buffers when its client leaves (~rpc_server). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    let held = 0;
    for (const n of this.live.values()) held += n;
    for (const e of this.expect) held += e.reserved;
    this.live.clear();
    this.expect.length = 0;
    this.meter.allocated -= held;
  }

  private refuse(cmd: number, reason: string): never {
    this.meter.refused++;
    throw new RpcCapExceeded(CMD_NAMES[cmd] ?? `command ${cmd}`, reason);
  }

  /** How many payload bytes to hold back before deciding on a request (the rest streams through). */
  private inspectRequest(hdr: Buffer): { size: number; inspect: number } {
    const cmd = hdr[0];
    const big = hdr.readBigUInt64LE(1);
    const name = CMD_NAMES[cmd];
    if (name === undefined) this.refuse(cmd, `unknown ggml-rpc command ${cmd}`);
    if (!this.greeted && cmd !== RPC_CMD.HELLO) this.refuse(cmd, `${name} before HELLO`);
    if (this.greeted && cmd === RPC_CMD.HELLO) this.refuse(cmd, 'a second HELLO');
    const fixed = FIXED_REQUEST[cmd];
    if (fixed !== undefined && big !== BigInt(fixed)) this.refuse(cmd, `${name} of ${big} bytes (it has ${fixed})`);
    const l = this.meter.limits;
    if (cmd === RPC_CMD.GRAPH_COMPUTE && big > BigInt(MAX_GRAPH_BYTES)) {
      this.refuse(cmd, `GRAPH_COMPUTE of ${fmtBytes(Number(big))} exceeds the ${fmtBytes(MAX_GRAPH_BYTES)} a graph may take`);
    }
    if (cmd === RPC_CMD.SET_TENSOR) {
      // rpc-server buffers the whole message before it checks it against the tensor's buffer.
      if (big < BigInt(SET_TENSOR_HEAD)) this.refuse(cmd, `SET_TENSOR of ${big} bytes is shorter than its header`);
      const data = Number(big) - SET_TENSOR_HEAD;
      const largest = Math.max(0, ...this.live.values());
      if (big > BigInt(l.allocBytes) || data > largest) {
        this.refuse(cmd, `SET_TENSOR of ${fmtBytes(data)} is larger than any buffer this connection holds (${fmtBytes(largest)})`);
      }
    }
    const size = Number(big);
    // A graph is read whole to count its rows (it is at most MAX_GRAPH_BYTES, and rpc-server holds it whole too).
    return { size, inspect: fixed ?? (cmd === RPC_CMD.SET_TENSOR ? SET_TENSOR_HEAD : cmd === RPC_CMD.GRAPH_COMPUTE ? size : 0) };
  }

  private decideRequest(hdr: Buffer, body: Buffer): void {
    const cmd = hdr[0];
    const m = this.meter;
    const l = m.limits;
    switch (cmd) {
      case RPC_CMD.HELLO:
        // Transport capabilities ask for an RDMA upgrade, which would take the traffic off this
        // metered socket: the worker's answer is plain TCP.
        body.fill(0);
        this.greeted = true;
        break;
      case RPC_CMD.ALLOC_BUFFER: {
        const want = body.readBigUInt64LE(4);
        if (want > BigInt(l.allocBytes - m.allocated)) {
          this.refuse(cmd, `ALLOC_BUFFER of ${fmtBytes(Number(want))} would bring contract ${m.contractId}'s buffers to ` +
            `${fmtBytes(m.allocated + Number(want))}, over its cap of ${fmtBytes(l.allocBytes)} (${l.basis})`);
        }
        m.add(Number(want));
        this.expect.push({ cmd, reserved: Number(want) });
        return;
      }
      case RPC_CMD.FREE_BUFFER: {
        const ptr = body.readBigUInt64LE(0);
        const n = this.live.get(ptr);
        if (n !== undefined) { this.live.delete(ptr); m.allocated -= n; }
        break;
      }
      case RPC_CMD.GRAPH_COMPUTE: {
        const g = graphRows(body);
        this.lastRows.set(g.device, g.rows);
        m.count(g.rows);
        break;
      }
      case RPC_CMD.GRAPH_RECOMPUTE:
        m.count(this.lastRows.get(body.readUInt32LE(0)) ?? 0);
        break;
      case RPC_CMD.SET_TENSOR: {
        const cacheFlag = body[RPC_TENSOR_BYTES];
        const data = Number(hdr.readBigUInt64LE(1)) - SET_TENSOR_HEAD;
        if (this.o.cache && cacheFlag !== 0) {
          if (m.cached + data > l.cacheBytes) {
            this.refuse(cmd, `SET_TENSOR would write ${fmtBytes(data)} to the tensor cache, bringing contract ${m.contractId}'s ` +
              `cache writes to ${fmtBytes(m.cached + data)}, over its cap of ${fmtBytes(l.cacheBytes)}`);
          }
          m.cached += data;
        }
        break;
      }
    }
    if (ANSWERED.has(cmd)) this.expect.push({ cmd, reserved: 0 });
  }

  private inspectReply(hdr: Buffer): { size: number; inspect: number } {
    const e = this.expect[0];
    if (e === undefined) throw new RpcCapExceeded('reply', 'rpc-server sent a reply nobody asked for');
    const size = Number(hdr.readBigUInt64LE(0));
    const inspect = (e.cmd === RPC_CMD.ALLOC_BUFFER && size === 16) || (e.cmd === RPC_CMD.HELLO && size === 4 + HELLO_BYTES) ? size : 0;
    return { size, inspect };
  }

  private decideReply(_hdr: Buffer, body: Buffer): void {
    const e = this.expect.shift()!;
    if (e.cmd === RPC_CMD.HELLO) body.fill(0, 4); // the server's conn_caps: plain TCP both ways (see HELLO above)
    if (e.cmd !== RPC_CMD.ALLOC_BUFFER) return;
    this.meter.allocated -= e.reserved;
    if (body.byteLength < 16) return;
    const ptr = body.readBigUInt64LE(0);
    const size = Number(body.readBigUInt64LE(8));
    if (ptr === 0n) return; // the allocation failed: nothing is held
    this.live.set(ptr, size);
    this.meter.add(size);
  }
}

/**
 * Splits one direction's byte stream into messages: it holds back a message's header and the part
 * of its payload that a decision needs, then lets the rest stream through untouched (SET_TENSOR
 * payloads are hundreds of MB; they are never buffered here).
 */
class Framer {
  private held: Buffer = Buffer.alloc(0);
  private parts: Buffer[] = [];
  private heldBytes = 0;
  private need: number;
  private stage: 'header' | 'inspect' | 'stream' = 'header';
  private left = 0;
  private size = 0;
  private hdr: Buffer = Buffer.alloc(0);

  constructor(private readonly headerBytes: number) {
    this.need = headerBytes;
  }

  push(
    chunk: Uint8Array,
    inspect: (hdr: Buffer) => { size: number; inspect: number },
    decide: (hdr: Buffer, body: Buffer) => void,
  ): Parsed {
    const out: Uint8Array[] = [];
    let c = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    while (c.byteLength > 0) {
      if (this.stage === 'stream') {
        const take = Math.min(this.left, c.byteLength);
        out.push(c.subarray(0, take));
        c = c.subarray(take);
        this.left -= take;
        if (this.left === 0) this.next();
        continue;
      }
      const take = Math.min(this.need - this.heldBytes, c.byteLength);
      // Parts are copied and joined once, when complete: a graph of a few MB arrives in many chunks.
      if (take > 0) { this.parts.push(Buffer.from(c.subarray(0, take))); this.heldBytes += take; c = c.subarray(take); }
      if (this.heldBytes < this.need) break;
      this.held = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
      this.parts = [this.held];
      if (this.stage === 'header') {
        this.hdr = this.held;
        const r = inspect(this.hdr);
        this.size = r.size;
        if (r.inspect > 0) { this.stage = 'inspect'; this.need = this.headerBytes + r.inspect; continue; }
        decide(this.hdr, Buffer.alloc(0));
        out.push(this.held);
        this.startStream(this.size);
      } else {
        decide(this.hdr, this.held.subarray(this.headerBytes));
        out.push(this.held);
        this.startStream(this.size - (this.need - this.headerBytes));
      }
    }
    return { out };
  }

  private startStream(left: number): void {
    this.held = Buffer.alloc(0);
    this.parts = [];
    this.heldBytes = 0;
    this.left = left;
    if (left > 0) this.stage = 'stream';
    else this.next();
  }

  private next(): void {
    this.stage = 'header';
    this.need = this.headerBytes;
    this.held = Buffer.alloc(0);
    this.parts = [];
    this.heldBytes = 0;
  }
}
