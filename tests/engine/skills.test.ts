// The agent's engine tools, called the way the LangGraph agent calls them (tool.invoke with JSON
// input): serve_slice on two workers, run_pipeline on the head over the contracts in its database,
// with layer 0 left on the head's CPU because no contract covers it.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import type { MeshNode } from '../../runtime/node/node.js';
import { TEST_MODEL_PRESETS, generateTestModel } from '../../runtime/engine/test-model.js';
import { sha256File } from '../../runtime/engine/catalog.js';
import { runCompletion, serverGreedyCompletion } from '../../runtime/engine/llama-procs.js';
import type { LlamaBuild } from '../../runtime/engine/build.js';
import { ContractBook, insertContractRow, writeTestContract } from '../../runtime/engine/contracts.js';
import type { SignedContract } from '../../protocols/index.js';
import { EnginePipelineRunner } from '../../skills/engine/runner.js';
import { ServeSlice } from '../../skills/engine/serve-slice.js';
import { RunPipeline } from '../../skills/engine/run-pipeline.js';
import { openNode, stopAll } from '../helpers/mesh.js';
import { llamaBuildOrSkip, type BuildOutcome } from './helpers.js';

const preset = TEST_MODEL_PRESETS.tiny;
const dir = mkdtempSync(join(tmpdir(), 'clawmesh-skills-'));
const modelPath = join(dir, 'tiny.gguf');
let outcome: BuildOutcome;
let head: MeshNode;
let workers: MeshNode[] = [];
let serves: ServeSlice[] = [];

beforeAll(async () => {
  await generateTestModel({ path: modelPath, seed: 77, ...preset });
  outcome = await llamaBuildOrSkip();
  // engine.threads in config.json sizes the rpc-servers and llama-server that the tools start.
  head = await openNode(join(dir, 'head'), 'head', { engine: { threads: 1 } });
  workers = [await openNode(join(dir, 'w0'), 'w0', { engine: { threads: 1 } }), await openNode(join(dir, 'w1'), 'w1', { engine: { threads: 1 } })];
  await Promise.all([head, ...workers].map((n) => n.start()));
  for (const w of workers) await head.host!.dial(w.host!.getMultiaddrs()[0]);
}, 45 * 60_000);

afterAll(async () => {
  await Promise.allSettled(serves.map((s) => s.call({ action: 'stop' })));
  await stopAll([head, ...workers].filter(Boolean));
  rmSync(dir, { recursive: true, force: true });
});

/** Argument lists of this process's children running `bin` (ps -o works on Linux and macOS). */
function childArgs(bin: string): string[][] {
  return execFileSync('ps', ['-A', '-o', 'ppid=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((line) => /^\s*(\d+)\s+(.*)$/.exec(line))
    .filter((m): m is RegExpExecArray => m !== null && Number(m[1]) === process.pid && m[2].startsWith(bin))
    .map((m) => m[2].split(/\s+/));
}

const threadsArg = (args: string[]): string | undefined => args[args.indexOf('-t') + 1];

function buildOrSkip(ctx: TestContext): LlamaBuild {
  if ('skip' in outcome) ctx.skip(outcome.skip);
  return (outcome as { build: LlamaBuild }).build;
}

describe('engine skills', () => {
  it('serve_slice + run_pipeline: build from contracts, answer like one process, report, stop', async (ctx) => {
    const build = buildOrSkip(ctx);
    const sha = await sha256File(modelPath);
    const rp = new RunPipeline({ node: head, llamaServerBin: build.llamaServer, threads: 1 });
    expect(await rp.tool.invoke({ action: 'start', model: modelPath })).toMatch(/cannot start: no active contracts for model/);

    serves = workers.map((node) => new ServeSlice({ node, rpcServerBin: build.rpcServer, cacheDir: join(dir, `cache-${node.config.name}`), layerBytes: Math.ceil(statSync(modelPath).size / preset.nLayer) }));
    const ranges: Array<[number, number]> = [[1, 3], [3, preset.nLayer]];
    for (const [i, w] of workers.entries()) {
      const c = await writeTestContract(w.store, { modelSha256: sha, headKey: head.key, workerKey: w.key, layerStart: ranges[i][0], layerEnd: ranges[i][1] });
      await insertContractRow(head.store, c); // the market leaves the same signed contract in both databases
    }
    for (const [i, s] of serves.entries()) {
      const text = await s.tool.invoke({ action: 'start' });
      expect(text).toMatch(new RegExp(`serving slices .* 1 active contract\\(s\\) \\(model ${sha.slice(0, 12)} layers \\[${ranges[i][0]},${ranges[i][1]}\\)`));
    }

    const started = await rp.tool.invoke({ action: 'start', model: modelPath });
    expect(started).toMatch(/^pipeline running for .*\[0,1\) on this machine\): OpenAI API at http:\/\/127\.0\.0\.1:\d+\/v1/);
    const p = rp.pipeline!;
    // One rpc-server per contract, each with the workers' engine.threads (rpc-server has no -t otherwise).
    expect(childArgs(build.rpcServer).map(threadsArg)).toEqual(['1', '1']);
    expect(p.split.args).toEqual(['-ngl', String(preset.nLayer), '--tensor-split', `2,${preset.nLayer - 3 + 1}`]);
    const prompt = 'The capital of France is';
    const one = await runCompletion({ bin: build.completion, model: modelPath, prompt, nPredict: 12, extraArgs: ['-ngl', '0', '--no-repack'] }); // the layout rpc-servers compute on (see llama-split.test.ts)
    const res = await serverGreedyCompletion(p.url, prompt, 12);
    expect(res.text).toBe(one.text);
    expect(await rp.tool.invoke({ action: 'status' })).toMatch(/pipeline running .* sent \d+ B, received \d+ B/);
    expect(await serves[1].tool.invoke({ action: 'status' })).toMatch(/1 rpc-server\(s\) running/);
    expect(await rp.tool.invoke({ action: 'stop' })).toBe('pipeline stopped');
    expect(await rp.tool.invoke({ action: 'status' })).toMatch(/no pipeline running \(state ready/);

    // The agent layer's PipelineRunner interface (skills/assembly) over the same signed contracts.
    const signed = (await new ContractBook(head.store).activeFor({ head: head.peerId.toString(), modelSha256: sha })).map((c) => JSON.parse(c.document) as SignedContract);
    const runner = new EnginePipelineRunner(head, { llamaServerBin: build.llamaServer });
    const pipeline = await runner.run(signed, { sha256: sha, name: 'tiny', nLayer: preset.nLayer, layerBytes: 1, path: modelPath });
    try {
      // The head's engine.threads, not llama-server's default of 2.
      expect(childArgs(build.llamaServer).map(threadsArg)).toEqual(['1']);
      expect(await pipeline.complete(prompt, { maxTokens: 12 })).toBe(one.text);
    } finally {
      await pipeline.stop();
    }
    expect(await serves[0].tool.invoke({ action: 'stop' })).toMatch(/stopped serving/);
  }, 120_000);
});
