// One-time build of llama.cpp's rpc server, HTTP server and one-process CLI from the source
// node-llama-cpp ships, cached per (release tag, backend). node-llama-cpp's own prebuilt binary
// cannot serve as an RPC worker or offload layer ranges, hence our own build.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { detectBackend, flagsFor, type BackendChoice, type LlamaBackend } from './backend.js';
import { probe, runCommand } from './proc.js';
import { withFileLock } from './file-lock.js';
import { defaultProgress, ensureLlamaSource, llamaCacheRoot, type LlamaSource } from './source.js';

export interface LlamaBuild {
  binDir: string;
  /** ggml RPC worker (target `ggml-rpc-server` in this llama.cpp; older releases called it `rpc-server`). */
  rpcServer: string;
  llamaServer: string;
  /** One-process CLI for reference output (`llama-completion`, or `llama-cli` in older releases). */
  completion: string;
  /** `<tag> (<commit>)` of the llama.cpp source. */
  version: string;
  backend: LlamaBackend;
  buildDir: string;
  /** When this build finished (ISO time) and how long it took: callers tell a fresh build from a cached one. */
  builtAt: string;
  buildSeconds: number;
}

export interface EnsureBuildOptions {
  onProgress?: (line: string) => void;
  /** Defaults to detectBackend() (CLAWMESH_LLAMA_BACKEND overrides). */
  backend?: LlamaBackend;
  jobs?: number;
}

interface BuildMarker {
  tag: string;
  commit: string;
  backend: LlamaBackend;
  cmakeArgs: string[];
  targets: string[];
  seconds: number;
  builtAt: string;
}

const MARKER = 'build-complete.json';

/** Each role lists target names newest-first; the first one this source tree defines wins. */
const TARGET_CANDIDATES = {
  rpcServer: ['ggml-rpc-server', 'rpc-server'],
  llamaServer: ['llama-server'],
  completion: ['llama-completion', 'llama-cli'],
} as const;
type Role = keyof typeof TARGET_CANDIDATES;

/** Executable targets defined under tools/ and examples/ (parsed from `set(TARGET x)` / `add_executable(x`). */
export function listCmakeTargets(srcDir: string): Set<string> {
  const found = new Set<string>();
  for (const top of ['tools', 'examples']) {
    const base = join(srcDir, top);
    if (!existsSync(base)) continue;
    for (const sub of readdirSync(base, { withFileTypes: true })) {
      if (!sub.isDirectory()) continue;
      const file = join(base, sub.name, 'CMakeLists.txt');
      if (!existsSync(file)) continue;
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/set\(\s*TARGET\s+([\w.-]+)\s*\)|add_executable\(\s*([\w.-]+)/g)) {
        const name = m[1] ?? m[2];
        if (!name.includes('$')) found.add(name);
      }
    }
  }
  return found;
}

export function resolveTargets(srcDir: string): Record<Role, string> {
  const have = listCmakeTargets(srcDir);
  const out = {} as Record<Role, string>;
  for (const role of Object.keys(TARGET_CANDIDATES) as Role[]) {
    const pick = TARGET_CANDIDATES[role].find((t) => have.has(t));
    if (!pick) throw new Error(`llama.cpp source ${srcDir} defines none of ${TARGET_CANDIDATES[role].join(', ')} (needed as ${role})`);
    out[role] = pick;
  }
  return out;
}

export function cmakeConfigureArgs(srcDir: string, buildDir: string, choice: BackendChoice): string[] {
  return [
    '-S', srcDir,
    '-B', buildDir,
    '-DCMAKE_BUILD_TYPE=Release',
    '-DGGML_RPC=ON',
    '-DLLAMA_CURL=OFF', // deprecated (a warning) in new releases, still needed by older ones
    // Only the three tools are wanted; skipping tests/examples shortens configure and avoids extra deps.
    '-DLLAMA_BUILD_TESTS=OFF',
    '-DLLAMA_BUILD_EXAMPLES=OFF',
    // The server's web UI would otherwise be downloaded from Hugging Face at build time (fails offline).
    '-DLLAMA_BUILD_UI=OFF',
    '-DLLAMA_USE_PREBUILT_UI=OFF',
    ...choice.cmakeFlags,
  ];
}

