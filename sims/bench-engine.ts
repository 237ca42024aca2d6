/**
 * Engine benchmark on a seeded-random test model, greedy, three setups in one run:
 *   - one process: llama-server (all layers on its CPU) at each concurrency, llama-completion (one
 *     request), and the chain's own stage program as a 1-stage chain over no network (a stage holding
 *     every layer plus the head's ends process): the reference for the chain, same kernels and calls;
 *   - the star (llama.cpp RPC) over k rpc-server workers, with the output matrix and embeddings pinned
 *     to the head (PIN_TO_HEAD_ARGS), reached through a byte-counting user-space proxy ("tcp") and,
 *     unless --quick, through /clawmesh/rpc/1 libp2p tunnels ("libp2p");
 *   - the chain (runtime/engine/chain.ts over chain-net.ts): k stage servers on libp2p nodes, hidden
 *     states head → stage 1 → … → stage k → head, each hop applying the link shape to what it sends;
 *     8 concurrent requests are 8 ChainEngine.generate() calls on one engine (slots 8) for each lanes
 *     value 2..k+1;
 * under each emulated link shape: one-way delay × bandwidth cap per direction (0 = uncapped), with 1
 * and 8 concurrent requests.
 * Reports aggregate generation tokens/s (prompt excluded), its ratio to one process at the same
 * concurrency (star: llama-server; chain: the stage program's 1-stage chain, and llama-server beside
 * it), bytes per generated token per link (N-token minus 4-token runs, so prompts cancel; frame bytes,
 * without libp2p's yamux/noise framing), ms per token per stream and the floor: star 2·k·d, chain
 * (k+1)·d, plus one process's ms per step at the same concurrency measured in the same run.
 * All libp2p nodes run in this one Node process; every llama.cpp process (llama-server, rpc-server,
 * stage) has the same thread count (1 by default: several spinning ggml pools on a 2-core box measure
 * contention, not links).
 * Usage: npx tsx sims/bench-engine.ts [--quick] [--json FILE] [--model bench|small|tiny|large] [--setups one-process,star,chain]
 *        [--workers 2,3,4] [--delays 0,10,25] [--bandwidths 0,20] [--concurrent 1,8] [--tokens 32] [--repeats 3]
 *        [--transports tcp,libp2p] [--lanes 2,3]
 * --model large generates a 16-layer, 2048-wide model (about 1.6 GB) when the machine has the memory.
 */
import '../runtime/polyfill.ts';
import { existsSync, mkdirSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { multiaddr } from '@multiformats/multiaddr';
import { mkdtemp, rm } from 'node:fs/promises';
import { availableParallelism, freemem, homedir, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ensureLlamaBuild, type LlamaBuild } from '../runtime/engine/build.ts';
import { TEST_MODEL_PRESETS, generateTestModel } from '../runtime/engine/test-model.ts';
import { sha256File } from '../runtime/engine/catalog.ts';
import { freePort, runCompletion, startLlamaServer, startRpcServer, type LlamaServerHandle, type RpcServerHandle } from '../runtime/engine/llama-procs.ts';
import { ensureStageBinary } from '../runtime/engine/stage-build.ts';
import { writeEndsGguf, writeStageGguf } from '../runtime/engine/stage-gguf.ts';
import { StageProcess } from '../runtime/engine/stage-proc.ts';
import { ChainEngine, LocalPath } from '../runtime/engine/chain.ts';
import { ChainClient, StageServer } from '../runtime/engine/chain-net.ts';
import type { ChainHop } from '../protocols/chain.ts';
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
    setups: { type: 'string', default: 'one-process,star,chain' },
    threads: { type: 'string', default: '1' },
    tokens: { type: 'string' },
    delays: { type: 'string' },
    bandwidths: { type: 'string' },
    workers: { type: 'string' },
    concurrent: { type: 'string', default: '1,8' },
    prompt: { type: 'string', default: 'Once upon a time' },
    repeats: { type: 'string' },
    transports: { type: 'string' },
    lanes: { type: 'string' },
  },
});
const quick = values.quick;
const list = (s: string) => s.split(',').map(Number);
const setups = new Set(values.setups.split(','));
if (setups.has('star')) setups.add('one-process'); // the star's ratios and floors are to llama-server
const threads = Number(values.threads);
const delays = list(values.delays ?? (quick ? '0,25' : '0,10,25'));
const bandwidths = list(values.bandwidths ?? '0,20');
const workerCounts = list(values.workers ?? (quick ? '2,3' : '2,3,4'));
const concurrents = list(values.concurrent);
const repeats = Number(values.repeats ?? (quick ? 1 : 3));
const transports = (values.transports ?? (quick ? 'tcp' : 'tcp,libp2p')).split(',') as Array<'tcp' | 'libp2p'>;
/** A model larger than the presets, generated on demand (--model large) when memory allows. */
const LARGE = { nEmbd: 2048, nLayer: 16, nHead: 16, nHeadKv: 8, nFf: 5632 } as const;
const presetName = values.model ?? 'bench';
const preset = presetName === 'large' ? LARGE : TEST_MODEL_PRESETS[presetName as keyof typeof TEST_MODEL_PRESETS];
if (preset === undefined) throw new Error(`unknown --model ${presetName}: ${[...Object.keys(TEST_MODEL_PRESETS), 'large'].join(', ')}`);
const baseTokens = Number(values.tokens ?? 32);
const maxC = Math.max(...concurrents);
/** Per-slot context: prompt + tokens fit with room; llama-server divides -c among its -np slots. */
const ctxSize = 256 * maxC;
const PROMPT = values.prompt;
/** The star pays 2·k·d per token: fewer tokens on slow links keep the run within minutes (the chain always runs baseTokens). */
const tokensFor = (delay: number) => (delay === 0 || quick ? baseTokens : Math.max(8, Math.min(baseTokens, delay <= 10 ? 24 : 16)));
/** Rows per pass of every stage process and of the ends. */
const STAGE_BATCH = 64;

