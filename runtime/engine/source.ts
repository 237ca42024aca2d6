// Locates the llama.cpp source that node-llama-cpp ships (a git bundle) and clones it once into
// the clawmesh cache. Cloning takes seconds, so it is separate from the (slow) build: tests that
// only need the vocab-only GGUFs in models/ can run without a compiler.
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { probe, runCommand } from './proc.js';

export interface BundledLlamaCpp {
  /** Release tag node-llama-cpp recorded for this llama.cpp snapshot. */
  tag: string;
  repo: string;
  bundlePath: string;
}

export interface LlamaSource {
  tag: string;
  commit: string;
  srcDir: string;
}

/** Root of all clawmesh llama.cpp caches; CLAWMESH_LLAMA_CACHE replaces it. */
export function llamaCacheRoot(): string {
  return resolve(process.env.CLAWMESH_LLAMA_CACHE || join(homedir(), '.cache', 'clawmesh', 'llama.cpp'));
}

/** Finds node-llama-cpp's llama/ folder by walking up from this file (works from src, tsx and vitest alike). */
export function findBundledLlamaCpp(from = dirname(fileURLToPath(import.meta.url))): BundledLlamaCpp {
  for (let dir = from; ; dir = dirname(dir)) {
    const llamaDir = join(dir, 'node_modules', 'node-llama-cpp', 'llama');
    const infoPath = join(llamaDir, 'llama.cpp.info.json');
    if (existsSync(infoPath)) {
      const info = JSON.parse(readFileSync(infoPath, 'utf8')) as { tag?: string; llamaCppGithubRepo?: string };
      const bundlePath = join(llamaDir, 'gitRelease.bundle');
      if (!info.tag) throw new Error(`${infoPath} has no "tag"`);
      if (!existsSync(bundlePath)) throw new Error(`node-llama-cpp ships no llama.cpp source bundle at ${bundlePath}`);
      return { tag: info.tag, repo: info.llamaCppGithubRepo ?? 'ggml-org/llama.cpp', bundlePath };
    }
    if (dirname(dir) === dir) throw new Error(`node-llama-cpp not found in any node_modules above ${from}`);
  }
}

const SOURCE_MARKER = '.clawmesh-source.json';

/** Path the source for a tag lives at; does not clone. */
export function llamaSourceDir(tag = findBundledLlamaCpp().tag): string {
  return join(llamaCacheRoot(), `${tag}-src`);
}

function readSourceMarker(srcDir: string): LlamaSource | undefined {
  try {
    return JSON.parse(readFileSync(join(srcDir, SOURCE_MARKER), 'utf8')) as LlamaSource;
  } catch {
    return undefined;
  }
}

/**
 * Clones the bundled llama.cpp source into `<cache>/<tag>-src` if not there yet and returns it.
 * Clones into a temp dir and renames, so an interrupted clone is never mistaken for a complete one
 * and concurrent callers simply race to an identical result.
 */
export async function ensureLlamaSource(opts: { onProgress?: (line: string) => void } = {}): Promise<LlamaSource> {
  const bundle = findBundledLlamaCpp();
  const srcDir = llamaSourceDir(bundle.tag);
  const done = readSourceMarker(srcDir);
  if (done) return { ...done, srcDir };

  if (!probe('git', ['--version'])) {
    throw new Error(`git is required to unpack the llama.cpp source bundle ${bundle.bundlePath}; install git`);
  }
  mkdirSync(dirname(srcDir), { recursive: true });
  const tmp = `${srcDir}.tmp-${process.pid}-${Date.now()}`;
  (opts.onProgress ?? defaultProgress)(`clawmesh: unpacking llama.cpp ${bundle.tag} source into ${srcDir} (a few seconds)`);
  try {
    await runCommand('git', ['-c', 'advice.detachedHead=false', 'clone', '--quiet', bundle.bundlePath, tmp], { cwd: dirname(srcDir) });
    const commit = probe('git', ['-C', tmp, 'rev-parse', 'HEAD'])?.trim();
    if (!commit) throw new Error(`git rev-parse HEAD failed in fresh clone ${tmp}`);
    const src: LlamaSource = { tag: bundle.tag, commit, srcDir };
    writeFileSync(join(tmp, SOURCE_MARKER), JSON.stringify(src, null, 2));
    if (existsSync(srcDir) && !readSourceMarker(srcDir)) rmSync(srcDir, { recursive: true, force: true }); // leftover without marker
    try {
      renameSync(tmp, srcDir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if ((code === 'ENOTEMPTY' || code === 'EEXIST') && readSourceMarker(srcDir)) return readSourceMarker(srcDir)!; // another process won
      throw e;
    }
    return src;
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/** Vocab-only GGUF files (real tokenizers, no weights) in the source tree's models/ folder, by short name. */
export async function vocabModelPaths(): Promise<Record<string, string>> {
  const { srcDir } = await ensureLlamaSource();
  const modelsDir = join(srcDir, 'models');
  const out: Record<string, string> = {};
  for (const f of readdirSync(modelsDir).sort()) {
    const m = /^ggml-vocab-(.+)\.gguf$/.exec(f);
    if (m) out[m[1]] = join(modelsDir, f);
  }
  return out;
}

/** Path of one vocab file, e.g. vocabModelPath('llama-spm'); throws listing what exists. */
export async function vocabModelPath(name: string): Promise<string> {
  const all = await vocabModelPaths();
  const p = all[name];
  if (!p) throw new Error(`no vocab GGUF "${name}" in llama.cpp models/; have: ${Object.keys(all).join(', ')}`);
  return p;
}

export function defaultProgress(line: string): void {
  process.stderr.write(line + '\n');
}