/** Rough wall-clock estimate for progress messages, from timings on a 2-core x86 box (~14 core-minutes for CPU). */
function estimateMinutes(backend: LlamaBackend, jobs: number): string {
  const coreMinutes = backend === 'cuda' ? 120 : backend === 'vulkan' ? 30 : 14;
  const m = Math.max(1, Math.round(coreMinutes / Math.max(1, jobs)));
  return backend === 'cuda' ? `${m}-${m * 3} minutes` : `about ${m} minute${m === 1 ? '' : 's'}`;
}

function exe(name: string): string {
  return process.platform === 'win32' ? `${name}.exe` : name;
}

function binariesIn(buildDir: string, targets: Record<Role, string>): { binDir: string; paths: Record<Role, string> } | undefined {
  // Single-config generators put binaries in bin/, multi-config ones (MSVC, Xcode) in bin/Release/.
  for (const binDir of [join(buildDir, 'bin'), join(buildDir, 'bin', 'Release')]) {
    const paths = {} as Record<Role, string>;
    let ok = true;
    for (const role of Object.keys(targets) as Role[]) {
      paths[role] = join(binDir, exe(targets[role]));
      if (!existsSync(paths[role])) ok = false;
    }
    if (ok) return { binDir, paths };
  }
  return undefined;
}

function readMarker(dir: string): BuildMarker | undefined {
  try {
    return JSON.parse(readFileSync(join(dir, MARKER), 'utf8')) as BuildMarker;
  } catch {
    return undefined;
  }
}

/** Directory a given tag/backend builds into. */
export function llamaBuildDir(tag: string, backend: LlamaBackend): string {
  return join(llamaCacheRoot(), `${tag}-${backend}`);
}

function completed(dir: string, src: LlamaSource, backend: LlamaBackend, args: string[], targets: Record<Role, string>): LlamaBuild | undefined {
  const marker = readMarker(dir);
  if (!marker) return undefined;
  const same =
    marker.commit === src.commit &&
    marker.backend === backend &&
    JSON.stringify(marker.cmakeArgs) === JSON.stringify(args) &&
    JSON.stringify(marker.targets) === JSON.stringify(Object.values(targets));
  const bins = same ? binariesIn(join(dir, 'build'), targets) : undefined;
  if (!bins) return undefined;
  return {
    binDir: bins.binDir,
    rpcServer: bins.paths.rpcServer,
    llamaServer: bins.paths.llamaServer,
    completion: bins.paths.completion,
    version: `${src.tag} (${src.commit.slice(0, 10)})`,
    backend,
    buildDir: join(dir, 'build'),
    builtAt: marker.builtAt,
    buildSeconds: marker.seconds,
  };
}

const inProcess = new Map<string, Promise<LlamaBuild>>();

/**
 * Returns the cached build, building it first if needed. Safe to call from several processes at
 * once (a lock file serialises builders; waiters then reuse the result) and after an interrupted
 * build (no completion marker means build again; cmake resumes, and a failed resume retries clean).
 */
export function ensureLlamaBuild(opts: EnsureBuildOptions = {}): Promise<LlamaBuild> {
  const choice = opts.backend
    ? { backend: opts.backend, reason: 'requested by caller', cmakeFlags: flagsFor(opts.backend) }
    : detectBackend();
  const key = choice.backend;
  let p = inProcess.get(key);
  if (!p) {
    p = doEnsure(choice, opts).finally(() => inProcess.delete(key));
    inProcess.set(key, p);
  }
  return p;
}

