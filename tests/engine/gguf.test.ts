import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { GgmlType, GgufType, gguf, type GgufValue } from '../../runtime/engine/gguf-types.js';
import { encodeGgufHeader, writeGguf } from '../../runtime/engine/gguf-writer.js';
import { readGgufHeader } from '../../runtime/engine/gguf-reader.js';
import { Xoshiro128, f16BitsToF32, f32ToF16Bits } from '../../runtime/engine/prng.js';
import { vocabModelPath } from '../../runtime/engine/source.js';

const dir = mkdtempSync(join(tmpdir(), 'clawmesh-gguf-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const ALL_TYPES: Array<[string, GgufValue]> = [
  ['t.u8', { type: GgufType.UINT8, value: 250 }],
  ['t.i8', { type: GgufType.INT8, value: -120 }],
  ['t.u16', { type: GgufType.UINT16, value: 65000 }],
  ['t.i16', { type: GgufType.INT16, value: -32000 }],
  ['t.u32', gguf.u32(4_000_000_000)],
  ['t.i32', gguf.i32(-2_000_000_000)],
  ['t.f32', gguf.f32(0.5)],
  ['t.bool', gguf.bool(true)],
  ['t.str', gguf.str('héllo ▁world')],
  ['t.u64', gguf.u64(2n ** 63n + 5n)],
  ['t.i64', { type: GgufType.INT64, value: -(2n ** 62n) }],
  ['t.f64', { type: GgufType.FLOAT64, value: Math.PI }],
  ['t.arr.str', gguf.arr(GgufType.STRING, ['a', '', 'ü'])],
  ['t.arr.f32', gguf.arr(GgufType.FLOAT32, [1.5, -2.25])],
  ['t.arr.i64', gguf.arr(GgufType.INT64, [-1n, 3n])],
  ['t.arr.nested', gguf.arr(GgufType.ARRAY, [{ itemType: GgufType.UINT8, value: [1, 2] }, { itemType: GgufType.STRING, value: ['x'] }])],
  ['t.arr.empty', gguf.arr(GgufType.BOOL, [])],
];

describe('GGUF writer/reader', () => {
  it('round-trips every value type, tensor infos, and aligns tensor data to 32 bytes', () => {
    const path = join(dir, 'all.gguf');
    const size = writeGguf(path, {
      metadata: ALL_TYPES,
      tensors: [
        { name: 'a', dims: [3], type: GgmlType.F32, write: (emit) => emit(new Uint8Array(new Float32Array([1, 2, 3]).buffer)) },
        { name: 'b', dims: [2, 2], type: GgmlType.F16, write: (emit) => emit(new Uint8Array(8).fill(0x3c)) },
      ],
    });
    expect(statSync(path).size).toBe(size);
    const h = readGgufHeader(path);
    expect(h.version).toBe(3);
    expect([...h.metadata]).toEqual(ALL_TYPES);
    expect(h.tensors).toEqual([
      { name: 'a', dims: [3], type: GgmlType.F32, offset: 0 },
      { name: 'b', dims: [2, 2], type: GgmlType.F16, offset: 32 },
    ]);
    expect(h.dataOffset % 32).toBe(0);
    const bytes = readFileSync(path);
    expect(bytes.subarray(0, 4).toString('latin1')).toBe('GGUF');
    expect(new Float32Array(bytes.buffer.slice(bytes.byteOffset + h.dataOffset, bytes.byteOffset + h.dataOffset + 12))).toEqual(new Float32Array([1, 2, 3]));
    expect(bytes[h.dataOffset + 32]).toBe(0x3c);
  });

  it('rejects wrong tensor byte counts and duplicate keys, leaving no partial file', () => {
    const path = join(dir, 'bad.gguf');
    expect(() => writeGguf(path, { metadata: [], tensors: [{ name: 'x', dims: [4], type: GgmlType.F32, write: (e) => e(new Uint8Array(8)) }] }))
      .toThrow(/tensor "x" wrote 8 bytes, expected 16/);
    expect(() => statSync(path)).toThrow();
    expect(() => encodeGgufHeader({ metadata: [['k', gguf.u32(1)], ['k', gguf.u32(2)]], tensors: [] })).toThrow(/duplicate GGUF metadata key "k"/);
  });

  it('re-encodes a real vocab GGUF byte-identically (tokenizer copy is lossless)', async () => {
    const vocab = await vocabModelPath('llama-spm');
    const h = readGgufHeader(vocab);
    expect(h.metadata.get('tokenizer.ggml.tokens')).toMatchObject({ type: GgufType.ARRAY, itemType: GgufType.STRING });
    const { header } = encodeGgufHeader({ metadata: [...h.metadata], tensors: [] });
    const orig = readFileSync(vocab);
    expect(createHash('sha256').update(header.subarray(0, orig.length)).digest('hex')).toBe(createHash('sha256').update(orig).digest('hex'));
  });
});

describe('seeded randomness and f16', () => {
  it('is reproducible per (seed, stream) and differs across them', () => {
    const take = (seed: number, stream: number) => { const r = new Xoshiro128(seed, stream); return Array.from({ length: 4 }, () => r.nextU32()); };
    expect(take(1, 0)).toEqual(take(1, 0));
    expect(take(1, 0)).not.toEqual(take(2, 0));
    expect(take(1, 0)).not.toEqual(take(1, 1));
    // Pinned values: a change here silently changes every generated test model.
    expect(take(42, 7)).toEqual([1527581676, 4199624744, 644694934, 3267802862]);
  });

  it('normal approximation has mean ~0 and variance ~1', () => {
    const r = new Xoshiro128(3);
    let s = 0, s2 = 0;
    const n = 200_000;
    for (let i = 0; i < n; i++) { const x = r.nextNormal(); s += x; s2 += x * x; }
    expect(Math.abs(s / n)).toBeLessThan(0.01);
    expect(Math.abs(s2 / n - 1)).toBeLessThan(0.02);
  });

  it('f32→f16 rounds to nearest even, handles subnormals, overflow and NaN', () => {
    expect(f32ToF16Bits(1)).toBe(0x3c00);
    expect(f32ToF16Bits(-2)).toBe(0xc000);
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00); // rounds up to infinity
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001);
    expect(f32ToF16Bits(2 ** -26)).toBe(0x0000);
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie → even
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie → even (up)
    expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(NaN)))).toBe(true);
    for (const v of [0.1, -0.333, 1e-4, 3.4, 1234.5]) expect(Math.abs(f16BitsToF32(f32ToF16Bits(v)) - v) / Math.abs(v)).toBeLessThan(1e-3);
  });
});
