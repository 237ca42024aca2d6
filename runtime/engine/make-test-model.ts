// CLI: write a seeded-random llama GGUF for tests and benchmarks.
//   npx tsx runtime/engine/make-test-model.ts --out /tmp/bench.gguf --seed 1 --layers 8 --embd 1024
//   npx tsx runtime/engine/make-test-model.ts --out m.gguf --preset bench
import { parseArgs } from 'node:util';
import { TEST_MODEL_PRESETS, generateTestModel, type TestWeightType } from './test-model.js';

const USAGE = `usage: make-test-model --out FILE [--seed N] [--preset tiny|small|bench]
       [--layers L] [--embd E] [--heads H] [--kv-heads K] [--ff F] [--type f16|f32|q8_0] [--vocab VOCAB.gguf]
Without --preset, --layers and --embd are required; heads default to embd/64 (kv: half), ff to ~2.75*embd.`;

function int(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer, got "${v}"`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      out: { type: 'string' },
      seed: { type: 'string', default: '1' },
      preset: { type: 'string' },
      layers: { type: 'string' },
      embd: { type: 'string' },
      heads: { type: 'string' },
      'kv-heads': { type: 'string' },
      ff: { type: 'string' },
      type: { type: 'string', default: 'f16' },
      vocab: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return void console.log(USAGE);
  if (!values.out) throw new Error(`--out is required\n${USAGE}`);
  const preset = values.preset ? TEST_MODEL_PRESETS[values.preset as keyof typeof TEST_MODEL_PRESETS] : undefined;
  if (values.preset && !preset) throw new Error(`unknown preset "${values.preset}"; have ${Object.keys(TEST_MODEL_PRESETS).join(', ')}`);
  const nEmbd = int('embd', values.embd) ?? preset?.nEmbd;
  const nLayer = int('layers', values.layers) ?? preset?.nLayer;
  if (!nEmbd || !nLayer) throw new Error(`--embd and --layers (or --preset) are required\n${USAGE}`);
  const nHead = int('heads', values.heads) ?? (nEmbd === preset?.nEmbd ? preset.nHead : Math.max(1, Math.floor(nEmbd / 64)));
  const nHeadKv = int('kv-heads', values['kv-heads']) ?? (nEmbd === preset?.nEmbd ? preset.nHeadKv : Math.max(1, Math.floor(nHead / 2)));
  // ~2.75x, rounded to a multiple of 32 so q8_0 works
  const nFf = int('ff', values.ff) ?? (nEmbd === preset?.nEmbd ? preset.nFf : Math.ceil((nEmbd * 2.75) / 32) * 32);
  const t0 = Date.now();
  const info = await generateTestModel({
    path: values.out,
    seed: int('seed', values.seed)!,
    nEmbd, nLayer, nHead, nHeadKv, nFf,
    type: values.type as TestWeightType,
    vocabFrom: values.vocab,
  });
  console.log(
    `wrote ${info.path}: ${(info.bytes / 1e6).toFixed(1)} MB, ${(info.nParams / 1e6).toFixed(1)}M params, ` +
      `n_embd ${nEmbd}, n_layer ${nLayer}, n_head ${nHead}/${nHeadKv}, n_ff ${nFf}, vocab ${info.nVocab}, ${values.type} ` +
      `in ${((Date.now() - t0) / 1000).toFixed(1)}s`,
  );
}

main().catch((err) => {
  console.error(`make-test-model: ${(err as Error).message}`);
  process.exitCode = 1;
});
