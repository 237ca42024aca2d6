/**
 * Engine benchmark on a seeded-random test model, greedy:
 *   - one llama-server process (all layers on its CPU): the baseline, at each concurrency;
 *   - the star (llama.cpp RPC, today's engine) over k rpc-server workers, with the output matrix and
 *     embeddings pinned to the head (PIN_TO_HEAD_ARGS), reached through a byte-counting user-space
 *     proxy ("tcp") and, unless --quick, through /clawmesh/rpc/1 libp2p tunnels ("libp2p"), under
 *     each emulated link shape: one-way delay × bandwidth cap per direction (0 = uncapped);
 *   - 1 and 8 concurrent requests through llama-server's slots (-np, continuous batching).
 * Each star is loaded once per worker count; the link is then reshaped between rows (loading a model
 * through a 20 Mbit/s link would take most of the run).
 * Reports aggregate generation tokens/s (per request: llama-server's predicted_n over the span of
 * the generation phases; prompt excluded), its ratio to one process at the same concurrency, wire
 * bytes per generated token per link (N-token minus 4-token batch, so prompts cancel out; libp2p
 * framing not included), floor_ms (per decoding step: 2·k·d + one process's compute per step) and
 * wire_ms (bytes of one step serialised at the cap, links one after another as the star does).
 * All libp2p nodes run in this one Node process; llama-server and every rpc-server are separate
 * processes with the same thread count (1 by default: several spinning ggml pools on a 2-core box
 * measure contention, not links).
 * Usage: npx tsx sims/bench-engine.ts [--quick] [--json FILE] [--model bench|small|tiny] [--workers 2,3]
 *        [--delays 0,10,25] [--bandwidths 0,20] [--concurrent 1,8] [--tokens 32] [--repeats 3] [--transports tcp,libp2p]
 */
import '../runtime/polyfill.ts';
import { existsSync, mkdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { homedir, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureLlamaBuild, type LlamaBuild } from '../runtime/engine/build.ts';
import { TEST_MODEL_PRESETS, generateTestModel } from '../runtime/engine/test-model.ts';
import { sha256File } from '../runtime/engine/catalog.ts';
import { freePort, startLlamaServer, startRpcServer, type LlamaServerHandle, type RpcServerHandle } from '../runtime/engine/llama-procs.ts';
import { computeTensorSplit, PIN_TO_HEAD_ARGS } from '../runtime/engine/split.ts';
import { startDelayProxy, type DelayProxy } from '../runtime/engine/delay-proxy.ts';
import type { LinkShape } from '../runtime/engine/splice.ts';
import { writeTestContract } from '../runtime/engine/contracts.ts';
import { SliceWorker } from '../runtime/engine/worker.ts';
import { startPipeline, type Assignment } from '../runtime/engine/head.ts';
import { openLoopbackNode, stopAll } from '../runtime/node/local-mesh.ts';
import type { MeshNode } from '../runtime/node/node.ts';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    json: { type: 'string' },
    model: { type: 'string' },
    threads: { type: 'string', default: '1' },
    tokens: { type: 'string' },
    delays: { type: 'string' },
    bandwidths: { type: 'string' },
    workers: { type: 'string' },
    concurrent: { type: 'string', default: '1,8' },
    prompt: { type: 'string', default: 'Once upon a time' },
    repeats: { type: 'string' },
    transports: { type: 'string' },
  },
});
const quick = values.quick;
const list = (s: string) => s.split(',').map(Number);
const threads = Number(values.threads);
const delays = list(values.delays ?? '0,25');
const bandwidths = list(values.bandwidths ?? '0,20');
const workerCounts = list(values.workers ?? (quick ? '3' : '2,3'));
const concurrents = list(values.concurrent);
const repeats = Number(values.repeats ?? 3);
const transports = (values.transports ?? (quick ? 'tcp' : 'tcp,libp2p')).split(',') as Array<'tcp' | 'libp2p'>;
const presetName = (values.model ?? (quick ? 'small' : 'bench')) as keyof typeof TEST_MODEL_PRESETS;
const preset = TEST_MODEL_PRESETS[presetName];
if (preset === undefined) throw new Error(`unknown --model ${presetName}: ${Object.keys(TEST_MODEL_PRESETS).join(', ')}`);
const baseTokens = Number(values.tokens ?? (quick ? 24 : 48));
const maxC = Math.max(...concurrents);
/** Per-slot context: prompt + tokens fit with room; llama-server divides -c among its -np slots. */
const ctxSize = 256 * maxC;
const PROMPT = values.prompt;
/** Fewer tokens on slow links keep the whole run within minutes. */
const tokensFor = (delay: number) => (delay === 0 ? baseTokens : Math.max(8, Math.min(baseTokens, delay <= 10 ? 24 : 16)));

