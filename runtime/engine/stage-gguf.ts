// Cuts a GGUF into the files the chain engine runs (see stage/clawmesh-stage.cpp):
//  - a *stage* file per contracted layer range [start, end): those layers renumbered from 0, plus
//    the few tensors llama.cpp insists on loading (token embeddings, output norm, output) shrunk to
//    a one-token dummy vocabulary, so a worker receives and holds only its own layers;
//  - the *ends* file the head keeps: the real vocabulary, token embeddings, output norm and output
//    matrix around a single identity layer (all-zero weights: each residual adds exactly 0, so the
//    hidden state passes through bit for bit) whose attention and FFN are shrunk to 32 wide.
// Only architectures whose layers are uniform can be renumbered this way; others are refused by
// name rather than silently computing something else.
import { closeSync, openSync, readSync } from 'node:fs';
import { readGgufHeader, type GgufHeader, type GgufTensorInfo } from './gguf-reader.js';
import { GgmlType, GgufType, gguf, tensorByteLength, type GgufValue } from './gguf-types.js';
import { writeGguf, type GgufTensorSpec } from './gguf-writer.js';

/** Architectures whose graph names each layer's output "l_out-<il>" and whose layers are all alike. */
export const CHAIN_ARCHITECTURES: readonly string[] = ['llama'];

/** Width of the ends file's identity layer: small enough to cost nothing, a multiple of every block size. */
const IDENTITY_WIDTH = 32;

export interface ModelShape {
  arch: string;
  nLayer: number;
  nEmbd: number;
}

export function modelShape(h: GgufHeader, path = 'model'): ModelShape {
  const arch = str(h, 'general.architecture', path);
  if (!CHAIN_ARCHITECTURES.includes(arch)) {
    throw new Error(`${path}: architecture "${arch}" cannot be cut into chain stages yet (supported: ${CHAIN_ARCHITECTURES.join(', ')})`);
  }
  return { arch, nLayer: num(h, `${arch}.block_count`, path), nEmbd: num(h, `${arch}.embedding_length`, path) };
}

function str(h: GgufHeader, key: string, path: string): string {
  const v = h.metadata.get(key);
  if (!v || v.type !== GgufType.STRING) throw new Error(`${path}: metadata ${key} is missing`);
  return v.value;
}

function num(h: GgufHeader, key: string, path: string): number {
  const v = h.metadata.get(key);
  if (!v || typeof v.value !== 'number') throw new Error(`${path}: metadata ${key} is missing`);
  return v.value;
}

/** Streams a tensor's bytes from the source file in 4 MiB pieces. */
function copyFrom(src: string, h: GgufHeader, t: GgufTensorInfo): GgufTensorSpec {
  const size = tensorByteLength(t.type as GgmlType, t.dims);
  return {
    name: t.name,
    dims: t.dims,
    type: t.type as GgmlType,
    write: (emit) => {
      const fd = openSync(src, 'r');
      try {
        const chunk = Buffer.alloc(Math.min(size, 4 << 20));
        for (let done = 0; done < size; ) {
          const n = readSync(fd, chunk, 0, Math.min(chunk.length, size - done), h.dataOffset + t.offset + done);
          if (n === 0) throw new Error(`${src}: tensor ${t.name} is truncated`);
          emit(chunk.subarray(0, n));
          done += n;
        }
      } finally {
        closeSync(fd);
      }
    },
  };
}

function filled(name: string, dims: number[], value: number): GgufTensorSpec {
  const n = dims.reduce((a, b) => a * b, 1);
  return {
    name,
    dims,
    type: GgmlType.F32,
    write: (emit) => {
      const b = new Float32Array(n).fill(value);
      emit(new Uint8Array(b.buffer));
    },
  };
}

/** Metadata minus the keys the caller replaces; arrays indexed by layer are cut to the range. */
function carryMetadata(h: GgufHeader, shape: ModelShape, range: { start: number; end: number } | undefined, drop: (k: string) => boolean): Array<[string, GgufValue]> {
  const out: Array<[string, GgufValue]> = [];
  for (const [k, v] of h.metadata) {
    if (drop(k)) continue;
    if (range && v.type === GgufType.ARRAY && k.startsWith(`${shape.arch}.`) && v.value.length === shape.nLayer) {
      out.push([k, { ...v, value: v.value.slice(range.start, range.end) }]);
      continue;
    }
    out.push([k, v]);
  }
  return out;
}

