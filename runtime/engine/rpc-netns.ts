// rpc-server in a network namespace of its own, so that only the worker's tunnel can reach it.
//
// rpc-server has no authentication and listens on TCP only (this ggml-rpc has no unix sockets), so
// on plain loopback any local process could skip the contract check and the meter. Here it runs
// under `unshare -n` (a namespace with nothing but its own loopback) and a small dialer entered into
// the same namespace (nsenter) connects to it on request and hands each connected socket to the
// worker over Node's IPC channel. The worker then talks to rpc-server directly (no relay hop).
// Who can still get in: a process with the same uid (or root) can nsenter the namespace too, as it
// could ptrace the worker; other users and any process using TCP cannot.
import { spawnSync, spawn, type ChildProcess } from 'node:child_process';
import { readlinkSync } from 'node:fs';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { freePort, spawnTied, startRpcServer, stopChild, tailCollector, type RpcServerHandle, type RpcServerOptions } from './llama-procs.js';
import { quoteCommand } from './proc.js';

const DIALER = fileURLToPath(new URL('./netns-dialer.mjs', import.meta.url));
/** Inside its namespace every rpc-server can have the default port: nothing else is there. */
const INNER_PORT = 50052;

/** How this machine can isolate: as root a plain netns; unprivileged, a user namespace around it. */
export type NetnsMode = { unshare: string[]; nsenter: string[] } | { unavailable: string };

let probed: NetnsMode | undefined;

/** Probes once whether `unshare -n` (else `unshare -rn`) can bring up a private loopback here. */
export function netnsMode(): NetnsMode {
  if (probed !== undefined) return probed;
  if (process.platform !== 'linux') return (probed = { unavailable: `network namespaces are Linux-only (this is ${process.platform})` });
  const tries: Array<{ unshare: string[]; nsenter: string[] }> = [
    { unshare: ['-n'], nsenter: ['-n'] },
    { unshare: ['-r', '-n'], nsenter: ['-U', '-n', '--preserve-credentials'] },
  ];
  const errors: string[] = [];
  for (const t of tries) {
    const r = spawnSync('unshare', [...t.unshare, 'sh', '-c', 'ip link set lo up'], { encoding: 'utf8', timeout: 5000 });
    if (r.status === 0 && spawnSync('nsenter', ['--version']).status === 0) return (probed = t);
    errors.push(`unshare ${t.unshare.join(' ')}: ${(r.error?.message ?? r.stderr ?? '').trim() || `exit ${r.status}`}`);
  }
  return (probed = { unavailable: errors.join('; ') });
}

/**
 * rpc-server for one contract: in its own network namespace where the machine allows it, else on
 * loopback at a fresh port (reachable by every local process: `onFallback` says so, once per start).
 */
export async function startContractRpcServer(o: Omit<RpcServerOptions, 'port' | 'host'>, onFallback: (why: string) => void): Promise<RpcServerHandle> {
  const mode = netnsMode();
  if ('unshare' in mode) return await startRpcServerInNetns(o, mode);
  onFallback(mode.unavailable);
  return await startRpcServer({ ...o, port: await freePort() });
}

/** Starts rpc-server in a fresh network namespace; its handle's connect() is the only way in. */
export async function startRpcServerInNetns(o: Omit<RpcServerOptions, 'port' | 'host'>, mode: { unshare: string[]; nsenter: string[] }): Promise<RpcServerHandle> {
  const args = ['-H', '127.0.0.1', '-p', String(INNER_PORT)];
  if (o.threads) args.push('-t', String(o.threads));
  if (o.cache) args.push('-c');
  if (o.devices?.length) args.push('-d', o.devices.join(','));
  // unshare and sh exec in place: the pid is rpc-server's, so signals and exit codes are its own.
  const inner = ['sh', '-c', 'ip link set lo up && exec "$0" "$@"', o.bin, ...args];
  const printable = quoteCommand('unshare', [...mode.unshare, ...inner]);
  const child = spawnTied('unshare', [...mode.unshare, ...inner], { env: o.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  const tail = tailCollector(child);
  let exited: string | undefined;
  child.once('exit', (code, sig) => { exited = sig ? `signal ${sig}` : `exit code ${code}`; });
  child.once('error', (e) => { exited = `spawn error: ${e.message}`; });
  const deadline = Date.now() + (o.readyTimeoutMs ?? 15_000);
  const fail = async (why: string): Promise<never> => {
    await stopChild(child);
    throw new Error(`rpc server did not start in its network namespace (${why}): ${printable}` + (tail.length ? `\n  last output:\n    ${tail.join('\n    ')}` : ''));
  };
  // nsenter before unshare has run would enter the worker's own namespace.
  const own = readlinkSync('/proc/self/ns/net');
  for (;;) {
    if (exited !== undefined) return await fail(exited);
    if (Date.now() > deadline) return await fail('timed out waiting for its namespace');
    let ns: string | undefined;
    try { ns = readlinkSync(`/proc/${child.pid}/ns/net`); } catch { /* not there yet */ }
    if (ns !== undefined && ns !== own) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  const dialer = spawnTied('nsenter', ['-t', String(child.pid), ...mode.nsenter, '--', process.execPath, DIALER, String(INNER_PORT)], {
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'], env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
  });
  dialer.stderr?.on('data', (b: Buffer) => tail.push(`dialer: ${b.toString().trim()}`));
  child.once('exit', () => { dialer.kill('SIGKILL'); });
  const connect = dialVia(dialer);
  for (;;) {
    if (exited !== undefined) { dialer.kill('SIGKILL'); return await fail(exited); }
    const s = await connect().catch(() => undefined);
    if (s !== undefined) { s.destroy(); break; }
    if (Date.now() > deadline) { dialer.kill('SIGKILL'); return await fail('timed out'); }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    endpoint: `127.0.0.1:${INNER_PORT} in the network namespace of pid ${child.pid}`,
    isolation: 'netns',
    pid: child.pid!,
    process: child,
    connect,
    outputTail: () => [...tail],
    stop: async () => { await stopChild(child); dialer.kill('SIGKILL'); },
  };
}

/** Asks the dialer for a connected socket; one IPC round trip per connection. */
function dialVia(dialer: ChildProcess): () => Promise<Socket> {
  let next = 0;
  const waiting = new Map<number, { resolve: (s: Socket) => void; reject: (e: Error) => void }>();
  dialer.on('message', (m: { id: number; ok: boolean; error?: string }, handle: unknown) => {
    const w = waiting.get(m?.id);
    if (w === undefined) { (handle as Socket | undefined)?.destroy(); return; }
    waiting.delete(m.id);
    if (m.ok && handle !== undefined) {
      const s = handle as Socket;
      s.allowHalfOpen = true; // as a socket we dialled ourselves: the head's half-close travels on
      w.resolve(s);
    } else {
      w.reject(new Error(`the namespace dialer could not connect to rpc-server: ${m.error ?? 'no socket'}`));
    }
  });
  dialer.once('exit', (code, sig) => {
    for (const w of waiting.values()) w.reject(new Error(`the namespace dialer exited (${sig ?? code})`));
    waiting.clear();
  });
  return () => new Promise<Socket>((resolve, reject) => {
    if (!dialer.connected) { reject(new Error('the namespace dialer is gone')); return; }
    const id = next++;
    waiting.set(id, { resolve, reject });
    dialer.send({ id });
  });
}
