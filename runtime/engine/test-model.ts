// Seeded-random llama-architecture GGUF models for tests and benchmarks. They carry a real
// tokenizer (copied from a vocab-only GGUF) so every llama.cpp tool and node-llama-cpp accept
// them, and their weights are scaled so greedy decoding wanders instead of repeating one token.
import { GgmlType, GgufType, gguf, type GgufValue } from './gguf-types.js';
import { readGgufHeader } from './gguf-reader.js';
import { writeGguf, type GgufTensorSpec } from './gguf-writer.js';
import { Xoshiro128, f32ToF16Bits, fnv1a32 } from './prng.js';
import { vocabModelPath } from './source.js';

export type TestWeightType = 'f32' | 'f16' | 'q8_0';

export interface TestModelOptions {
  path: string;
  seed: number;
  nEmbd: number;
  nLayer: number;
  nHead: number;
  nHeadKv?: number;
  nFf: number;
  /** Vocab-only GGUF to borrow tokenizer.* from. Default: llama.cpp's models/ggml-vocab-llama-spm.gguf (32000 tokens). */
  vocabFrom?: string;
  /** Matrix weight type; norms are always f32 as in real llama GGUFs. Default f16. */
  type?: TestWeightType;
  contextLength?: number;
}

export interface TestModelInfo {
  path: string;
  bytes: number;
  nVocab: number;
  nParams: number;
  tensors: number;
}

/**
 * Weight std as a multiple of 1/sqrt(fan_in) (embeddings: absolute). With this Xavier-style scale every
 * residual branch contributes about as much as the embedding and attention scores are content-dependent,
 * so greedy decoding of a random model produces varied tokens (checked in tests/engine) rather than a
 * single repeated token. Kept as a table so experiments change one number.
 */
const SCALE = { tokenEmbd: 1, attn: 1, attnV: 1, attnOut: 1, ffnIn: 1, ffnDown: 1, output: 1 };

const TYPE_INFO: Record<TestWeightType, { ggml: GgmlType; fileType: number }> = {
  f32: { ggml: GgmlType.F32, fileType: 0 }, // LLAMA_FTYPE_ALL_F32
  f16: { ggml: GgmlType.F16, fileType: 1 }, // LLAMA_FTYPE_MOSTLY_F16
  q8_0: { ggml: GgmlType.Q8_0, fileType: 7 }, // LLAMA_FTYPE_MOSTLY_Q8_0
};

const CHUNK = 1 << 15; // elements per emitted chunk; a multiple of the q8_0 block size

/** Emits `n` values from `next()` encoded as `type`. */
function encoder(type: GgmlType, n: number, next: () => number) {
  return (emit: (chunk: Uint8Array) => void) => {
    for (let done = 0; done < n; done += CHUNK) {
      const len = Math.min(CHUNK, n - done);
      if (type === GgmlType.F32) {
        const a = new Float32Array(len);
        for (let i = 0; i < len; i++) a[i] = next();
        emit(new Uint8Array(a.buffer));
      } else if (type === GgmlType.F16) {
        const a = new Uint16Array(len);
        for (let i = 0; i < len; i++) a[i] = f32ToF16Bits(next());
        emit(new Uint8Array(a.buffer));
      } else {
        emit(quantizeQ8_0(Float32Array.from({ length: len }, next)));
      }
    }
  };
}

/** ggml block_q8_0: f16 scale + 32 int8, values ≈ scale * q. */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  if (x.length % 32 !== 0) throw new Error(`q8_0 needs a multiple of 32 values, got ${x.length}`);
  const out = new Uint8Array((x.length / 32) * 34);
  const view = new DataView(out.buffer);
  for (let b = 0, o = 0; b < x.length; b += 32, o += 34) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b + j]));
    const d = Math.fround(amax / 127);
    const id = d ? 1 / d : 0;
    view.setUint16(o, f32ToF16Bits(d), true);
    for (let j = 0; j < 32; j++) view.setInt8(o + 2 + j, Math.max(-127, Math.min(127, Math.round(x[b + j] * id))));
  }
  return out;
}

function validate(o: TestModelOptions): Required<Omit<TestModelOptions, 'vocabFrom'>> & { vocabFrom?: string } {
  const nHeadKv = o.nHeadKv ?? o.nHead;
  const type = o.type ?? 'f16';
  for (const [k, v] of Object.entries({ nEmbd: o.nEmbd, nLayer: o.nLayer, nHead: o.nHead, nHeadKv, nFf: o.nFf })) {
    if (!Number.isInteger(v) || v <= 0) throw new Error(`test model: ${k} must be a positive integer, got ${v}`);
  }
  if (o.nEmbd % o.nHead !== 0) throw new Error(`test model: nEmbd ${o.nEmbd} not divisible by nHead ${o.nHead}`);
  if (o.nHead % nHeadKv !== 0) throw new Error(`test model: nHead ${o.nHead} not divisible by nHeadKv ${nHeadKv}`);
  if ((o.nEmbd / o.nHead) % 2 !== 0) throw new Error(`test model: head dim ${o.nEmbd / o.nHead} must be even for RoPE`);
  if (type === 'q8_0' && (o.nEmbd % 32 || o.nFf % 32)) throw new Error(`test model: q8_0 needs nEmbd and nFf divisible by 32`);
  if (!TYPE_INFO[type]) throw new Error(`test model: type must be f32, f16 or q8_0, got ${type}`);
  return { ...o, nHeadKv, type, contextLength: o.contextLength ?? 2048 };
}

