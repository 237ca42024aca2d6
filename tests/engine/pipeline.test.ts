// The engine end to end on loopback: a model split across 2 and 3 workers through libp2p tunnels
// must produce exactly the greedy tokens of one llama.cpp process and of node-llama-cpp; a dead,
// stalled or departed worker must surface within seconds as a failure naming it, and leave the head
// ready to build again.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, type TestContext } from 'vitest';
import type { MeshNode } from '../../runtime/node/node.js';
import { TEST_MODEL_PRESETS, generateTestModel } from '../../runtime/engine/test-model.js';
import { sha256File } from '../../runtime/engine/catalog.js';
import { runCompletion, serverGreedyCompletion } from '../../runtime/engine/llama-procs.js';
import type { LlamaBuild } from '../../runtime/engine/build.js';
import { writeTestContract } from '../../runtime/engine/contracts.js';
import { SliceWorker } from '../../runtime/engine/worker.js';
import { openRpcStream } from '../../runtime/engine/tunnel.js';
import { PipelineError, PipelineHead, type Assignment, type PipelineFailure, type PipelineOptions } from '../../runtime/engine/head.js';
import { openNode, stopAll } from '../helpers/mesh.js';
import { llamaBuildOrSkip, nodeGreedy, nodeLlama, looksVaried, type BuildOutcome } from './helpers.js';

const N = 16;
const PROMPT = 'Once upon a time';
const preset = TEST_MODEL_PRESETS.small;
const dir = mkdtempSync(join(tmpdir(), 'clawmesh-pipeline-'));
const modelPath = join(dir, 'small.gguf');
let sha = '';
let outcome: BuildOutcome;
let head: MeshNode;
const workers: Array<{ node: MeshNode; slice: SliceWorker }> = [];
let refTokens: number[] = [];
let refText = '';
let nVocab = 0;

beforeAll(async () => {
  nVocab = (await generateTestModel({ path: modelPath, seed: 4321, ...preset })).nVocab;
  sha = await sha256File(modelPath);
  outcome = await llamaBuildOrSkip();
  if ('skip' in outcome) return;
  head = await openNode(join(dir, 'head'), 'head');
  await head.start();
  for (let i = 0; i < 4; i++) {
    const node = await openNode(join(dir, `w${i}`), `w${i}`);
    await node.start();
    const slice = await SliceWorker.start({ node, rpcServerBin: outcome.build.rpcServer, threads: 1, cacheDir: join(dir, `cache-w${i}`), layerBytes: Math.ceil(statSync(modelPath).size / preset.nLayer) });
    workers.push({ node, slice });
  }
}, 45 * 60_000);

afterAll(async () => {
  await Promise.allSettled(workers.map((w) => w.slice.stop()));
  await stopAll([head, ...workers.map((w) => w.node)].filter(Boolean));
  rmSync(dir, { recursive: true, force: true });
});

function buildOrSkip(ctx: TestContext): LlamaBuild {
  if ('skip' in outcome) ctx.skip(outcome.skip);
  return (outcome as { build: LlamaBuild }).build;
}

/** Contracts as the market would leave them in the worker's database, and the matching assignments. */
async function hire(ranges: Array<[number, number, number]>): Promise<Assignment[]> {
  return await Promise.all(ranges.map(async ([w, start, end]) => {
    const { node } = workers[w];
    const c = await writeTestContract(node.store, { modelSha256: sha, headKey: head.key, workerKey: node.key, layerStart: start, layerEnd: end });
    return { worker: node.peerId.toString(), start, end, contractId: c.id, addrs: node.multiaddrs() };
  }));
}

function options(build: LlamaBuild, assignments: Assignment[], extra: Partial<PipelineOptions> = {}): PipelineOptions {
  return { node: head, model: { path: modelPath, sha256: sha, nLayer: preset.nLayer }, assignments, llamaServerBin: build.llamaServer, threads: 1, ctxSize: 2048, ...extra };
}