async function doEnsure(choice: BackendChoice, opts: EnsureBuildOptions): Promise<LlamaBuild> {
  const say = opts.onProgress ?? defaultProgress;
  const src = await ensureLlamaSource({ onProgress: say });
  const dir = llamaBuildDir(src.tag, choice.backend);
  const buildDir = join(dir, 'build');
  const args = cmakeConfigureArgs(src.srcDir, buildDir, choice);
  const targets = resolveTargets(src.srcDir);

  const ready = completed(dir, src, choice.backend, args, targets);
  if (ready) return ready;

  if (!probe('cmake', ['--version'])) {
    throw new Error('cmake is required to build llama.cpp (the RPC worker and server); install cmake and a C++ compiler');
  }
  mkdirSync(dir, { recursive: true });
  return withFileLock(
    join(dir, '.build.lock'),
    async () => {
      const again = completed(dir, src, choice.backend, args, targets); // another process may have finished while we waited
      if (again) return again;
      rmSync(join(dir, MARKER), { force: true });
      const jobs = opts.jobs ?? availableParallelism();
      const logFile = join(dir, 'build.log');
      say(
        `clawmesh: one-time build of llama.cpp ${src.tag} (${choice.backend}: ${choice.reason}) into ${dir}; ` +
          `${estimateMinutes(choice.backend, jobs)} with ${jobs} parallel jobs. Later runs reuse it. Log: ${logFile}`,
      );
      const started = Date.now();
      const run = async () => {
        await runCommand('cmake', args, { cwd: dir, logFile, nice: 10 });
        await runCommand(
          'cmake',
          ['--build', buildDir, '--config', 'Release', '-j', String(jobs), '--target', ...Object.values(targets)],
          { cwd: dir, logFile, nice: 10, onLine: progressReporter(say, started) },
        );
      };
      try {
        await run();
      } catch (err) {
        if (!existsSync(join(buildDir, 'CMakeCache.txt'))) throw err;
        // A killed compiler can leave truncated objects that make resumes fail forever: retry once from scratch.
        say(`clawmesh: llama.cpp build failed (${(err as Error).message.split('\n')[0]}); retrying from a clean build directory`);
        rmSync(buildDir, { recursive: true, force: true });
        await run();
      }
      const seconds = Math.round((Date.now() - started) / 1000);
      const marker: BuildMarker = {
        tag: src.tag,
        commit: src.commit,
        backend: choice.backend,
        cmakeArgs: args,
        targets: Object.values(targets),
        seconds,
        builtAt: new Date().toISOString(),
      };
      // The marker is written last: its presence is what "complete" means to every later call.
      writeFileSync(join(dir, MARKER), JSON.stringify(marker, null, 2));
      const result = completed(dir, src, choice.backend, args, targets);
      if (!result) {
        rmSync(join(dir, MARKER), { force: true });
        throw new Error(`llama.cpp build in ${buildDir} finished but binaries ${Object.values(targets).join(', ')} are missing; see ${logFile}`);
      }
      say(`clawmesh: llama.cpp build done in ${Math.floor(seconds / 60)}m${seconds % 60}s`);
      return result;
    },
    { onWait: (o) => say(`clawmesh: waiting for another process (pid ${o.pid}, since ${o.since}) that is building llama.cpp in ${dir}`) },
  );
}

/** Turns cmake's "[ 42%] Building ..." lines into a line every 10% (or every minute), with elapsed time. */
function progressReporter(say: (line: string) => void, started: number): (line: string) => void {
  let lastPct = -1;
  let lastAt = Date.now();
  return (line) => {
    const m = /^\[\s*(\d+)%\]/.exec(line);
    if (!m) return;
    const pct = Number(m[1]);
    const now = Date.now();
    if (Math.floor(pct / 10) > Math.floor(lastPct / 10) || now - lastAt > 60_000) {
      lastPct = pct;
      lastAt = now;
      say(`clawmesh: llama.cpp build ${pct}% (${Math.round((now - started) / 1000)}s elapsed)`);
    }
  };
}
