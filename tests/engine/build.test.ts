import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { cmakeConfigureArgs, resolveTargets } from '../../runtime/engine/build.js';
import { detectBackend } from '../../runtime/engine/backend.js';
import { withFileLock } from '../../runtime/engine/file-lock.js';
import { ensureLlamaSource, findBundledLlamaCpp, vocabModelPaths } from '../../runtime/engine/source.js';
import { CommandError, runCommand } from '../../runtime/engine/proc.js';

const dir = mkdtempSync(join(tmpdir(), 'clawmesh-build-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('llama.cpp source and targets', () => {
  it('finds the bundled source, clones it once, and lists vocab GGUFs', async () => {
    const bundle = findBundledLlamaCpp();
    expect(bundle.tag).toMatch(/\S/);
    const src = await ensureLlamaSource();
    expect(src.commit).toMatch(/^[0-9a-f]{40}$/);
    expect((await ensureLlamaSource()).srcDir).toBe(src.srcDir); // cached
    const vocabs = await vocabModelPaths();
    expect(Object.keys(vocabs)).toContain('llama-spm');
  });

  it('resolves this release\'s target names for the three tools', async () => {
    const { srcDir } = await ensureLlamaSource();
    expect(resolveTargets(srcDir)).toEqual({ rpcServer: 'ggml-rpc-server', llamaServer: 'llama-server', completion: 'llama-completion' });
  });

  it('configures with RPC on, curl off, Release, and backend flags', () => {
    const args = cmakeConfigureArgs('/s', '/b', detectBackend({ CLAWMESH_LLAMA_BACKEND: 'cuda' }));
    expect(args).toEqual(expect.arrayContaining(['-DGGML_RPC=ON', '-DLLAMA_CURL=OFF', '-DCMAKE_BUILD_TYPE=Release', '-DGGML_CUDA=ON']));
    expect(detectBackend({ CLAWMESH_LLAMA_BACKEND: 'vulkan' }).cmakeFlags).toEqual(['-DGGML_VULKAN=ON']);
    expect(() => detectBackend({ CLAWMESH_LLAMA_BACKEND: 'rocm' })).toThrow(/not one of/);
  });
});

describe('withFileLock', () => {
  it('serialises holders', async () => {
    const lock = join(dir, 'a.lock');
    const events: string[] = [];
    const hold = (name: string) => withFileLock(lock, async () => {
      events.push(`${name}+`);
      await new Promise((r) => setTimeout(r, 50));
      events.push(`${name}-`);
    }, { pollMs: 10 });
    await Promise.all([hold('x'), hold('y')]);
    expect(events.join(' ')).toMatch(/^(x\+ x- y\+ y-|y\+ y- x\+ x-)$/);
    expect(existsSync(lock)).toBe(false);
  });

  it('takes over a lock left by a dead process', async () => {
    const lock = join(dir, 'b.lock');
    const dead = spawnSync(process.execPath, ['-e', 'process.exit(0)']).pid!; // a pid that no longer runs
    writeFileSync(lock, JSON.stringify({ pid: dead, host: hostname(), token: 'old', since: 'then' }));
    await expect(withFileLock(lock, async () => 42, { pollMs: 10 })).resolves.toBe(42);
  });

  it('waits for a live owner and reports it', async () => {
    const lock = join(dir, 'c.lock');
    writeFileSync(lock, JSON.stringify({ pid: process.pid, host: hostname(), token: 'live', since: 'now' }));
    let waitedFor: number | undefined;
    setTimeout(() => rmSync(lock), 100);
    await withFileLock(lock, async () => undefined, { pollMs: 10, onWait: (o) => { waitedFor = o.pid; } });
    expect(waitedFor).toBe(process.pid);
  });
});

describe('runCommand errors', () => {
  it('carry the command, directory, exit code and last output lines', async () => {
    const err = await runCommand('sh', ['-c', 'echo one; echo two >&2; exit 3'], { cwd: dir }).catch((e) => e);
    expect(err).toBeInstanceOf(CommandError);
    expect(err.message).toMatch(/exit code 3/);
    expect(err.message).toContain(dir);
    expect(err.message).toMatch(/one[\s\S]*two/);
  });
});
