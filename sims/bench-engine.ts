/**
 * Engine benchmark, one run on the ~320 MB "bench" test model (f16, n_embd 1024, 8 layers), greedy:
 *   - one llama-server process (all layers on its CPU): the baseline;
 *   - 2 and 3 rpc-server workers reached over direct TCP (no proxy), and through a byte-counting
 *     user-space proxy with 0 / 10 / 25 ms one-way delay per chunk;
 *   - 2 and 3 workers reached through /clawmesh/rpc/1 libp2p tunnels with 0 / 10 / 25 ms one-way delay
 *     added inside the tunnel.
 * Reports generation tokens/s (llama-server's own timing, prompt excluded), its ratio to the baseline,
 * and RPC payload bytes on the wire per generated token (measured as the difference between an
 * N-token and a 4-token request, so prompt processing cancels out; libp2p framing not included).
 * All libp2p nodes (head + workers) run in this one Node process; llama-server and every rpc-server
 * are separate processes. Every process gets the same thread count, 1 by default: on a 2-core box,
 * ggml's spinning worker threads in several processes fight over the cores (with 2 threads the
 * one-process baseline itself dropped from 36 to 12 tok/s), which would measure contention, not links.
 * Usage: npx tsx sims/bench-engine.ts [--threads 1] [--tokens 48] [--delays 0,10,25] [--workers 2,3] [--repeats 3]
 */
