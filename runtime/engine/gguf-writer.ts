// Minimal GGUF v3 writer: header, typed metadata, tensor infos, aligned tensor data.
// Tensor data is streamed from callbacks so multi-hundred-MB models never sit in memory whole.
import { closeSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import {
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GGUF_VERSION,
  GgmlType,
  GgufType,
  alignUp,
  tensorByteLength,
  type GgufArrayItem,
  type GgufValue,
} from './gguf-types.js';

export interface GgufTensorSpec {
  name: string;
  /** ggml order: dims[0] is the fastest-varying (row length). */
  dims: number[];
  type: GgmlType;
  /** Must emit exactly tensorByteLength(type, dims) bytes, in order. */
  write: (emit: (chunk: Uint8Array) => void) => void;
}

export interface GgufFileSpec {
  /** Insertion order is preserved on disk, which keeps output byte-identical for identical input. */
  metadata: Array<[string, GgufValue]>;
  tensors: GgufTensorSpec[];
  alignment?: number;
}

/** Growable little-endian byte buffer for the header. */
class ByteSink {
  private buf = Buffer.alloc(1 << 16);
  length = 0;
  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }
  u8(v: number) { this.reserve(1); this.buf.writeUInt8(v, this.length); this.length += 1; }
  i8(v: number) { this.reserve(1); this.buf.writeInt8(v, this.length); this.length += 1; }
  u16(v: number) { this.reserve(2); this.buf.writeUInt16LE(v, this.length); this.length += 2; }
  i16(v: number) { this.reserve(2); this.buf.writeInt16LE(v, this.length); this.length += 2; }
  u32(v: number) { this.reserve(4); this.buf.writeUInt32LE(v, this.length); this.length += 4; }
  i32(v: number) { this.reserve(4); this.buf.writeInt32LE(v, this.length); this.length += 4; }
  f32(v: number) { this.reserve(4); this.buf.writeFloatLE(v, this.length); this.length += 4; }
  f64(v: number) { this.reserve(8); this.buf.writeDoubleLE(v, this.length); this.length += 8; }
  u64(v: bigint | number) { this.reserve(8); this.buf.writeBigUInt64LE(BigInt(v), this.length); this.length += 8; }
  i64(v: bigint) { this.reserve(8); this.buf.writeBigInt64LE(v, this.length); this.length += 8; }
  bytes(b: Uint8Array) { this.reserve(b.length); this.buf.set(b, this.length); this.length += b.length; }
  str(s: string) { const b = Buffer.from(s, 'utf8'); this.u64(b.length); this.bytes(b); }
  zeros(n: number) { this.reserve(n); this.buf.fill(0, this.length, this.length + n); this.length += n; }
  view(): Buffer { return this.buf.subarray(0, this.length); }
}

function writeScalar(out: ByteSink, type: GgufType, v: GgufArrayItem, where: string): void {
  const num = () => {
    if (typeof v !== 'number') throw new Error(`${where}: expected a number for ${GgufType[type]}, got ${typeof v}`);
    return v;
  };
  switch (type) {
    case GgufType.UINT8: return out.u8(num());
    case GgufType.INT8: return out.i8(num());
    case GgufType.UINT16: return out.u16(num());
    case GgufType.INT16: return out.i16(num());
    case GgufType.UINT32: return out.u32(num());
    case GgufType.INT32: return out.i32(num());
    case GgufType.FLOAT32: return out.f32(num());
    case GgufType.FLOAT64: return out.f64(num());
    case GgufType.UINT64: return out.u64(BigInt(v as bigint | number));
    case GgufType.INT64: return out.i64(BigInt(v as bigint | number));
    case GgufType.BOOL: return out.u8(v ? 1 : 0);
    case GgufType.STRING:
      if (typeof v !== 'string') throw new Error(`${where}: expected a string, got ${typeof v}`);
      return out.str(v);
    case GgufType.ARRAY: {
      if (typeof v !== 'object' || v === null) throw new Error(`${where}: expected a nested array`);
      return writeArray(out, v.itemType, v.value, where);
    }
    default:
      throw new Error(`${where}: unknown GGUF value type ${type}`);
  }
}

