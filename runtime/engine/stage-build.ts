// Compiles the chain engine's stage program (stage/clawmesh-stage.cpp) against the cached
// llama.cpp build: one C++ file on libllama's public API, a few seconds with the system compiler.
// The binary's name carries the source's hash, so an edited source builds anew and an old one is
// never run by mistake.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureLlamaBuild, type EnsureBuildOptions } from './build.js';
import { probe, runCommand } from './proc.js';
import { ensureLlamaSource } from './source.js';
import { withFileLock } from './file-lock.js';

export const STAGE_SOURCE = join(dirname(fileURLToPath(import.meta.url)), 'stage', 'clawmesh-stage.cpp');

let inProcess: Promise<string> | undefined;

/**
 * Path of the stage binary, compiling it first if this source has not been compiled yet.
 * CLAWMESH_STAGE_BIN names a binary built elsewhere (a packager's, or a GPU build) instead.
 */
export function ensureStageBinary(opts: EnsureBuildOptions = {}): Promise<string> {
  if (process.env.CLAWMESH_STAGE_BIN) return Promise.resolve(process.env.CLAWMESH_STAGE_BIN);
  inProcess ??= compile(opts).finally(() => { inProcess = undefined; });
  return inProcess;
}

async function compile(opts: EnsureBuildOptions): Promise<string> {
  const build = await ensureLlamaBuild(opts);
  const src = await ensureLlamaSource({ onProgress: opts.onProgress });
  const source = readFileSync(STAGE_SOURCE);
  const hash = createHash('sha256').update(source).update(build.version).digest('hex').slice(0, 12);
  const out = join(build.binDir, `clawmesh-stage-${hash}`);
  if (existsSync(out)) return out;
  const cxx = ['c++', 'g++', 'clang++'].find((c) => probe(c, ['--version']));
  if (!cxx) throw new Error('a C++ compiler (c++, g++ or clang++) is needed to build the chain stage program');
  return withFileLock(`${out}.lock`, async () => {
    if (existsSync(out)) return out;
    const tmp = `${out}.tmp-${process.pid}`;
    const args = [
      '-O2', '-std=c++17',
      '-I', join(src.srcDir, 'include'),
      '-I', join(src.srcDir, 'ggml', 'include'),
      STAGE_SOURCE,
      '-L', build.binDir,
      '-lllama', '-lggml', '-lggml-base',
      `-Wl,-rpath,${build.binDir}`,
      '-o', tmp,
    ];
    (opts.onProgress ?? (() => {}))(`clawmesh: compiling the chain stage program (${cxx}, a few seconds)`);
    await runCommand(cxx, args, { cwd: build.binDir, logFile: join(build.buildDir, '..', 'stage-build.log'), nice: 10 });
    renameSync(tmp, out);
    return out;
  });
}
