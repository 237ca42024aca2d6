import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readGgufFileInfo } from 'node-llama-cpp';
import { afterAll, describe, expect, it } from 'vitest';
import { TEST_MODEL_PRESETS, generateTestModel } from '../../runtime/engine/test-model.js';
import { readGgufHeader } from '../../runtime/engine/gguf-reader.js';
import { looksVaried, nodeGreedy, nodeLlama } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'clawmesh-testmodel-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
// Smallest useful shape (the 32000-token vocab dominates its size): keeps these tests ~1 s each.
const micro = { nEmbd: 64, nLayer: 2, nHead: 2, nHeadKv: 1, nFf: 160 };
const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

describe('generateTestModel', () => {
  it('same seed → byte-identical file; other seed → different weights', async () => {
    const a = await generateTestModel({ path: join(dir, 'a.gguf'), seed: 5, ...micro });
    await generateTestModel({ path: join(dir, 'b.gguf'), seed: 5, ...micro });
    await generateTestModel({ path: join(dir, 'c.gguf'), seed: 6, ...micro });
    expect(sha(a.path)).toBe(sha(join(dir, 'b.gguf')));
    expect(sha(a.path)).not.toBe(sha(join(dir, 'c.gguf')));
    expect(a.nVocab).toBe(32000);
    expect(a.tensors).toBe(3 + 9 * micro.nLayer);
  });

  it('node-llama-cpp reads the right shape and decodes greedily to varied text', async () => {
    const path = join(dir, 'tiny.gguf');
    await generateTestModel({ path, seed: 42, ...TEST_MODEL_PRESETS.tiny });
    const info = await readGgufFileInfo(path, { logWarnings: false });
    const arch = info.architectureMetadata as { block_count?: number; embedding_length?: number };
    expect(info.metadata.general.architecture).toBe('llama');
    expect(arch.block_count).toBe(TEST_MODEL_PRESETS.tiny.nLayer);
    expect(arch.embedding_length).toBe(TEST_MODEL_PRESETS.tiny.nEmbd);
    expect(info.tensorInfo?.length).toBe(readGgufHeader(path).tensors.length);

    const llama = await nodeLlama();
    const model = await llama.loadModel({ modelPath: path });
    try {
      const a = await nodeGreedy(model, 'Once upon a time', 16);
      const b = await nodeGreedy(model, 'Once upon a time', 16);
      expect(a.tokens).toHaveLength(16);
      expect(b.tokens).toEqual(a.tokens); // greedy is deterministic
      expect(looksVaried(a.tokens), `degenerate output ${a.tokens.join(',')}`).toBe(true);
    } finally {
      await model.dispose();
    }
  });

  it('writes q8_0 and f32 variants llama.cpp can load', async () => {
    const llama = await nodeLlama();
    for (const type of ['q8_0', 'f32'] as const) {
      const path = join(dir, `tiny-${type}.gguf`);
      await generateTestModel({ path, seed: 1, type, ...micro });
      const model = await llama.loadModel({ modelPath: path });
      try {
        expect(looksVaried((await nodeGreedy(model, 'Hello', 12)).tokens)).toBe(true);
      } finally {
        await model.dispose();
      }
    }
  });

  it('validates shapes', async () => {
    await expect(generateTestModel({ path: join(dir, 'x.gguf'), seed: 1, nEmbd: 100, nLayer: 1, nHead: 3, nFf: 64 })).rejects.toThrow(/not divisible by nHead/);
  });
});