interface Row {
  setup: 'one-process' | 'star' | 'chain';
  /** The program computing: llama-server / llama-completion (llama.cpp's tools) or the chain's stage program. */
  engine: 'llama-server' | 'llama-completion' | 'stage';
  transport: 'none' | 'tcp' | 'libp2p';
  stages: number;
  /** Chain only: groups of sequences stepping independently (1 for a single request). */
  lanes: number | null;
  delay_ms: number;
  /** 0 = uncapped. */
  bandwidth_mbit: number;
  concurrent: number;
  tok_s: number;
  /** To one process at the same concurrency: star → llama-server, chain → the stage program's 1-stage chain. */
  ratio: number;
  /** To llama-server at the same concurrency. */
  ratio_llama_server: number | null;
  bytes_per_token_per_link: number | null;
  /** Per stream: 1000 · concurrent / tok_s. */
  ms_per_token: number;
  /**
   * Stage program rows: the median gap between a request's successive tokens. On a shared, loaded
   * machine a process waiting for its turn adds gaps of 100+ ms now and then; the median keeps the
   * link's cost and drops most of that noise. The chain's targets are read on both.
   */
  ms_per_token_p50: number | null;
  /** The floor on the p50 scale: (k+1)·d + the 1-stage reference's p50 at the same concurrency. */
  floor_p50_ms: number | null;
  floor_ms: number;
  /** Bytes of one step serialised at the cap (star: links one after another; chain: every leg). */
  wire_ms: number | null;
  identical: boolean;
  /** Chain only, per pass (step) of the long run: where the head's time went. */
  breakdown?: { steps: number; rows_per_step: number; ends_ms: number; path_ms: number; stages_ms: number; legs_ms: number; overhead_ms: number };
}
const rows: Row[] = [];
/** llama-server: aggregate tok/s and greedy texts per concurrency. */
const baseline = new Map<number, { tps: number; texts: string[] }>();
/**
 * The stage program's 1-stage chain: tok/s and greedy tokens per concurrency. Tokens are compared at
 * the same concurrency: a pass of several rows takes other matmul kernels than a pass of one, so on a
 * random model (near-tie logits) greedy output of a batched request may part from a lone one's.
 */
const stageBase = new Map<number, { tps: number; p50: number; tokens: number[] }>();

