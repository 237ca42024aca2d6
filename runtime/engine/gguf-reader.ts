// GGUF header reader that keeps exact value types, so metadata (e.g. a tokenizer) can be copied
// into a new file losslessly. Reads the file incrementally: only the header is pulled into memory.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufType, alignUp, type GgufArrayItem, type GgufValue } from './gguf-types.js';

export interface GgufTensorInfo {
  name: string;
  dims: number[];
  type: number;
  /** Relative to dataOffset. */
  offset: number;
}

export interface GgufHeader {
  version: number;
  metadata: Map<string, GgufValue>;
  tensors: GgufTensorInfo[];
  alignment: number;
  /** Absolute file offset where tensor data begins. */
  dataOffset: number;
  fileSize: number;
}

class Cursor {
  private buf = Buffer.alloc(0);
  private bufStart = 0; // file offset of buf[0]
  pos = 0; // absolute file offset
  constructor(private fd: number, readonly size: number, private path: string) {}

  private need(n: number): void {
    const end = this.pos + n;
    if (end > this.size) throw new Error(`${this.path}: truncated GGUF (need byte ${end}, file has ${this.size})`);
    if (this.pos >= this.bufStart && end <= this.bufStart + this.buf.length) return;
    const len = Math.min(Math.max(n, 1 << 20), this.size - this.pos);
    this.buf = Buffer.alloc(len);
    let got = 0;
    while (got < len) {
      const r = readSync(this.fd, this.buf, got, len - got, this.pos + got);
      if (r === 0) throw new Error(`${this.path}: unexpected end of file at ${this.pos + got}`);
      got += r;
    }
    this.bufStart = this.pos;
  }
  /** Advances past n bytes and returns their index in buf (call before touching this.buf: it may be replaced). */
  private at(n: number): number {
    this.need(n);
    const o = this.pos - this.bufStart;
    this.pos += n;
    return o;
  }
  u8() { const o = this.at(1); return this.buf.readUInt8(o); }
  i8() { const o = this.at(1); return this.buf.readInt8(o); }
  u16() { const o = this.at(2); return this.buf.readUInt16LE(o); }
  i16() { const o = this.at(2); return this.buf.readInt16LE(o); }
  u32() { const o = this.at(4); return this.buf.readUInt32LE(o); }
  i32() { const o = this.at(4); return this.buf.readInt32LE(o); }
  f32() { const o = this.at(4); return this.buf.readFloatLE(o); }
  f64() { const o = this.at(8); return this.buf.readDoubleLE(o); }
  u64() { const o = this.at(8); return this.buf.readBigUInt64LE(o); }
  i64() { const o = this.at(8); return this.buf.readBigInt64LE(o); }
  /** uint64 that must fit a JS number (counts, lengths, dims). */
  count(what: string) {
    const v = this.u64();
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error(`${this.path}: ${what} ${v} too large at offset ${this.pos - 8}`);
    return Number(v);
  }
  str() {
    const n = this.count('string length');
    const o = this.at(n);
    return this.buf.toString('utf8', o, o + n);
  }
}

function readItem(c: Cursor, type: GgufType, key: string): GgufArrayItem {
  switch (type) {
    case GgufType.UINT8: return c.u8();
    case GgufType.INT8: return c.i8();
    case GgufType.UINT16: return c.u16();
    case GgufType.INT16: return c.i16();
    case GgufType.UINT32: return c.u32();
    case GgufType.INT32: return c.i32();
    case GgufType.FLOAT32: return c.f32();
    case GgufType.FLOAT64: return c.f64();
    case GgufType.UINT64: return c.u64();
    case GgufType.INT64: return c.i64();
    case GgufType.BOOL: return c.u8() !== 0;
    case GgufType.STRING: return c.str();
    case GgufType.ARRAY: {
      const itemType = c.u32();
      const n = c.count(`array length of ${key}`);
      const value: GgufArrayItem[] = new Array(n);
      for (let i = 0; i < n; i++) value[i] = readItem(c, itemType, key);
      return { itemType, value };
    }
    default:
      throw new Error(`unknown GGUF value type ${type} for key "${key}" at offset ${c.pos - 4}`);
  }
}

export function readGgufHeader(path: string): GgufHeader {
  const fd = openSync(path, 'r');
  try {
    const c = new Cursor(fd, fstatSync(fd).size, path);
    if (c.u32() !== GGUF_MAGIC) throw new Error(`${path}: not a GGUF file (bad magic)`);
    const version = c.u32();
    if (version < 2 || version > 3) throw new Error(`${path}: unsupported GGUF version ${version}`);
    const nTensors = c.count('tensor count');
    const nKv = c.count('metadata count');
    const metadata = new Map<string, GgufValue>();
    for (let i = 0; i < nKv; i++) {
      const key = c.str();
      const type = c.u32() as GgufType;
      const item = readItem(c, type, key);
      metadata.set(
        key,
        (type === GgufType.ARRAY
          ? { type, ...(item as { itemType: GgufType; value: GgufArrayItem[] }) }
          : { type, value: item }) as GgufValue,
      );
    }
    const tensors: GgufTensorInfo[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = c.str();
      const nDims = c.u32();
      const dims: number[] = [];
      for (let d = 0; d < nDims; d++) dims.push(c.count(`dim of ${name}`));
      const type = c.u32();
      const offset = c.count(`offset of ${name}`);
      tensors.push({ name, dims, type, offset });
    }
    const alignV = metadata.get('general.alignment');
    const alignment = alignV && typeof alignV.value === 'number' ? alignV.value : GGUF_DEFAULT_ALIGNMENT;
    return { version, metadata, tensors, alignment, dataOffset: alignUp(c.pos, alignment), fileSize: c.size };
  } finally {
    closeSync(fd);
  }
}
