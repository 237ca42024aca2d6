// Starting llama.cpp's processes from Node: RPC workers and the one-process completion CLI.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { existsSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { quoteCommand } from './proc.js';

export interface RpcServerOptions {
  bin: string;
  host?: string;
  port: number;
  threads?: number;
  /** -c: cache received tensors on disk (in $LLAMA_CACHE/rpc or ~/.cache/llama.cpp/rpc) so reloads skip the transfer. */
  cache?: boolean;
  /** -d: backend device names to serve, e.g. ['CUDA0']; default: all accelerators, else the CPU. */
  devices?: string[];
  env?: NodeJS.ProcessEnv;
  readyTimeoutMs?: number;
}

export interface RpcServerHandle {
  endpoint: string;
  /** 'netns': only connect() reaches it (rpc-netns.ts); 'loopback': any local process can. */
  isolation: 'netns' | 'loopback';
  /** A fresh connection to the server. */
  connect(): Promise<Socket>;
  pid: number;
  process: ChildProcess;
  /** Last output lines (stdout is block-buffered by the server, so mostly stderr until it exits). */
  outputTail(): string[];
  stop(): Promise<void>;
}

/** Asks the OS for a free TCP port on host (racy by nature, fine for tests and local workers). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port assigned'))));
    });
  });
}

function canConnect(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host, port });
    s.once('connect', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

export function tailCollector(child: ChildProcess, max = 40) {
  const lines: string[] = [];
  const on = (b: Buffer) => {
    for (const l of b.toString('utf8').split(/\r?\n/)) if (l) { lines.push(l); if (lines.length > max) lines.shift(); }
  };
  child.stdout?.on('data', on);
  child.stderr?.on('data', on);
  return lines;
}

export function stopChild(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => { clearTimeout(timer); resolve(); });
    child.kill('SIGTERM');
  });
}

/**
 * Starts an RPC worker and resolves once its port accepts connections. The server handles one
 * client at a time, so our readiness probe connects and closes immediately.
 */
/**
 * Where the OS can tie a child's life to ours (Linux: util-linux's setpriv sets PR_SET_PDEATHSIG, then
 * execs the program in place, so the pid is the program's), llama.cpp processes die with the node: a
 * worker killed with SIGKILL once in three left its rpc-server running as an orphan, holding its port
 * and memory. Elsewhere the plain spawn stays (a clean stop still stops them).
 */
const SETPRIV = process.platform === 'linux' ? ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p)) : undefined;

export function spawnTied(bin: string, args: string[], opts: SpawnOptions): ChildProcess {
  if (SETPRIV === undefined) return spawn(bin, args, opts);
  return spawn(SETPRIV, ['--pdeathsig', 'KILL', '--', bin, ...args], opts);
}