/** Writes the stage file for layers [start, end) of `src`; returns its size in bytes. */
export function writeStageGguf(src: string, dst: string, range: { start: number; end: number }): number {
  const h = readGgufHeader(src);
  const shape = modelShape(h, src);
  const { start, end } = range;
  if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > shape.nLayer || end <= start) {
    throw new Error(`${src}: layer range [${start}, ${end}) is not inside [0, ${shape.nLayer})`);
  }
  const a = shape.arch;
  const replaced = new Set([`${a}.block_count`, `${a}.vocab_size`, 'general.name']);
  const metadata = carryMetadata(h, shape, range, (k) => k.startsWith('tokenizer.') || replaced.has(k));
  metadata.push(
    ['general.name', gguf.str(`${nameOf(h)} layers ${start}-${end - 1}`)],
    [`${a}.block_count`, gguf.u32(end - start)],
    [`${a}.vocab_size`, gguf.u32(1)],
    ['tokenizer.ggml.model', gguf.str('none')],
    ['clawmesh.stage.layers', gguf.arr(GgufType.UINT32, [start, end])],
  );
  const tensors: GgufTensorSpec[] = [
    filled('token_embd.weight', [shape.nEmbd, 1], 0),
    filled('output_norm.weight', [shape.nEmbd], 1),
    filled('output.weight', [shape.nEmbd, 1], 0),
  ];
  for (const t of h.tensors) {
    const m = /^blk\.(\d+)\.(.+)$/.exec(t.name);
    if (m) {
      const il = Number(m[1]);
      if (il >= start && il < end) tensors.push({ ...copyFrom(src, h, t), name: `blk.${il - start}.${m[2]}` });
    } else if (t.name === 'rope_freqs.weight') {
      tensors.push(copyFrom(src, h, t)); // shared by every layer
    }
  }
  return writeGguf(dst, { metadata, tensors, alignment: h.alignment });
}

/** Writes the head's ends file (vocabulary, embeddings, output norm and matrix, one identity layer). */
export function writeEndsGguf(src: string, dst: string): number {
  const h = readGgufHeader(src);
  const shape = modelShape(h, src);
  const a = shape.arch;
  const w = IDENTITY_WIDTH;
  const shrunk: Array<[string, number]> = [
    [`${a}.block_count`, 1],
    [`${a}.feed_forward_length`, w],
    [`${a}.attention.head_count`, 1],
    [`${a}.attention.head_count_kv`, 1],
    [`${a}.attention.key_length`, w],
    [`${a}.attention.value_length`, w],
    [`${a}.rope.dimension_count`, w],
  ];
  const replaced = new Set(['general.name', ...shrunk.map(([k]) => k)]);
  const metadata = carryMetadata(h, shape, undefined, (k) => replaced.has(k));
  metadata.push(['general.name', gguf.str(`${nameOf(h)} ends`)], ...shrunk.map(([k, v]): [string, GgufValue] => [k, gguf.u32(v)]));
  const byName = new Map(h.tensors.map((t) => [t.name, t]));
  const tensors: GgufTensorSpec[] = [];
  for (const name of ['token_embd.weight', 'output_norm.weight', 'output.weight']) {
    const t = byName.get(name);
    if (t) tensors.push(copyFrom(src, h, t));
    else if (name !== 'output.weight') throw new Error(`${src}: tensor ${name} is missing`); // output may be tied to token_embd
  }
  const e = shape.nEmbd;
  const layer: Array<[string, number[]]> = [
    ['attn_norm.weight', [e]],
    ['attn_q.weight', [e, w]],
    ['attn_k.weight', [e, w]],
    ['attn_v.weight', [e, w]],
    ['attn_output.weight', [w, e]],
    ['ffn_norm.weight', [e]],
    ['ffn_gate.weight', [e, w]],
    ['ffn_up.weight', [e, w]],
    ['ffn_down.weight', [w, e]],
  ];
  for (const [n, dims] of layer) tensors.push(filled(`blk.0.${n}`, dims, 0));
  return writeGguf(dst, { metadata, tensors, alignment: h.alignment });
}

function nameOf(h: GgufHeader): string {
  const v = h.metadata.get('general.name');
  return v && v.type === GgufType.STRING ? v.value : 'model';
}