interface Row {
  setup: 'one-process' | 'star' | 'chain';
  transport: 'none' | 'tcp' | 'libp2p';
  stages: number;
  delay_ms: number;
  /** 0 = uncapped. */
  bandwidth_mbit: number;
  concurrent: number;
  tok_s: number;
  ratio: number;
  bytes_per_token_per_link: number | null;
  floor_ms: number;
  wire_ms: number | null;
  identical: boolean;
}
const rows: Row[] = [];
/** One process: aggregate tok/s and greedy texts per concurrency. */
const baseline = new Map<number, { tps: number; texts: string[] }>();

const record = (r: Row) => {
  rows.push(r);
  console.error(`  ${r.setup}${r.transport === 'none' ? '' : `/${r.transport}`} k=${r.stages} d=${r.delay_ms} ms bw=${r.bandwidth_mbit || '∞'} c=${r.concurrent}: ${r.tok_s.toFixed(1)} tok/s (${r.ratio.toFixed(2)}x)` +
    `${r.bytes_per_token_per_link !== null ? `, ${(r.bytes_per_token_per_link / 1024).toFixed(1)} KiB/token/link` : ''}, floor ${r.floor_ms.toFixed(1)} ms/step${r.identical ? '' : ', TEXT DIFFERS'}`);
};