export async function startRpcServer(o: RpcServerOptions): Promise<RpcServerHandle> {
  const host = o.host ?? '127.0.0.1';
  const args = ['-H', host, '-p', String(o.port)];
  if (o.threads) args.push('-t', String(o.threads));
  if (o.cache) args.push('-c');
  if (o.devices?.length) args.push('-d', o.devices.join(','));
  const printable = quoteCommand(o.bin, args);
  const child = spawnTied(o.bin, args, { env: o.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  const tail = tailCollector(child);
  let exited: string | undefined;
  child.once('exit', (code, sig) => { exited = sig ? `signal ${sig}` : `exit code ${code}`; });
  child.once('error', (e) => { exited = `spawn error: ${e.message}`; });
  const deadline = Date.now() + (o.readyTimeoutMs ?? 15_000);
  while (!(await canConnect(host, o.port))) {
    if (exited || Date.now() > deadline) {
      await stopChild(child);
      throw new Error(
        `rpc server did not start listening on ${host}:${o.port} (${exited ?? 'timed out'}): ${printable}` +
          (tail.length ? `\n  last output:\n    ${tail.join('\n    ')}` : ''),
      );
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const dial = () => new Promise<Socket>((resolve, reject) => {
    const s = connect({ host, port: o.port, allowHalfOpen: true });
    s.once('connect', () => { s.off('error', reject); resolve(s); });
    s.once('error', reject);
  });
  return { endpoint: `${host}:${o.port}`, isolation: 'loopback', connect: dial, pid: child.pid!, process: child, outputTail: () => [...tail], stop: () => stopChild(child) };
}

export interface CompletionOptions {
  bin: string;
  model: string;
  prompt: string;
  nPredict: number;
  threads?: number;
  ctxSize?: number;
  /** Extra flags, e.g. ['--rpc', 'a:1,b:2', '-ngl', '9', '--tensor-split', '4,5']. */
  extraArgs?: string[];
  timeoutMs?: number;
}

export interface CompletionResult {
  /** Generated text only: prompt not echoed, llama-completion's closing "\n\n" and " [end of text]\n" removed. */
  text: string;
  /** True when generation stopped at an end-of-generation token before nPredict. */
  endOfText: boolean;
  stderr: string;
  /** From llama_perf_context_print "eval time": generation speed excluding the prompt. */
  evalTokensPerSecond?: number;
  promptTokensPerSecond?: number;
  command: string;
}

/** Greedy flags: temperature 0 keeps only the top logit, top-k 1 and a fixed seed make that explicit. */
export const GREEDY_ARGS = ['--temp', '0', '--top-k', '1', '--seed', '1', '--repeat-penalty', '1'];

/** Runs the one-process CLI (llama-completion) greedily and returns the generated text and speed. */
export function runCompletion(o: CompletionOptions): Promise<CompletionResult> {
  const args = [
    '-m', o.model,
    '-p', o.prompt,
    '-n', String(o.nPredict),
    '-c', String(o.ctxSize ?? 512),
    '-t', String(o.threads ?? 2),
    ...GREEDY_ARGS,
    '-no-cnv', // no chat template: plain continuation
    '--no-display-prompt',
    '--no-warmup',
    ...(o.extraArgs ?? []),
  ];
  const command = quoteCommand(o.bin, args);
  return new Promise((resolve, reject) => {
    const child = spawn(o.bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? 120_000);
    child.once('error', (e) => { clearTimeout(timer); reject(new Error(`cannot run ${command}: ${e.message}`)); });
    child.once('close', (code, sig) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString('utf8');
      if (code !== 0) {
        const last = stderr.trim().split('\n').slice(-15).join('\n    ');
        reject(new Error(`${sig ? `signal ${sig}` : `exit code ${code}`} from ${command}\n  last stderr:\n    ${last}`));
        return;
      }
      const speed = (label: string) => {
        const m = new RegExp(`${label}\\s*=.*?([\\d.]+) tokens per second`).exec(stderr);
        return m ? Number(m[1]) : undefined;
      };
      // completion.cpp always LOGs "\n\n" last, and " [end of text]\n" before it when it hit EOS.
      let text = Buffer.concat(out).toString('utf8');
      if (text.endsWith('\n\n')) text = text.slice(0, -2);
      const endOfText = text.endsWith(' [end of text]\n');
      if (endOfText) text = text.slice(0, -' [end of text]\n'.length);
      resolve({
        text,
        endOfText,
        stderr,
        evalTokensPerSecond: speed('(?<!prompt )eval time'),
        promptTokensPerSecond: speed('prompt eval time'),
        command,
      });
    });
  });
}

/**
 * Parses llama.cpp's verbose log (needs -v): "layer N assigned to device RPC0" plus
 * "using device RPC0 (127.0.0.1:50601)" to map each layer (n_layer = output head) to the device's
 * endpoint (or its name, e.g. CPU, when it has none).
 */
export function parseLayerPlacement(log: string): Map<number, string> {
  const endpoints = new Map<string, string>();
  for (const m of log.matchAll(/using device (\S+) \(([^)]+)\)/g)) endpoints.set(m[1], m[2]);
  const out = new Map<number, string>();
  for (const m of log.matchAll(/layer\s+(\d+) assigned to device (\S+?),/g)) out.set(Number(m[1]), endpoints.get(m[2]) ?? m[2]);
  return out;
}

export interface LlamaServerOptions {
  bin: string;
  model: string;
  host?: string;
  port: number;
  threads?: number;
  ctxSize?: number;
  /** Placement and other flags, e.g. ['--rpc', 'a,b', ...computeTensorSplit(...).args, '--fit', 'off']. */
  extraArgs?: string[];
  readyTimeoutMs?: number;
  /** Gives up waiting (and kills the server) when aborted, e.g. because an RPC worker died during load. */
  signal?: AbortSignal;
}

export interface LlamaServerHandle {
  url: string;
  pid: number;
  process: ChildProcess;
  outputTail(): string[];
  stop(): Promise<void>;
}

/** Starts llama-server and resolves once GET /health answers 200 (the model is loaded). */
export async function startLlamaServer(o: LlamaServerOptions): Promise<LlamaServerHandle> {
  const host = o.host ?? '127.0.0.1';
  const args = [
    '-m', o.model,
    '--host', host,
    '--port', String(o.port),
    '-c', String(o.ctxSize ?? 2048),
    '-t', String(o.threads ?? 2),
    '--no-warmup',
    ...(o.extraArgs ?? []),
  ];
  const printable = quoteCommand(o.bin, args);
  const child = spawnTied(o.bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const tail = tailCollector(child);
  let exited: string | undefined;
  child.once('exit', (code, sig) => { exited = sig ? `signal ${sig}` : `exit code ${code}`; });
  child.once('error', (e) => { exited = `spawn error: ${e.message}`; });
  const url = `http://${host}:${o.port}`;
  const deadline = Date.now() + (o.readyTimeoutMs ?? 60_000);
  for (;;) {
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) break;
    } catch { /* not listening yet */ }
    if (exited || Date.now() > deadline || o.signal?.aborted) {
      if (o.signal?.aborted) child.kill('SIGKILL'); // it may be blocked on a dead RPC peer
      await stopChild(child);
      const why = exited ?? (o.signal?.aborted ? `aborted: ${String((o.signal.reason as Error)?.message ?? o.signal.reason)}` : 'timed out');
      throw new Error(`llama-server did not become healthy at ${url} (${why}): ${printable}` +
        (tail.length ? `\n  last output:\n    ${tail.join('\n    ')}` : ''));
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { url, pid: child.pid!, process: child, outputTail: () => [...tail], stop: () => stopChild(child) };
}

export interface ServerCompletion {
  text: string;
  tokens: number[];
  tokensPerSecond: number;
}

/** Greedy /completion request (native llama-server API, which can return token ids). */
export async function serverGreedyCompletion(url: string, prompt: string, nPredict: number): Promise<ServerCompletion> {
  const body = { prompt, n_predict: nPredict, temperature: 0, top_k: 1, seed: 1, return_tokens: true, cache_prompt: false };
  const r = await fetch(`${url}/completion`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  if (!r.ok) throw new Error(`POST ${url}/completion → HTTP ${r.status}: ${(await r.text()).slice(0, 500)}`);
  const j = (await r.json()) as { content: string; tokens?: number[]; timings?: { predicted_per_second?: number } };
  return { text: j.content, tokens: j.tokens ?? [], tokensPerSecond: j.timings?.predicted_per_second ?? NaN };
}
