// Cross-process lock on a file path (O_EXCL create + owner pid), so two clawmesh processes
// never build into the same directory at once. A lock whose owner process is gone is taken over.
import { hostname } from 'node:os';
import { openSync, closeSync, writeSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';

interface LockOwner { pid: number; host: string; token: string; since: string }

function readOwner(path: string): LockOwner | undefined {
  try { return JSON.parse(readFileSync(path, 'utf8')) as LockOwner; } catch { return undefined; }
}

function ownerAlive(o: LockOwner): boolean {
  // A lock from another host (shared home dir) cannot be checked: treat it as alive.
  if (o.host !== hostname()) return true;
  try { process.kill(o.pid, 0); return true; } catch (e) { return (e as NodeJS.ErrnoException).code === 'EPERM'; }
}

export interface LockOptions {
  pollMs?: number;
  /** Called once when we start waiting for another live owner. */
  onWait?: (owner: LockOwner) => void;
}

export async function withFileLock<T>(path: string, fn: () => Promise<T>, opts: LockOptions = {}): Promise<T> {
  const me: LockOwner = { pid: process.pid, host: hostname(), token: randomBytes(8).toString('hex'), since: new Date().toISOString() };
  let announced = false;
  for (;;) {
    try {
      const fd = openSync(path, 'wx');
      writeSync(fd, JSON.stringify(me));
      closeSync(fd);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new Error(`cannot create lock file ${path}: ${(e as Error).message}`, { cause: e });
    }
    const owner = readOwner(path);
    if (owner && !ownerAlive(owner)) {
      // Rename first so only one waiter wins the takeover; then check we moved the stale file, not a fresh one.
      const aside = `${path}.stale-${me.token}`;
      try {
        renameSync(path, aside);
        const moved = readOwner(aside);
        if (moved && moved.token !== owner.token) renameSync(aside, path); // raced with a new owner: put it back
        else rmSync(aside, { force: true });
      } catch { /* someone else took it over; loop */ }
      continue;
    }
    if (!owner) {
      // Half-written by a process that is creating it right now; give it a moment.
      await new Promise((r) => setTimeout(r, 100));
      const again = readOwner(path);
      if (!again) rmSync(path, { force: true });
      continue;
    }
    if (!announced) { announced = true; opts.onWait?.(owner); }
    await new Promise((r) => setTimeout(r, opts.pollMs ?? 1000));
  }
  try {
    return await fn();
  } finally {
    const cur = readOwner(path);
    if (cur?.token === me.token) rmSync(path, { force: true });
  }
}