import '../runtime/polyfill.ts';
import { existsSync, mkdirSync, renameSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { homedir, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureLlamaBuild, type LlamaBuild } from '../runtime/engine/build.ts';
import { TEST_MODEL_PRESETS, generateTestModel } from '../runtime/engine/test-model.ts';
import { sha256File } from '../runtime/engine/catalog.ts';
import { freePort, serverGreedyCompletion, startLlamaServer, startRpcServer, type RpcServerHandle } from '../runtime/engine/llama-procs.ts';
import { computeTensorSplit } from '../runtime/engine/split.ts';
import { startDelayProxy, type DelayProxy } from '../runtime/engine/delay-proxy.ts';
import { writeTestContract } from '../runtime/engine/contracts.ts';
import { SliceWorker } from '../runtime/engine/worker.ts';
import { startPipeline, type Assignment } from '../runtime/engine/head.ts';
import { openLoopbackNode, stopAll } from '../runtime/node/local-mesh.ts';
import type { MeshNode } from '../runtime/node/node.ts';

const { values } = parseArgs({
  options: {
    threads: { type: 'string', default: '1' },
    tokens: { type: 'string', default: '48' },
    delays: { type: 'string', default: '0,10,25' },
    workers: { type: 'string', default: '2,3' },
    prompt: { type: 'string', default: 'Once upon a time' },
    repeats: { type: 'string', default: '3' },
  },
});
const threads = Number(values.threads);
const delays = values.delays.split(',').map(Number);
const workerCounts = values.workers.split(',').map(Number);
const PROMPT = values.prompt;
const preset = TEST_MODEL_PRESETS.bench;
/** Fewer tokens on slow links keep the whole run within minutes. */
const tokensFor = (delay: number) => (delay === 0 ? Number(values.tokens) : delay <= 10 ? 24 : 16);

interface Row { setup: string; workers: number; delay: number; tps: number; bytesPerToken?: number; identical: boolean; loadS: number }
const rows: Row[] = [];
const record = (r: Row) => {
  rows.push(r);
  console.error(`  ${r.setup}, ${r.workers} worker(s), ${r.delay} ms: ${r.tps.toFixed(1)} tok/s, load ${r.loadS.toFixed(1)} s${r.bytesPerToken !== undefined ? `, ${(r.bytesPerToken / 1024).toFixed(1)} KiB/token` : ''}`);
};
let baselineText = '';
let baselineTps = NaN;

function rangesFor(k: number): Array<[number, number]> {
  const per = Math.ceil(preset.nLayer / k);
  return Array.from({ length: k }, (_, i) => [i * per, Math.min(preset.nLayer, (i + 1) * per)] as [number, number]).filter(([s, e]) => s < e);
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Greedy tokens/s of an N-token run (median of --repeats runs: a 2-core box is noisy), and wire bytes
 * per token from the N-token minus 4-token difference.
 */
async function measure(url: string, delay: number, bytes: () => number): Promise<{ tps: number; bytesPerToken?: number; text: string }> {
  const runs: Array<{ tps: number; bytesPerToken?: number; text: string }> = [];
  for (let i = 0; i < Number(values.repeats); i++) runs.push(await measureOnce(url, delay, bytes));
  const tps = median(runs.map((r) => r.tps));
  return { tps, bytesPerToken: runs[0].bytesPerToken, text: runs[0].text };
}

async function measureOnce(url: string, delay: number, bytes: () => number): Promise<{ tps: number; bytesPerToken?: number; text: string }> {
  const n = tokensFor(delay);
  const b0 = bytes();
  await serverGreedyCompletion(url, PROMPT, 4);
  const b1 = bytes();
  const res = await serverGreedyCompletion(url, PROMPT, n);
  const b2 = bytes();
  const generated = res.tokens.length;
  const perToken = generated > 4 ? ((b2 - b1) - (b1 - b0)) / (generated - 4) : undefined;
  return { tps: res.tokensPerSecond, bytesPerToken: perToken, text: res.text };
}

async function benchModel(): Promise<string> {
  const dir = join(homedir(), '.cache', 'clawmesh', 'bench-models');
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'bench-s7-f16.gguf');
  if (!existsSync(path)) {
    console.error(`generating ${path} (~320 MB)…`);
    await generateTestModel({ path: path + '.tmp', seed: 7, ...preset });
    renameSync(path + '.tmp', path);
  }
  return path;
}

async function oneProcess(build: LlamaBuild, model: string): Promise<void> {
  const t0 = Date.now();
  const server = await startLlamaServer({ bin: build.llamaServer, model, port: await freePort(), threads, ctxSize: 512, extraArgs: ['-ngl', '0'] });
  const loadS = (Date.now() - t0) / 1000;
  try {
    // Warm-up: the first request pays page faults on the weights.
    await serverGreedyCompletion(server.url, PROMPT, 4);
    const m = await measure(server.url, 0, () => 0);
    baselineText = m.text;
    baselineTps = m.tps;
    record({ setup: 'one process', workers: 1, delay: 0, tps: m.tps, identical: true, loadS });
  } finally {
    await server.stop();
  }
}

async function direct(build: LlamaBuild, model: string, servers: RpcServerHandle[], k: number, delay: number | 'none'): Promise<void> {
  const used = servers.slice(0, k);
  const proxies: DelayProxy[] = [];
  try {
    if (delay !== 'none') for (const s of used) proxies.push(await startDelayProxy(s.endpoint, delay));
    const endpoints = delay === 'none' ? used.map((s) => s.endpoint) : proxies.map((p) => p.endpoint);
    const split = computeTensorSplit(rangesFor(k).map(([start, end], i) => ({ worker: endpoints[i], start, end })), preset.nLayer);
    const t0 = Date.now();
    const server = await startLlamaServer({
      bin: build.llamaServer, model, port: await freePort(), threads, ctxSize: 512, readyTimeoutMs: 300_000,
      extraArgs: ['--rpc', split.devices.join(','), ...split.args, '--fit', 'off'],
    });
    const loadS = (Date.now() - t0) / 1000;
    try {
      const d = delay === 'none' ? 0 : delay;
      const m = await measure(server.url, d, () => proxies.reduce((a, p) => a + p.bytesToTarget + p.bytesFromTarget, 0));
      record({
        setup: delay === 'none' ? 'direct TCP' : 'TCP via delay proxy', workers: k, delay: d, tps: m.tps,
        bytesPerToken: delay === 'none' ? undefined : m.bytesPerToken, identical: baselineText.startsWith(m.text) || m.text.startsWith(baselineText), loadS,
      });
    } finally {
      await server.stop();
    }
  } finally {
    await Promise.all(proxies.map((p) => p.close()));
  }
}

async function tunnels(build: LlamaBuild, model: string, sha: string, head: MeshNode, workers: MeshNode[], slices: SliceWorker[], k: number, delay: number): Promise<void> {
  const assignments: Assignment[] = [];
  for (const [i, [start, end]] of rangesFor(k).entries()) {
    const w = workers[i];
    const c = await writeTestContract(w.store, { modelSha256: sha, headKey: head.key, workerKey: w.key, layerStart: start, layerEnd: end });
    assignments.push({ worker: w.peerId.toString(), start, end, contractId: c.id, addrs: w.multiaddrs() });
  }
  const t0 = Date.now();
  const p = await startPipeline({
    node: head, model: { path: model, sha256: sha, nLayer: preset.nLayer }, assignments, llamaServerBin: build.llamaServer,
    threads, ctxSize: 512, delayMs: delay, stallTimeoutMs: 120_000, pingIntervalMs: 0,
  });
  const loadS = (Date.now() - t0) / 1000;
  try {
    const m = await measure(p.url, delay, () => p.links().reduce((a, l) => a + l.bytesToWorker + l.bytesFromWorker, 0));
    record({ setup: 'libp2p tunnel', workers: k, delay, tps: m.tps, bytesPerToken: m.bytesPerToken, identical: baselineText.startsWith(m.text) || m.text.startsWith(baselineText), loadS });
  } finally {
    await p.stop();
    await Promise.all(assignments.map((a, i) => slices[i].release(a.contractId)));
  }
}

function printTable(): void {
  const fmtBytes = (b?: number) => (b === undefined ? '–' : b >= 1 << 20 ? `${(b / (1 << 20)).toFixed(2)} MiB` : `${(b / 1024).toFixed(1)} KiB`);
  console.log(`\n| setup | workers | one-way delay | tokens/s | vs one process | wire bytes / token | model load | same text |`);
  console.log(`|---|---|---|---|---|---|---|---|`);
  for (const r of rows) {
    console.log(`| ${r.setup} | ${r.workers} | ${r.delay} ms | ${r.tps.toFixed(1)} | ${(r.tps / baselineTps).toFixed(2)}x | ${fmtBytes(r.bytesPerToken)} | ${r.loadS.toFixed(1)} s | ${r.identical ? 'yes' : 'NO'} |`);
  }
}

async function main(): Promise<void> {
  const started = Date.now();
  const loadAtStart = loadavg()[0];
  const build = await ensureLlamaBuild();
  const model = await benchModel();
  const sha = await sha256File(model);
  console.error(`model ${model} (${sha.slice(0, 12)}…), llama.cpp ${build.version}, ${threads} threads per process`);
  const root = await mkdtemp(join(tmpdir(), 'clawmesh-bench-engine-'));
  const servers: RpcServerHandle[] = [];
  const nodes: MeshNode[] = [];
  const slices: SliceWorker[] = [];
  try {
    await oneProcess(build, model);
    console.error(`one process: ${baselineTps.toFixed(1)} tok/s`);
    const maxK = Math.max(...workerCounts);
    for (let i = 0; i < maxK; i++) servers.push(await startRpcServer({ bin: build.rpcServer, port: await freePort(), threads }));
    for (const k of workerCounts) {
      await direct(build, model, servers, k, 'none');
      for (const d of delays) await direct(build, model, servers, k, d);
      console.error(`direct TCP, ${k} workers done (${((Date.now() - started) / 1000).toFixed(0)} s)`);
    }
    await Promise.all(servers.map((s) => s.stop()));
    servers.length = 0;

    const head = await openLoopbackNode(join(root, 'head'), 'head');
    await head.start();
    nodes.push(head);
    for (let i = 0; i < maxK; i++) {
      const w = await openLoopbackNode(join(root, `w${i}`), `w${i}`);
      await w.start();
      nodes.push(w);
      slices.push(await SliceWorker.start({ node: w, rpcServerBin: build.rpcServer, threads, noCache: true }));
    }
    for (const k of workerCounts) {
      for (const d of delays) await tunnels(build, model, sha, head, nodes.slice(1), slices, k, d);
      console.error(`libp2p tunnels, ${k} workers done (${((Date.now() - started) / 1000).toFixed(0)} s)`);
    }
  } finally {
    await Promise.allSettled(slices.map((s) => s.stop()));
    await Promise.allSettled(servers.map((s) => s.stop()));
    await stopAll(nodes);
    await rm(root, { recursive: true, force: true });
  }
  printTable();
  console.log(`\n(machine load average at start ${loadAtStart.toFixed(1)}, at end ${loadavg()[0].toFixed(1)}: other work on the box skews tokens/s)`);
  console.log(`(total ${((Date.now() - started) / 1000).toFixed(0)} s; model ${preset.nLayer} layers, n_embd ${preset.nEmbd}, f16; tokens per run: ${delays.map((d) => `${tokensFor(d)} at ${d} ms`).join(', ')})`);
}

main().catch((err) => {
  console.error(`bench-engine: ${(err as Error).stack ?? err}`);
  process.exitCode = 1;
});