const record = (r: Row) => {
  rows.push(r);
  console.error(`  ${r.setup}${r.transport === 'none' ? '' : `/${r.transport}`} ${r.engine} k=${r.stages}${r.lanes !== null ? ` lanes=${r.lanes}` : ''} d=${r.delay_ms} ms bw=${r.bandwidth_mbit || '∞'} c=${r.concurrent}: ` +
    `${r.tok_s.toFixed(1)} tok/s (${r.ratio.toFixed(2)}x), ${r.ms_per_token.toFixed(1)} ms/token, floor ${r.floor_ms.toFixed(1)} ms` +
    `${r.ms_per_token_p50 !== null ? ` (median gap ${r.ms_per_token_p50.toFixed(1)} ms, floor ${r.floor_p50_ms!.toFixed(1)})` : ''}` +
    `${r.bytes_per_token_per_link !== null ? `, ${(r.bytes_per_token_per_link / 1024).toFixed(2)} KiB/token/link` : ''}${r.identical ? '' : ', TOKENS DIFFER'}` +
    (r.breakdown ? `\n      a pass (mean of ${r.breakdown.steps}, ${r.breakdown.rows_per_step.toFixed(1)} rows): ends ${r.breakdown.ends_ms.toFixed(1)} ms + path ${r.breakdown.path_ms.toFixed(1)} ms ` +
      `(stage processes ${r.breakdown.stages_ms.toFixed(1)}, emulated legs ${r.breakdown.legs_ms.toFixed(1)}, the rest: libp2p, JS, wakeups${r.bandwidth_mbit ? ', pacing' : ''} ${r.breakdown.overhead_ms.toFixed(1)})` : ''));
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
    // f16 weights: 2 bytes a parameter; the one process, the stages and the star's workers each load a share.
    const bytes = 2 * preset.nLayer * (2 * preset.nEmbd * preset.nEmbd + 2 * preset.nEmbd * (preset.nEmbd * preset.nHeadKv / preset.nHead) + 3 * preset.nEmbd * preset.nFf) + 4 * 32000 * preset.nEmbd;
    if (freemem() < 5 * bytes) throw new Error(`model "${presetName}" (about ${(bytes / 2 ** 30).toFixed(1)} GiB) needs ${(5 * bytes / 2 ** 30).toFixed(1)} GiB free; this machine has ${(freemem() / 2 ** 30).toFixed(1)} GiB`);
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
        setup: 'one-process', engine: 'llama-server', transport: 'none', stages: 1, lanes: null, delay_ms: 0, bandwidth_mbit: 0, concurrent: c, tok_s: m.tps,
        ratio: 1, ratio_llama_server: 1, bytes_per_token_per_link: null, ms_per_token: (1000 * c) / m.tps, ms_per_token_p50: null, floor_ms: (1000 * c) / m.tps, floor_p50_ms: null, wire_ms: null, identical: true,
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
          setup: 'star', engine: 'llama-server', transport, stages: k, lanes: null, delay_ms: d, bandwidth_mbit: bw, concurrent: c, tok_s: m.tps,
          ratio: m.tps / base, ratio_llama_server: m.tps / base, bytes_per_token_per_link: m.bytesPerTokenPerLink,
          ms_per_token: (1000 * c) / m.tps, ms_per_token_p50: null, floor_ms: 2 * k * d + (1000 * c) / base, floor_p50_ms: null,
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

/** llama-completion, one request: its own eval speed (prompt excluded), median of repeats. */
async function completionRef(build: LlamaBuild, model: string): Promise<void> {
  const n = tokensFor(0);
  const runs: Array<{ tps: number; text: string }> = [];
  for (let i = 0; i < Math.max(1, repeats); i++) {
    const r = await runCompletion({ bin: build.completion, model, prompt: PROMPT, nPredict: n, threads, ctxSize: 512, extraArgs: ['-ngl', '0'], timeoutMs: 600_000 });
    runs.push({ tps: r.evalTokensPerSecond ?? NaN, text: r.text });
  }
  const tps = median(runs.map((r) => r.tps));
  const server = baseline.get(1);
  record({
    setup: 'one-process', engine: 'llama-completion', transport: 'none', stages: 1, lanes: null, delay_ms: 0, bandwidth_mbit: 0, concurrent: 1, tok_s: tps,
    ratio: server ? tps / server.tps : 1, ratio_llama_server: server ? tps / server.tps : null, bytes_per_token_per_link: null,
    ms_per_token: 1000 / tps, ms_per_token_p50: null, floor_ms: 1000 / tps, floor_p50_ms: null, wire_ms: null, identical: server ? sameText(1, [runs[0].text]) : true,
  });
}

// ---------------------------------------------------------------------------------------------
// Chain

interface ChainKit {
  ends: StageProcess;
  prompt: Int32Array;
  client: ChainClient;
  servers: StageServer[];
  head: MeshNode;
  workers: MeshNode[];
}

interface ChainMeasured { tps: number; p50: number; bytesPerTokenPerLink: number | null; tokens: number[][]; steps: number; rows: number; endsMs: number; pathMs: number; stagesMs: number; spanMs: number }

/**
 * c concurrent greedy requests on one engine. Generation rate: tokens after each request's first
 * over the span from the earliest first token to the latest last one (prefill excluded).
 */
async function chainBatch(engine: ChainEngine, prompt: Int32Array, c: number, n: number): Promise<{ gen: number; span: number; tokens: number[][]; gaps: number[] }> {
  const first: number[] = [];
  const last: number[] = [];
  const gaps: number[] = [];
  const res = await Promise.all(Array.from({ length: c }, (_, i) => engine.generate({
    prompt, maxTokens: n, sampling: { temperature: 0 },
    onToken: () => { const t = performance.now(); if (last[i] !== undefined) gaps.push(t - last[i]); first[i] ??= t; last[i] = t; },
  })));
  const gen = res.reduce((a, r) => a + Math.max(0, r.tokens.length - 1), 0);
  return { gen, span: Math.max(...last) - Math.min(...first), tokens: res.map((r) => r.tokens), gaps };
}

async function measureChain(engine: ChainEngine, prompt: Int32Array, c: number, n: number, links: number, bytes?: () => number, busy?: () => number): Promise<ChainMeasured> {
  const runs: ChainMeasured[] = [];
  for (let i = 0; i < repeats; i++) {
    const b0 = bytes?.() ?? 0;
    const short = await chainBatch(engine, prompt, c, 4);
    const b1 = bytes?.() ?? 0;
    const s0 = { ...engine.stats };
    const busy0 = busy?.() ?? 0;
    const long = await chainBatch(engine, prompt, c, n);
    const b2 = bytes?.() ?? 0;
    const extra = long.tokens.flat().length - short.tokens.flat().length;
    runs.push({
      tps: (long.gen / long.span) * 1000,
      p50: median(long.gaps),
      bytesPerTokenPerLink: bytes !== undefined && extra > 0 ? ((b2 - b1) - (b1 - b0)) / extra / links : null,
      tokens: long.tokens,
      steps: engine.stats.steps - s0.steps, rows: engine.stats.rows - s0.rows, endsMs: engine.stats.endsMs - s0.endsMs,
      pathMs: engine.stats.pathMs - s0.pathMs, stagesMs: (busy?.() ?? 0) - busy0, spanMs: long.span,
    });
  }
  const mid = median(runs.map((r) => r.tps));
  return runs.find((r) => r.tps === mid)!;
}

/** Every request's tokens are the 1-stage reference's at this concurrency (as a prefix: runs may differ in length). */
function sameTokens(c: number, tokens: number[][]): boolean {
  const ref = stageBase.get(c)?.tokens ?? [];
  return tokens.every((t) => t.every((x, i) => i >= ref.length || ref[i] === x));
}

/** Per pass (prefill passes included): ms in the ends, on the path, in the stage processes, on the emulated legs, and the rest (libp2p, JS, wakeups). */
function breakdown(m: ChainMeasured, legsMs: number): Row['breakdown'] {
  const per = (v: number) => (m.steps > 0 ? v / m.steps : 0);
  // One process has no path: its "stage" time is the whole forward pass.
  const stages = legsMs === 0 && m.stagesMs === 0 ? m.pathMs : m.stagesMs;
  return {
    steps: m.steps, rows_per_step: per(m.rows), ends_ms: per(m.endsMs), path_ms: per(m.pathMs),
    stages_ms: per(stages), legs_ms: legsMs, overhead_ms: per(m.pathMs - stages) - legsMs,
  };
}

/** The stage program as one process: a stage holding every layer plus the ends, a 1-stage chain over no network. */
async function stageReference(bin: string, model: string, sha: string, dir: string, kit: ChainKit): Promise<void> {
  // Named as StageServer names its stage files: a stage over every layer is the same file.
  const file = join(dir, `${sha.slice(0, 16)}-0-${preset.nLayer}.gguf`);
  if (!existsSync(file)) {
    writeStageGguf(model, file + '.tmp', { start: 0, end: preset.nLayer });
    renameSync(file + '.tmp', file);
  }
  const whole = await StageProcess.start({ bin, model: file, role: 'stage', threads, seqs: maxC, batch: STAGE_BATCH, ctx: 512 });
  try {
    const path = new LocalPath([whole]);
    const warm = new ChainEngine({ ends: kit.ends, path, slots: maxC, batch: STAGE_BATCH, lanes: 1 });
    await chainBatch(warm, kit.prompt, 1, 4); // page faults on the weights
    for (const c of concurrents) {
      const engine = new ChainEngine({ ends: kit.ends, path, slots: maxC, batch: STAGE_BATCH, lanes: 1 });
      const m = await measureChain(engine, kit.prompt, c, baseTokens, 1);
      const agree = m.tokens.every((t) => t.join() === m.tokens[0].join());
      stageBase.set(c, { tps: m.tps, p50: m.p50, tokens: m.tokens[0] });
      const server = baseline.get(c);
      const text = (await kit.ends.pieces(Int32Array.from(m.tokens[0]))).map((p) => p.bytes.toString('latin1'));
      const textSame = server === undefined || sameText(c, [Buffer.from(text.join(''), 'latin1').toString('utf8')]);
      if (!textSame) console.error(`  (the stage program's greedy text differs from llama-server's at c=${c})`);
      record({
        setup: 'one-process', engine: 'stage', transport: 'none', stages: 1, lanes: 1, delay_ms: 0, bandwidth_mbit: 0, concurrent: c, tok_s: m.tps,
        ratio: 1, ratio_llama_server: server ? m.tps / server.tps : null, bytes_per_token_per_link: null,
        ms_per_token: (1000 * c) / m.tps, ms_per_token_p50: m.p50, floor_ms: (1000 * c) / m.tps, floor_p50_ms: m.p50, wire_ms: null, identical: agree && textSame,
        breakdown: breakdown(m, 0),
      });
    }
  } finally {
    await whole.stop();
  }
}

async function chainRoute(kit: ChainKit, sha: string, k: number): Promise<ChainHop[]> {
  return await Promise.all(rangesFor(k).map(async ([start, end], i) => {
    const w = kit.workers[i];
    const c = await writeTestContract(w.store, { modelSha256: sha, headKey: kit.head.key, workerKey: w.key, layerStart: start, layerEnd: end });
    return { peer: w.peerId.toString(), contract: c.id, start, end };
  }));
}

/** Every link shape × concurrency (× lanes) on k stages; the path is opened afresh per shape (every hop applies it). */
async function chainShapes(kit: ChainKit, sha: string, k: number): Promise<void> {
  const route = await chainRoute(kit, sha, k);
  const nEmbd = kit.ends.info.n_embd;
  const links = k + 1;
  const contracts = new Set(route.map((h) => h.contract));
  for (const d of delays) {
    for (const bw of bandwidths) {
      const path = await kit.client.open({ model: sha, route, nEmbd, shape: { delayMs: d, bandwidthMbit: bw }, stallMs: 120_000 });
      const bytes = () => (path.traffic()[0]?.sent ?? 0) + kit.servers.flatMap((s) => s.traffic()).filter((t) => contracts.has(t.contract)).reduce((a, t) => a + t.sent, 0);
      const busy = () => kit.servers.flatMap((s) => s.meter()).filter((m) => contracts.has(m.contract)).reduce((a, m) => a + m.busyMs, 0);
      try {
        await chainBatch(new ChainEngine({ ends: kit.ends, path, slots: maxC, batch: STAGE_BATCH, lanes: 1 }), kit.prompt, 1, 2); // stages load their weights
        for (const c of concurrents) {
          // Lanes 2..k+1 (the ends are a stage of compute too); --quick tries the two ends of that range.
          const all = Array.from({ length: k }, (_, i) => i + 2);
          const laneValues = c === 1 ? [1] : (values.lanes !== undefined ? list(values.lanes) : quick ? [...new Set([2, k + 1])] : all).filter((l) => l <= c);
          for (const lanes of laneValues) {
            const engine = new ChainEngine({ ends: kit.ends, path, slots: maxC, batch: STAGE_BATCH, lanes });
            const m = await measureChain(engine, kit.prompt, c, baseTokens, links, bytes, busy);
            const ref = stageBase.get(c)?.tps ?? NaN;
            const server = baseline.get(c)?.tps;
            // Bytes of one step on one leg (every leg carries the same rows), serialised at the cap.
            const perStepLeg = m.bytesPerTokenPerLink !== null ? m.bytesPerTokenPerLink * c / lanes : null;
            record({
              setup: 'chain', engine: 'stage', transport: 'libp2p', stages: k, lanes, delay_ms: d, bandwidth_mbit: bw, concurrent: c, tok_s: m.tps,
              ratio: m.tps / ref, ratio_llama_server: server ? m.tps / server : null, bytes_per_token_per_link: m.bytesPerTokenPerLink,
              ms_per_token: (1000 * c) / m.tps, ms_per_token_p50: m.p50, floor_ms: (k + 1) * d + (1000 * c) / ref,
              floor_p50_ms: (k + 1) * d + (stageBase.get(c)?.p50 ?? NaN),
              wire_ms: bw > 0 && perStepLeg !== null ? (links * perStepLeg * 8) / (bw * 1000) : null, identical: sameTokens(c, m.tokens),
              breakdown: breakdown(m, (k + 1) * d),
            });
          }
        }
      } finally {
        // Drop frames of the last requests travel the delayed legs: let them land before the streams close.
        await new Promise((r) => setTimeout(r, (k + 1) * d + 300));
        await path.close();
      }
    }
  }
}

function printTable(): void {
  const kib = (b: number | null) => (b === null ? '–' : `${(b / 1024).toFixed(2)} KiB`);
  const x = (v: number | null) => (v === null || !Number.isFinite(v) ? '–' : `${v.toFixed(2)}x`);
  console.log(`\n| setup | engine | stages | lanes | one-way delay | cap | concurrent | tok/s | vs one process | vs llama-server | ms/token | floor ms | median gap ms | its floor | bytes/token/link | wire ms/step | same tokens |`);
  console.log(`|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|`);
  for (const r of rows) {
    console.log(`| ${r.setup}${r.transport === 'none' ? '' : ` (${r.transport})`} | ${r.engine} | ${r.stages} | ${r.lanes ?? '–'} | ${r.delay_ms} ms | ${r.bandwidth_mbit ? `${r.bandwidth_mbit} Mbit/s` : '–'} | ${r.concurrent} | ` +
      `${r.tok_s.toFixed(1)} | ${x(r.ratio)} | ${x(r.ratio_llama_server)} | ${r.ms_per_token.toFixed(1)} | ${r.floor_ms.toFixed(1)} | ${r.ms_per_token_p50?.toFixed(1) ?? '–'} | ${r.floor_p50_ms?.toFixed(1) ?? '–'} | ${kib(r.bytes_per_token_per_link)} | ${r.wire_ms === null ? '–' : r.wire_ms.toFixed(1)} | ${r.identical ? 'yes' : 'NO'} |`);
  }
}

/** The issue's targets (#14), read off the rows: reported, not asserted. */
function printTargets(nEmbd: number): void {
  const chain = rows.filter((r) => r.setup === 'chain');
  if (chain.length === 0) return;
  const best = (f: (r: Row) => boolean) => chain.filter(f).sort((a, b) => b.tok_s - a.tok_s)[0] as Row | undefined;
  const lines: string[] = [];
  for (const d of delays.filter((v) => v > 0)) {
    for (const k of workerCounts) {
      const r = best((r) => r.stages === k && r.delay_ms === d && r.bandwidth_mbit === 0 && r.concurrent === 1);
      if (r) lines.push(`time per token vs floor, k=${k}, ${d} ms: ${r.ms_per_token.toFixed(1)} / ${r.floor_ms.toFixed(1)} ms = ${(r.ms_per_token / r.floor_ms).toFixed(2)}x; ` +
        `median gap ${r.ms_per_token_p50!.toFixed(1)} / ${r.floor_p50_ms!.toFixed(1)} ms = ${(r.ms_per_token_p50! / r.floor_p50_ms!).toFixed(2)}x (target ≤ 1.15x)`);
    }
  }
  for (const c of concurrents) {
    const ch = best((r) => r.stages === 3 && r.delay_ms === 25 && r.bandwidth_mbit === 20 && r.concurrent === c);
    const st = rows.filter((r) => r.setup === 'star' && r.stages === 3 && r.delay_ms === 25 && r.bandwidth_mbit === 20 && r.concurrent === c).sort((a, b) => b.tok_s - a.tok_s)[0];
    if (ch && st) lines.push(`3 stages, 25 ms, 20 Mbit/s, c=${c}: chain ${ch.tok_s.toFixed(1)} vs star (${st.transport}) ${st.tok_s.toFixed(1)} tok/s = ${(ch.tok_s / st.tok_s).toFixed(2)}x (target ≥ 1.8x)`);
  }
  const hidden = 4 * nEmbd;
  const bpt = chain.filter((r) => r.bytes_per_token_per_link !== null).map((r) => r.bytes_per_token_per_link!);
  if (bpt.length) lines.push(`bytes per token per link: ${Math.min(...bpt).toFixed(0)}..${Math.max(...bpt).toFixed(0)} B, one hidden state is ${hidden} B (target ≤ 2x + framing)`);
  for (const k of workerCounts) {
    for (const bw of bandwidths) {
      const one = best((r) => r.stages === k && r.delay_ms === 25 && r.bandwidth_mbit === bw && r.concurrent === 1);
      const many = best((r) => r.stages === k && r.delay_ms === 25 && r.bandwidth_mbit === bw && r.concurrent === 8);
      if (one && many) lines.push(`8 concurrent vs 1, k=${k}, 25 ms${bw ? `, ${bw} Mbit/s` : ''}: ${(many.tok_s / one.tok_s).toFixed(2)}x with ${many.lanes} lanes (target ≥ 6x)`);
    }
  }
  for (const k of workerCounts) {
    const r = best((r) => r.stages === k && r.delay_ms === 0 && r.bandwidth_mbit === 0 && r.concurrent === 1);
    if (r) lines.push(`0 ms over libp2p, k=${k}, c=1: ${r.ratio.toFixed(2)}x the stage program in one process (median gaps: ${(r.floor_p50_ms! / r.ms_per_token_p50!).toFixed(2)}x), ` +
      `${r.ratio_llama_server?.toFixed(2) ?? '–'}x llama-server (target ≥ 0.85x)`);
  }
  for (const k of workerCounts) {
    for (const d of delays) {
      const rs = chain.filter((r) => r.stages === k && r.delay_ms === d && r.bandwidth_mbit === 0 && r.concurrent === maxC && maxC > 1);
      if (rs.length > 1) lines.push(`lanes at k=${k}, ${d} ms, c=${maxC}: ${rs.map((r) => `${r.lanes} → ${r.tok_s.toFixed(1)}`).join(', ')} tok/s; best ${rs.sort((a, b) => b.tok_s - a.tok_s)[0].lanes}`);
    }
  }
  console.log(`\nIssue #14 targets (reported, not asserted):\n${lines.map((l) => `  - ${l}`).join('\n')}`);
}

async function main(): Promise<void> {
  const started = Date.now();
  const loadAtStart = loadavg()[0];
  // llama.cpp's tools only when a setup uses them (the chain alone needs only the stage program).
  const needTools = setups.has('one-process') || setups.has('star');
  const build = needTools ? await ensureLlamaBuild() : undefined;
  const model = await benchModel();
  const sha = await sha256File(model);
  console.error(`model ${model} (${sha.slice(0, 12)}…), llama.cpp ${build?.version ?? '(stage program only)'}, ${threads} thread(s) per process, ${repeats} repeat(s), load average ${loadAtStart.toFixed(1)}`);
  const root = await mkdtemp(join(tmpdir(), 'clawmesh-bench-engine-'));
  const servers: RpcServerHandle[] = [];
  const nodes: MeshNode[] = [];
  const slices: SliceWorker[] = [];
  const stageServers: StageServer[] = [];
  let client: ChainClient | undefined;
  let ends: StageProcess | undefined;
  const maxK = Math.max(...workerCounts);
  const elapsed = () => `${((Date.now() - started) / 1000).toFixed(0)} s`;
  let nEmbd: number = preset.nEmbd;
  try {
    if (build && setups.has('one-process')) {
      await oneProcess(build, model);
      await completionRef(build, model);
      console.error(`one process done (${elapsed()})`);
    }
    if (build && setups.has('star') && transports.includes('tcp')) {
      for (let i = 0; i < maxK; i++) servers.push(await startRpcServer({ bin: build.rpcServer, port: await freePort(), threads }));
      for (const k of workerCounts) {
        await starTcp(build, model, servers, k);
        console.error(`star over tcp, ${k} workers done (${elapsed()})`);
      }
      await Promise.all(servers.map((s) => s.stop()));
      servers.length = 0;
    }
    const wantLibp2pStar = build !== undefined && setups.has('star') && transports.includes('libp2p');
    if (wantLibp2pStar || setups.has('chain')) {
      const head = await openLoopbackNode(join(root, 'head'), 'head');
      await head.start();
      nodes.push(head);
      for (let i = 0; i < maxK; i++) {
        const w = await openLoopbackNode(join(root, `w${i}`), `w${i}`);
        await w.start();
        nodes.push(w);
      }
      // Everyone can dial everyone (stage to stage directly): on a real mesh identify and the DHT do this.
      for (const a of nodes) for (const b of nodes) if (a !== b) await a.host!.peerStore.merge(b.peerId, { multiaddrs: b.multiaddrs().map((m) => multiaddr(m)) });
    }
    if (wantLibp2pStar) {
      for (const w of nodes.slice(1)) {
        // The whole file as one layer's size: a cap no split of this model can reach (the bench measures speed).
        slices.push(await SliceWorker.start({ node: w, rpcServerBin: build!.rpcServer, threads, noCache: true, layerBytes: statSync(model).size }));
      }
      for (const k of workerCounts) {
        await starLibp2p(build!, model, sha, nodes[0], nodes.slice(1), slices, k);
        console.error(`star over libp2p, ${k} workers done (${elapsed()})`);
      }
      await Promise.allSettled(slices.map((s) => s.stop()));
      slices.length = 0;
    }
    if (setups.has('chain')) {
      const bin = await ensureStageBinary();
      const dir = join(homedir(), '.cache', 'clawmesh', 'bench-models', 'stages');
      mkdirSync(dir, { recursive: true });
      const endsFile = join(dir, `${sha.slice(0, 16)}-ends.gguf`);
      if (!existsSync(endsFile)) { writeEndsGguf(model, endsFile + '.tmp'); renameSync(endsFile + '.tmp', endsFile); }
      ends = await StageProcess.start({ bin, model: endsFile, role: 'ends', batch: STAGE_BATCH, threads });
      nEmbd = ends.info.n_embd;
      const head = nodes[0];
      for (const w of nodes.slice(1)) {
        stageServers.push(await StageServer.start({
          host: w.host!, store: w.store, peerId: w.peerId, bin, modelFile: (s) => (s === sha ? model : undefined),
          cacheDir: dir, threads, seqs: maxC, batch: STAGE_BATCH, ctx: 512,
        }));
      }
      client = await ChainClient.start({ host: head.host!, key: head.key, peerId: head.peerId });
      const kit: ChainKit = { ends, prompt: await ends.tokenize(PROMPT, true, false), client, servers: stageServers, head, workers: nodes.slice(1) };
      await stageReference(bin, model, sha, dir, kit);
      console.error(`stage program in one process done (${elapsed()})`);
      for (const k of workerCounts) {
        await chainShapes(kit, sha, k);
        console.error(`chain, ${k} stages done (${elapsed()})`);
      }
    }
  } finally {
    await client?.stop();
    await ends?.stop();
    await Promise.allSettled(stageServers.map((s) => s.stop()));
    await Promise.allSettled(slices.map((s) => s.stop()));
    await Promise.allSettled(servers.map((s) => s.stop()));
    await stopAll(nodes);
    await rm(root, { recursive: true, force: true });
  }
  printTable();
  printTargets(nEmbd);
  if (values.json !== undefined) writeFileSync(values.json, JSON.stringify(rows, null, 2) + '\n');
  console.log(`\n(machine: ${availableParallelism()} cores; load average at start ${loadAtStart.toFixed(1)}, at end ${loadavg()[0].toFixed(1)}: other work on the box skews tokens/s)`);
  console.log(`(total ${elapsed()}; model "${presetName}": ${preset.nLayer} layers, n_embd ${preset.nEmbd}, f16; star: output matrix on the head, ` +
    `tokens per request ${[...new Set(delays)].map((d) => `${tokensFor(d)} at ${d} ms`).join(', ')}, floor 2·k·d + llama-server's ms per step; ` +
    `chain: ${baseTokens} tokens per request, floor (k+1)·d + the stage program's ms per step in one process, at the same concurrency)`);
}

main().catch((err) => {
  console.error(`bench-engine: ${(err as Error).stack ?? err}`);
  process.exitCode = 1;
});
