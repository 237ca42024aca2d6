// Child-process helpers whose failures say which command, where, with what exit code, and the last output lines.
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { setPriority } from 'node:os';

export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly cwd: string,
    readonly exitCode: number | null,
    readonly signal: string | null,
    readonly tail: string[],
    readonly logFile?: string,
  ) {
    super(
      `command failed (${signal ? `signal ${signal}` : `exit code ${exitCode}`}): ${command}\n  in ${cwd}` +
        (logFile ? `\n  full log: ${logFile}` : '') +
        (tail.length ? `\n  last output:\n    ${tail.join('\n    ')}` : ''),
    );
    this.name = 'CommandError';
  }
}

export interface RunOptions {
  cwd: string;
  env?: NodeJS.ProcessEnv;
  /** Every output line (stdout and stderr interleaved), e.g. for progress parsing. */
  onLine?: (line: string) => void;
  /** Append all output here too. */
  logFile?: string;
  tailLines?: number;
  /** Lower the child's CPU priority: long builds should not starve the agent or other work. */
  nice?: number;
}

export function quoteCommand(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export function runCommand(cmd: string, args: readonly string[], opts: RunOptions): Promise<void> {
  const printable = quoteCommand(cmd, args);
  const tailMax = opts.tailLines ?? 30;
  const tail: string[] = [];
  const log = opts.logFile ? createWriteStream(opts.logFile, { flags: 'a' }) : undefined;
  log?.write(`\n$ ${printable}\n`);
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    if (opts.nice && child.pid) {
      try { setPriority(child.pid, opts.nice); } catch { /* not permitted everywhere; only a courtesy */ }
    }
    const onData = (() => {
      let partial = '';
      return (chunk: Buffer) => {
        log?.write(chunk);
        const lines = (partial + chunk.toString('utf8')).split(/\r?\n/);
        partial = lines.pop() ?? '';
        for (const line of lines) {
          tail.push(line);
          if (tail.length > tailMax) tail.shift();
          opts.onLine?.(line);
        }
      };
    })();
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (err) => {
      log?.end();
      reject(new Error(`cannot start ${printable} in ${opts.cwd}: ${err.message}`, { cause: err }));
    });
    child.on('close', (code, signal) => {
      log?.end();
      if (code === 0) resolve();
      else reject(new CommandError(printable, opts.cwd, code, signal, tail, opts.logFile));
    });
  });
}

/** Synchronous probe: stdout if the command exits 0, otherwise undefined. Never throws. */
export function probe(cmd: string, args: readonly string[], timeoutMs = 10_000): string | undefined {
  try {
    const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, stdio: ['ignore', 'pipe', 'pipe'] });
    return r.status === 0 ? r.stdout : undefined;
  } catch {
    return undefined;
  }
}