function writeArray(out: ByteSink, itemType: GgufType, items: GgufArrayItem[], where: string): void {
  out.u32(itemType);
  out.u64(items.length);
  for (let i = 0; i < items.length; i++) writeScalar(out, itemType, items[i], `${where}[${i}]`);
}

function writeValue(out: ByteSink, key: string, v: GgufValue): void {
  out.u32(v.type);
  if (v.type === GgufType.ARRAY) writeArray(out, v.itemType, v.value, key);
  else writeScalar(out, v.type, v.value, key);
}

/** Serialises everything before the tensor data (already padded), plus each tensor's data offset. */
export function encodeGgufHeader(spec: GgufFileSpec): { header: Buffer; offsets: number[]; sizes: number[]; alignment: number } {
  const alignment = spec.alignment ?? GGUF_DEFAULT_ALIGNMENT;
  const keys = new Set<string>();
  for (const [k] of spec.metadata) {
    if (keys.has(k)) throw new Error(`duplicate GGUF metadata key "${k}"`);
    keys.add(k);
  }
  const metadata = [...spec.metadata];
  // llama.cpp reads general.alignment if present; only write it when it differs from the default.
  if (alignment !== GGUF_DEFAULT_ALIGNMENT && !keys.has('general.alignment')) {
    metadata.push(['general.alignment', { type: GgufType.UINT32, value: alignment }]);
  }
  const out = new ByteSink();
  out.u32(GGUF_MAGIC);
  out.u32(GGUF_VERSION);
  out.u64(spec.tensors.length);
  out.u64(metadata.length);
  for (const [k, v] of metadata) {
    out.str(k);
    writeValue(out, k, v);
  }
  const offsets: number[] = [];
  const sizes: number[] = [];
  let offset = 0;
  const names = new Set<string>();
  for (const t of spec.tensors) {
    if (names.has(t.name)) throw new Error(`duplicate tensor name "${t.name}"`);
    names.add(t.name);
    const size = tensorByteLength(t.type, t.dims);
    out.str(t.name);
    out.u32(t.dims.length);
    for (const d of t.dims) out.u64(d);
    out.u32(t.type);
    out.u64(offset);
    offsets.push(offset);
    sizes.push(size);
    offset = alignUp(offset + size, alignment);
  }
  out.zeros(alignUp(out.length, alignment) - out.length);
  return { header: Buffer.from(out.view()), offsets, sizes, alignment };
}

/**
 * Writes a GGUF file atomically (temp file + rename) so an interrupted run never leaves
 * a truncated model where a later run would trust it. Returns the file size in bytes.
 */
export function writeGguf(path: string, spec: GgufFileSpec): number {
  const { header, sizes, alignment } = encodeGgufHeader(spec);
  const tmp = `${path}.tmp-${process.pid}`;
  const fd = openSync(tmp, 'w');
  let pos = 0;
  const put = (b: Uint8Array) => {
    let done = 0;
    while (done < b.length) done += writeSync(fd, b, done, b.length - done);
    pos += b.length;
  };
  try {
    put(header);
    spec.tensors.forEach((t, i) => {
      const start = pos;
      t.write(put);
      const wrote = pos - start;
      if (wrote !== sizes[i]) {
        throw new Error(`tensor "${t.name}" wrote ${wrote} bytes, expected ${sizes[i]} (${GgmlType[t.type]} ${t.dims.join('x')})`);
      }
      const pad = alignUp(pos, alignment) - pos;
      if (pad > 0) put(new Uint8Array(pad)); // gguf-py pads the last tensor too
    });
    closeSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw new Error(`writing GGUF ${path} failed: ${(err as Error).message}`, { cause: err });
  }
  renameSync(tmp, path);
  return pos;
}