/** Writes the model (atomically) and returns its size. Same options → byte-identical file. */
export async function generateTestModel(opts: TestModelOptions): Promise<TestModelInfo> {
  const o = validate(opts);
  const vocabPath = o.vocabFrom ?? (await vocabModelPath('llama-spm'));
  const vocab = readGgufHeader(vocabPath);
  const tokenizerKvs = [...vocab.metadata].filter(([k]) => k.startsWith('tokenizer.'));
  const tokens = vocab.metadata.get('tokenizer.ggml.tokens');
  if (!tokens || tokens.type !== GgufType.ARRAY || tokenizerKvs.length === 0) {
    throw new Error(`${vocabPath} has no tokenizer.ggml.tokens array; not a vocab GGUF`);
  }
  const nVocab = tokens.value.length;
  const headDim = o.nEmbd / o.nHead;
  const nEmbdKv = headDim * o.nHeadKv;
  const wtype = TYPE_INFO[o.type];

  const tensors: GgufTensorSpec[] = [];
  let nParams = 0;
  const add = (name: string, dims: number[], std: number | 'ones') => {
    const n = dims.reduce((a, b) => a * b, 1);
    nParams += n;
    if (std === 'ones') {
      tensors.push({ name, dims, type: GgmlType.F32, write: encoder(GgmlType.F32, n, () => 1) });
      return;
    }
    const rng = new Xoshiro128(o.seed, fnv1a32(name));
    tensors.push({ name, dims, type: wtype.ggml, write: encoder(wtype.ggml, n, () => rng.nextNormal() * std) });
  };
  const inv = (fanIn: number) => 1 / Math.sqrt(fanIn);

  add('token_embd.weight', [o.nEmbd, nVocab], SCALE.tokenEmbd);
  for (let l = 0; l < o.nLayer; l++) {
    const p = `blk.${l}.`;
    add(p + 'attn_norm.weight', [o.nEmbd], 'ones');
    add(p + 'attn_q.weight', [o.nEmbd, o.nEmbd], SCALE.attn * inv(o.nEmbd));
    add(p + 'attn_k.weight', [o.nEmbd, nEmbdKv], SCALE.attn * inv(o.nEmbd));
    add(p + 'attn_v.weight', [o.nEmbd, nEmbdKv], SCALE.attnV * inv(o.nEmbd));
    add(p + 'attn_output.weight', [o.nEmbd, o.nEmbd], SCALE.attnOut * inv(o.nEmbd));
    add(p + 'ffn_norm.weight', [o.nEmbd], 'ones');
    add(p + 'ffn_gate.weight', [o.nEmbd, o.nFf], SCALE.ffnIn * inv(o.nEmbd));
    add(p + 'ffn_up.weight', [o.nEmbd, o.nFf], SCALE.ffnIn * inv(o.nEmbd));
    add(p + 'ffn_down.weight', [o.nFf, o.nEmbd], SCALE.ffnDown * inv(o.nFf));
  }
  add('output_norm.weight', [o.nEmbd], 'ones');
  // A separate output matrix: tied embeddings make a random model echo its input token.
  add('output.weight', [o.nEmbd, nVocab], SCALE.output * inv(o.nEmbd));

  const metadata: Array<[string, GgufValue]> = [
    ['general.architecture', gguf.str('llama')],
    ['general.name', gguf.str(`clawmesh-test-s${o.seed}-e${o.nEmbd}-l${o.nLayer}-${o.type}`)],
    ['general.file_type', gguf.u32(wtype.fileType)],
    ['llama.context_length', gguf.u32(o.contextLength)],
    ['llama.embedding_length', gguf.u32(o.nEmbd)],
    ['llama.block_count', gguf.u32(o.nLayer)],
    ['llama.feed_forward_length', gguf.u32(o.nFf)],
    ['llama.attention.head_count', gguf.u32(o.nHead)],
    ['llama.attention.head_count_kv', gguf.u32(o.nHeadKv)],
    ['llama.rope.dimension_count', gguf.u32(headDim)],
    ['llama.rope.freq_base', gguf.f32(10000)],
    ['llama.attention.layer_norm_rms_epsilon', gguf.f32(1e-5)],
    ['llama.vocab_size', gguf.u32(nVocab)],
    ['clawmesh.test_model.seed', gguf.u64(BigInt(o.seed))],
    ...tokenizerKvs,
  ];
  const bytes = writeGguf(o.path, { metadata, tensors });
  return { path: o.path, bytes, nVocab, nParams, tensors: tensors.length };
}

/** Shapes used by tests and benchmarks, so everyone talks about the same models. */
export const TEST_MODEL_PRESETS = {
  /** ~18 MB f16: fast enough for unit tests. */
  tiny: { nEmbd: 128, nLayer: 4, nHead: 4, nHeadKv: 2, nFf: 352 },
  /** ~47 MB f16: the shape stack.md measured. */
  small: { nEmbd: 256, nLayer: 8, nHead: 8, nHeadKv: 4, nFf: 688 },
  /** ~300 MB f16: for split/throughput benchmarks. */
  bench: { nEmbd: 1024, nLayer: 8, nHead: 16, nHeadKv: 8, nFf: 2816 },
} as const;
