// GGUF v3 on-disk vocabulary shared by the reader and the writer.
// Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as little-endian uint32
export const GGUF_VERSION = 3;
export const GGUF_DEFAULT_ALIGNMENT = 32;

export enum GgufType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

/** A scalar or array metadata value, carrying its exact on-disk type so a read→write round trip is lossless. */
export type GgufValue =
  | { type: GgufType.UINT8 | GgufType.INT8 | GgufType.UINT16 | GgufType.INT16 | GgufType.UINT32 | GgufType.INT32 | GgufType.FLOAT32 | GgufType.FLOAT64; value: number }
  | { type: GgufType.UINT64 | GgufType.INT64; value: bigint }
  | { type: GgufType.BOOL; value: boolean }
  | { type: GgufType.STRING; value: string }
  | { type: GgufType.ARRAY; itemType: GgufType; value: GgufArrayItem[] };

/** Array items are bare values; nested arrays keep their own item type. */
export type GgufArrayItem = number | bigint | boolean | string | { itemType: GgufType; value: GgufArrayItem[] };

/** The ggml_type ids this project writes or copies (stage files carry a model's tensors as they are). */
export enum GgmlType {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  BF16 = 30,
}

/** Bytes per block and elements per block, so sizes work for block-quantised types too. */
export const GGML_TYPE_LAYOUT: Record<GgmlType, { blockBytes: number; blockElems: number }> = {
  [GgmlType.F32]: { blockBytes: 4, blockElems: 1 },
  [GgmlType.F16]: { blockBytes: 2, blockElems: 1 },
  [GgmlType.Q4_0]: { blockBytes: 18, blockElems: 32 },
  [GgmlType.Q4_1]: { blockBytes: 20, blockElems: 32 },
  [GgmlType.Q5_0]: { blockBytes: 22, blockElems: 32 },
  [GgmlType.Q5_1]: { blockBytes: 24, blockElems: 32 },
  [GgmlType.Q8_0]: { blockBytes: 34, blockElems: 32 },
  [GgmlType.Q2_K]: { blockBytes: 84, blockElems: 256 },
  [GgmlType.Q3_K]: { blockBytes: 110, blockElems: 256 },
  [GgmlType.Q4_K]: { blockBytes: 144, blockElems: 256 },
  [GgmlType.Q5_K]: { blockBytes: 176, blockElems: 256 },
  [GgmlType.Q6_K]: { blockBytes: 210, blockElems: 256 },
  [GgmlType.BF16]: { blockBytes: 2, blockElems: 1 },
};

export function tensorByteLength(type: GgmlType, dims: readonly number[]): number {
  const layout = GGML_TYPE_LAYOUT[type];
  if (!layout) throw new Error(`unsupported ggml type ${type} (known: ${Object.keys(GGML_TYPE_LAYOUT).join(', ')})`);
  const n = dims.reduce((a, b) => a * b, 1);
  if (dims[0] % layout.blockElems !== 0) {
    throw new Error(`ggml type ${GgmlType[type]} needs dim 0 (${dims[0]}) divisible by ${layout.blockElems}`);
  }
  return (n / layout.blockElems) * layout.blockBytes;
}

export function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment;
}

// Convenience constructors keep call sites short and make the chosen on-disk type explicit.
export const gguf = {
  u32: (value: number): GgufValue => ({ type: GgufType.UINT32, value }),
  i32: (value: number): GgufValue => ({ type: GgufType.INT32, value }),
  f32: (value: number): GgufValue => ({ type: GgufType.FLOAT32, value }),
  u64: (value: bigint): GgufValue => ({ type: GgufType.UINT64, value }),
  bool: (value: boolean): GgufValue => ({ type: GgufType.BOOL, value }),
  str: (value: string): GgufValue => ({ type: GgufType.STRING, value }),
  arr: (itemType: GgufType, value: GgufArrayItem[]): GgufValue => ({ type: GgufType.ARRAY, itemType, value }),
};