function rangesFor(k: number): Array<[number, number]> {
  const per = Math.ceil(preset.nLayer / k);
  return Array.from({ length: k }, (_, i) => [i * per, Math.min(preset.nLayer, (i + 1) * per)] as [number, number]).filter(([s, e]) => s < e);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

interface Done { text: string; n: number; genStart: number; genEnd: number }

/** One greedy /completion; the generation phase is placed on our clock from llama-server's predicted_ms. */
async function complete(url: string, n: number): Promise<Done> {
  const body = { prompt: PROMPT, n_predict: n, temperature: 0, top_k: 1, seed: 1, cache_prompt: false };
  const r = await fetch(`${url}/completion`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(`POST ${url}/completion → HTTP ${r.status}: ${(await r.text()).slice(0, 300)}`);
  const j = (await r.json()) as { content: string; timings: { predicted_n: number; predicted_ms: number } };
  const end = performance.now();
  return { text: j.content, n: j.timings.predicted_n, genStart: end - j.timings.predicted_ms, genEnd: end };
}

async function batch(url: string, c: number, n: number): Promise<Done[]> {
  return await Promise.all(Array.from({ length: c }, () => complete(url, n)));
}

interface Measured { tps: number; bytesPerTokenPerLink: number | null; texts: string[] }

/** Aggregate tok/s over the span of c concurrent generations (median of repeats), wire bytes per generated token per link. */
async function measure(url: string, c: number, n: number, links: number, bytes?: () => number): Promise<Measured> {
  const runs: Measured[] = [];
  for (let i = 0; i < repeats; i++) {
    const b0 = bytes?.() ?? 0;
    const short = await batch(url, c, 4);
    const b1 = bytes?.() ?? 0;
    const long = await batch(url, c, n);
    const b2 = bytes?.() ?? 0;
    const tokens = long.reduce((a, d) => a + d.n, 0);
    const span = Math.max(...long.map((d) => d.genEnd)) - Math.min(...long.map((d) => d.genStart));
    const extra = tokens - short.reduce((a, d) => a + d.n, 0);
    runs.push({
      tps: (tokens / span) * 1000,
      bytesPerTokenPerLink: bytes !== undefined && extra > 0 ? ((b2 - b1) - (b1 - b0)) / extra / links : null,
      texts: long.map((d) => d.text),
    });
  }
  return { ...runs[0], tps: median(runs.map((r) => r.tps)) };
}

/** Every text agrees (as a prefix, runs differ in length) with one of one process's texts at the same concurrency. */
function sameText(c: number, texts: string[]): boolean {
  const ref = baseline.get(c)?.texts ?? [];
  return texts.every((t) => ref.some((r) => r.startsWith(t) || t.startsWith(r)));
}

async function benchModel(): Promise<string> {
  const dir = join(homedir(), '.cache', 'clawmesh', 'bench-models');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, presetName === 'bench' ? 'bench-s7-f16.gguf' : `${presetName}-s7-f16.gguf`);
  if (!existsSync(path)) {
    console.error(`generating ${path}…`);
    await generateTestModel({ path: path + '.tmp', seed: 7, ...preset });
    renameSync(path + '.tmp', path);
  }
  return path;
}

async function oneProcess(build: LlamaBuild, model: string): Promise<void> {
  const server = await startLlamaServer({ bin: build.llamaServer, model, port: await freePort(), threads, ctxSize, extraArgs: ['-ngl', '0', '-np', String(maxC)] });
  try {
    await batch(server.url, 1, 4); // warm-up: the first request pays page faults on the weights
    for (const c of concurrents) {
      const m = await measure(server.url, c, tokensFor(0), 1);
      baseline.set(c, { tps: m.tps, texts: m.texts });
      record({
        setup: 'one-process', transport: 'none', stages: 1, delay_ms: 0, bandwidth_mbit: 0, concurrent: c, tok_s: m.tps, ratio: 1,
        bytes_per_token_per_link: null, floor_ms: (1000 * c) / m.tps, wire_ms: null, identical: true,
      });
    }
  } finally {
    await server.stop();
  }
}

/** Runs every link shape × concurrency on one loaded star. */
async function shapes(url: string, k: number, transport: 'tcp' | 'libp2p', reshape: (s: LinkShape) => void, bytes: () => number): Promise<void> {
  await batch(url, 1, 4);
  for (const d of delays) {
    for (const bw of bandwidths) {
      reshape({ delayMs: d, bandwidthMbit: bw });
      for (const c of concurrents) {
        const m = await measure(url, c, tokensFor(d), k, bytes);
        const base = baseline.get(c)!.tps;
        const perStep = m.bytesPerTokenPerLink !== null ? m.bytesPerTokenPerLink * k * c : null;
        record({
          setup: 'star', transport, stages: k, delay_ms: d, bandwidth_mbit: bw, concurrent: c, tok_s: m.tps, ratio: m.tps / base,
          bytes_per_token_per_link: m.bytesPerTokenPerLink, floor_ms: 2 * k * d + (1000 * c) / base,
          wire_ms: bw > 0 && perStep !== null ? (perStep * 8) / (bw * 1000) : null, identical: sameText(c, m.texts),
        });
      }
    }
  }
  reshape({});
}

async function starTcp(build: LlamaBuild, model: string, servers: RpcServerHandle[], k: number): Promise<void> {
  const proxies: DelayProxy[] = [];
  let server: LlamaServerHandle | undefined;
  try {
    for (const s of servers.slice(0, k)) proxies.push(await startDelayProxy(s.endpoint));
    const split = computeTensorSplit(rangesFor(k).map(([start, end], i) => ({ worker: proxies[i].endpoint, start, end })), preset.nLayer);
    server = await startLlamaServer({
      bin: build.llamaServer, model, port: await freePort(), threads, ctxSize, readyTimeoutMs: 300_000,
      extraArgs: ['--rpc', split.devices.join(','), ...PIN_TO_HEAD_ARGS, ...split.args, '--fit', 'off', '-np', String(maxC)],
    });
    await shapes(server.url, k, 'tcp', (s) => { for (const p of proxies) p.setShape(s); }, () => proxies.reduce((a, p) => a + p.bytesToTarget + p.bytesFromTarget, 0));
  } finally {
    await server?.stop();
    await Promise.all(proxies.map((p) => p.close()));
  }
}

async function starLibp2p(build: LlamaBuild, model: string, sha: string, head: MeshNode, workers: MeshNode[], slices: SliceWorker[], k: number): Promise<void> {
  const assignments: Assignment[] = [];
  for (const [i, [start, end]] of rangesFor(k).entries()) {
    const w = workers[i];
    const c = await writeTestContract(w.store, { modelSha256: sha, headKey: head.key, workerKey: w.key, layerStart: start, layerEnd: end });
    assignments.push({ worker: w.peerId.toString(), start, end, contractId: c.id, addrs: w.multiaddrs() });
  }
  const p = await startPipeline({
    node: head, model: { path: model, sha256: sha, nLayer: preset.nLayer }, assignments, llamaServerBin: build.llamaServer,
    threads, ctxSize, stallTimeoutMs: 120_000, pingIntervalMs: 0, extraArgs: ['-np', String(maxC)],
  });
  try {
    await shapes(p.url, k, 'libp2p', (s) => p.setLinkShape(s), () => p.links().reduce((a, l) => a + l.bytesToWorker + l.bytesFromWorker, 0));
  } finally {
    await p.stop();
    await Promise.all(assignments.map((a, i) => slices[i].release(a.contractId)));
  }
}

function printTable(): void {
  const kib = (b: number | null) => (b === null ? '–' : `${(b / 1024).toFixed(1)} KiB`);
  console.log(`\n| setup | stages | one-way delay | cap | concurrent | tok/s | vs one process | bytes/token/link | floor ms/step | wire ms/step | same text |`);
  console.log(`|---|---|---|---|---|---|---|---|---|---|---|`);
  for (const r of rows) {
    console.log(`| ${r.setup}${r.transport === 'none' ? '' : ` (${r.transport})`} | ${r.stages} | ${r.delay_ms} ms | ${r.bandwidth_mbit ? `${r.bandwidth_mbit} Mbit/s` : '–'} | ${r.concurrent} | ${r.tok_s.toFixed(1)} | ${r.ratio.toFixed(2)}x | ${kib(r.bytes_per_token_per_link)} | ${r.floor_ms.toFixed(1)} | ${r.wire_ms === null ? '–' : r.wire_ms.toFixed(1)} | ${r.identical ? 'yes' : 'NO'} |`);
  }
}

async function main(): Promise<void> {
  const started = Date.now();
  const loadAtStart = loadavg()[0];
  const build = await ensureLlamaBuild();
  const model = await benchModel();
  const sha = await sha256File(model);
  console.error(`model ${model} (${sha.slice(0, 12)}…), llama.cpp ${build.version}, ${threads} thread(s) per process, ${repeats} repeat(s)`);
  const root = await mkdtemp(join(tmpdir(), 'clawmesh-bench-engine-'));
  const servers: RpcServerHandle[] = [];
  const nodes: MeshNode[] = [];
  const slices: SliceWorker[] = [];
  const maxK = Math.max(...workerCounts);
  try {
    await oneProcess(build, model);
    if (transports.includes('tcp')) {
      for (let i = 0; i < maxK; i++) servers.push(await startRpcServer({ bin: build.rpcServer, port: await freePort(), threads }));
      for (const k of workerCounts) {
        await starTcp(build, model, servers, k);
        console.error(`star over tcp, ${k} workers done (${((Date.now() - started) / 1000).toFixed(0)} s)`);
      }
      await Promise.all(servers.map((s) => s.stop()));
      servers.length = 0;
    }
    if (transports.includes('libp2p')) {
      const head = await openLoopbackNode(join(root, 'head'), 'head');
      await head.start();
      nodes.push(head);
      for (let i = 0; i < maxK; i++) {
        const w = await openLoopbackNode(join(root, `w${i}`), `w${i}`);
        await w.start();
        nodes.push(w);
        // The whole file as one layer's size: a cap no split of this model can reach (the bench measures speed).
        slices.push(await SliceWorker.start({ node: w, rpcServerBin: build.rpcServer, threads, noCache: true, layerBytes: statSync(model).size }));
      }
      for (const k of workerCounts) {
        await starLibp2p(build, model, sha, head, nodes.slice(1), slices, k);
        console.error(`star over libp2p, ${k} workers done (${((Date.now() - started) / 1000).toFixed(0)} s)`);
      }
    }
  } finally {
    await Promise.allSettled(slices.map((s) => s.stop()));
    await Promise.allSettled(servers.map((s) => s.stop()));
    await stopAll(nodes);
    await rm(root, { recursive: true, force: true });
  }
  printTable();
  if (values.json !== undefined) writeFileSync(values.json, JSON.stringify(rows, null, 2) + '\n');
  console.log(`\n(machine load average at start ${loadAtStart.toFixed(1)}, at end ${loadavg()[0].toFixed(1)}: other work on the box skews tokens/s)`);
  console.log(`(total ${((Date.now() - started) / 1000).toFixed(0)} s; model "${presetName}": ${preset.nLayer} layers, n_embd ${preset.nEmbd}, f16; output matrix on the head; ` +
    `tokens per request: ${[...new Set(delays)].map((d) => `${tokensFor(d)} at ${d} ms`).join(', ')}; floor = 2·k·d + one process's ms per step at the same concurrency)`);
}

main().catch((err) => {
  console.error(`bench-engine: ${(err as Error).stack ?? err}`);
  process.exitCode = 1;
});