/** Streams a long OpenAI completion; calls onChunk for each SSE data line, returns all of them. */
async function streamCompletion(baseUrl: string, onChunk: (n: number) => void): Promise<string[]> {
  const r = await fetch(`${baseUrl}/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: PROMPT, max_tokens: 1500, temperature: 0, stream: true }),
  });
  const lines: string[] = [];
  const decoder = new TextDecoder();
  let partial = '';
  try {
    for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) {
      const parts = (partial + decoder.decode(chunk, { stream: true })).split('\n');
      partial = parts.pop() ?? '';
      for (const l of parts) if (l.startsWith('data: ')) { lines.push(l.slice(6)); onChunk(lines.length); }
    }
  } catch (err) {
    lines.push(`(connection error: ${(err as Error).message})`);
  }
  return lines;
}

function refusesConnections(endpoint: string): Promise<boolean> {
  const [host, port] = endpoint.split(':');
  return new Promise((resolve) => {
    const s = connect({ host, port: Number(port) });
    s.once('connect', () => { s.destroy(); resolve(false); });
    s.once('error', () => resolve(true));
  });
}

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

describe('pipeline through libp2p tunnels', () => {
  it('references: one llama.cpp process and node-llama-cpp agree', async (ctx) => {
    const build = buildOrSkip(ctx);
    const llama = await nodeLlama();
    const model = await llama.loadModel({ modelPath });
    try {
      const ref = await nodeGreedy(model, PROMPT, N);
      refTokens = [...ref.tokens];
      refText = ref.text;
    } finally {
      await model.dispose();
    }
    expect(looksVaried(refTokens)).toBe(true);
    const one = await runCompletion({ bin: build.completion, model: modelPath, prompt: PROMPT, nPredict: N, extraArgs: ['-ngl', '0', '--no-repack'] }); // the layout rpc-servers compute on (see llama-split.test.ts)
    expect(one.text).toBe(refText);
  }, 120_000);

  // The last case: worker 0 holds two contracts (two ranges), each its own device and tunnel.
  for (const ranges of [[[0, 0, 3], [1, 3, 8]], [[0, 0, 2], [1, 2, 5], [2, 5, 8]], [[0, 0, 3], [1, 3, 5], [0, 5, 8]]] as Array<Array<[number, number, number]>>) {
    it(`${ranges.length} contracts (${new Set(ranges.map(([w]) => w)).size} workers) give exactly the reference greedy tokens (${ranges.map(([w, s, e]) => `w${w}:[${s},${e})`).join(' ')})`, async (ctx) => {
      const build = buildOrSkip(ctx);
      if (refTokens.length === 0) ctx.skip('needs the reference test');
      const h = new PipelineHead();
      const assignments = await hire(ranges)
      const p = await h.start(options(build, assignments));
      try {
        expect(p.split.devices).toEqual(assignments.map((a) => a.contractId));
        // Wire bytes per generated token on each link: an N-token minus a 4-token request, so the
        // prompt and per-request setup cancel out.
        const wire = () => p.links().map((l) => ({ up: l.bytesToWorker, down: l.bytesFromWorker }));
        const b0 = wire();
        const short = await serverGreedyCompletion(p.url, PROMPT, 4);
        const b1 = wire();
        const res = await serverGreedyCompletion(p.url, PROMPT, N);
        const b2 = wire();
        expect(res.tokens).toEqual(refTokens);
        expect(res.text).toBe(refText);
        // The OpenAI API the gateway will front gives the same text.
        const oa = await fetch(`${p.baseUrl}/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ prompt: PROMPT, max_tokens: N, temperature: 0 }) });
        expect(((await oa.json()) as { choices: Array<{ text: string }> }).choices[0].text).toBe(refText);
        for (const l of p.links()) {
          expect(l.bytesToWorker).toBeGreaterThan(0);
          expect(l.bytesFromWorker).toBeGreaterThan(0);
        }
        expect(short.tokens).toEqual(refTokens.slice(0, 4));
        const extra = res.tokens.length - short.tokens.length;
        const perToken = b2.map((b, i) => ({
          up: ((b.up - b1[i].up) - (b1[i].up - b0[i].up)) / extra,
          down: ((b.down - b1[i].down) - (b1[i].down - b0[i].down)) / extra,
        }));
        // The output matrix stays on the head (PIN_TO_HEAD_ARGS): no link carries the logits back
        // (n_vocab x 4 bytes a token, 128 000 here), only hidden states of n_embd floats (1 KiB) and
        // RPC replies. Unpinned, the last link returned more than n_vocab x 4 bytes a token.
        for (const t of perToken) expect(t.down).toBeLessThan(nVocab);
        console.log(`[engine] ${ranges.length} tunnelled workers: ${res.tokensPerSecond.toFixed(0)} tok/s; wire bytes per token up/down ${perToken.map((t) => `${t.up.toFixed(0)}/${t.down.toFixed(0)}`).join(', ')}`);
      } finally {
        await h.stop();
      }
      expect(h.state).toBe('ready');
    }, 120_000);
  }

  it('a head without a contract is refused before llama-server starts', async (ctx) => {
    const build = buildOrSkip(ctx);
    const [a] = await hire([[0, 0, 8]]);
    const h = new PipelineHead();
    const err = await h.start(options(build, [{ ...a, contractId: 'made-up' }])).catch((e: Error) => e);
    expect(err).toBeInstanceOf(PipelineError);
    expect((err as Error).message).toContain(`worker ${a.worker}`);
    expect((err as Error).message).toMatch(/refused: no contract made-up/);
    expect(h.lastFailure).toMatchObject({ worker: a.worker });
    expect(h.state).toBe('ready');
  }, 60_000);

  it('a worker that stops answering while the model loads fails the start, naming it, within the load stall timeout', async (ctx) => {
    const build = buildOrSkip(ctx);
    const hired = await hire([[0, 0, 4], [2, 4, 8]]);
    const victim = workers[2];
    // Warm the worker's rpc-server for this contract (a probe starts it), then freeze it.
    await head.host!.dial(victim.node.host!.getMultiaddrs()[0]);
    const probe = await openRpcStream({ host: head.host!, worker: victim.node.peerId, hello: { contractId: hired[1].contractId, modelSha256: sha, probe: true } });
    await probe.close();
    const rpc = victim.slice.rpcServerFor(hired[1].contractId)!;
    rpc.process.kill('SIGSTOP');
    const h = new PipelineHead();
    const t0 = Date.now();
    try {
      const err = await h.start(options(build, hired, { loadStallTimeoutMs: 2000 })).catch((e: Error) => e);
      expect(err).toBeInstanceOf(PipelineError);
      expect((err as PipelineError).failure).toMatchObject({ worker: victim.node.peerId.toString(), contractId: hired[1].contractId });
      expect((err as Error).message).toMatch(/stalled: no reply for \d+ ms while the model loaded/);
      expect(Date.now() - t0).toBeLessThan(15_000);
      expect(h.state).toBe('ready');
    } finally {
      rpc.process.kill('SIGCONT');
      await victim.slice.release(hired[1].contractId);
    }
  }, 60_000);

  const failureCases: Array<{ name: string; victim: number; act: (w: (typeof workers)[number], contractId: string) => Promise<void> | void; expect: RegExp; stallTimeoutMs?: number }> = [
    { name: "a worker's rpc-server killed", victim: 1, act: (w, c) => { w.slice.rpcServerFor(c)!.process.kill('SIGKILL'); }, expect: /tunnel to the worker broke/ },
    { name: 'a worker stalled (SIGSTOP)', victim: 1, act: (w, c) => { w.slice.rpcServerFor(c)!.process.kill('SIGSTOP'); }, expect: /stalled: no reply/, stallTimeoutMs: 2000 },
    { name: "a worker's node stopped", victim: 1, act: async (w) => { await w.slice.stop(); await w.node.stop(); }, expect: /tunnel to the worker broke|closed/ },
  ];
  for (const fc of failureCases) {
    it(`${fc.name} mid-generation: a clear error naming it within seconds, then a rebuild with a replacement works`, async (ctx) => {
      const build = buildOrSkip(ctx);
      if (refTokens.length === 0) ctx.skip('needs the reference test');
      const h = new PipelineHead();
      const hired = await hire([[0, 0, 4], [fc.victim, 4, 8]]);
      const victim = workers[fc.victim];
      const p = await h.start(options(build, hired, { stallTimeoutMs: fc.stallTimeoutMs ?? 5000 }));
      expect(alive(p.llamaServerPid)).toBe(true);
      const failed = new Promise<{ f: PipelineFailure; at: number }>((resolve) => p.events.once('worker-failed', (f: PipelineFailure) => resolve({ f, at: Date.now() })));
      let actedAt = 0;
      const lines = await streamCompletion(p.baseUrl, (n) => {
        if (n === 5) { actedAt = Date.now(); void fc.act(victim, hired[1].contractId); }
      });
      const { f, at } = await failed;
      const rpc = victim.slice.rpcServerFor(hired[1].contractId);
      if (rpc !== undefined && fc.stallTimeoutMs !== undefined) { rpc.process.kill('SIGCONT'); rpc.process.kill('SIGKILL'); }
      expect(actedAt).toBeGreaterThan(0);
      expect(f.worker).toBe(victim.node.peerId.toString());
      expect(f.contractId).toBe(hired[1].contractId);
      expect(f.reason).toMatch(fc.expect);
      expect(at - actedAt).toBeLessThan((fc.stallTimeoutMs ?? 0) + 5000);
      // The streaming client got an error event that names the worker, not a silent hang.
      expect(lines.length).toBeGreaterThan(5);
      expect(lines.length).toBeLessThan(1500);
      expect(lines.at(-1)).toContain(victim.node.peerId.toString());
      expect(await p.closed).toBe(f);
      expect(alive(p.llamaServerPid)).toBe(false);
      for (const l of p.links()) expect(await refusesConnections(l.endpoint)).toBe(true); // tunnel listeners closed
      expect(h.state).toBe('ready');
      expect(h.lastFailure).toBe(f);
      console.log(`[engine] ${fc.name}: detected after ${at - actedAt} ms: ${f.reason}`);

      // Rebuild with a replacement worker for the failed range.
      const [replacement] = await hire([[3, 4, 8]]);
      const p2 = await h.start(options(build, [hired[0], replacement]));
      try {
        const res = await serverGreedyCompletion(p2.url, PROMPT, N);
        expect(res.tokens).toEqual(refTokens);
      } finally {
        await h.stop();
      }
    }, 120_000);
  }
});
