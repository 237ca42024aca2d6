import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { runClawmesh, type CliResult } from '../../sims/soak/cli-mesh.ts'

export const BIN = fileURLToPath(new URL('../../runtime/cli/bin.js', import.meta.url))

/** The environment a CLI test runs in: its own root, loopback only, no multicast, no NAT probing. */
export function cliEnv (root: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CLAWMESH_')) env[k] = v
  return { ...env, CLAWMESH_ROOT: root, CLAWMESH_MDNS: '0', CLAWMESH_NAT: '0', CLAWMESH_PROBE_GPU: '0', CLAWMESH_PRESENCE_MS: '500', ...extra }
}

export type RunResult = CliResult

export async function runCli (args: string[], env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<RunResult> {
  return await runClawmesh(args, env, timeoutMs)
}

export async function runJson<T> (args: string[], env: NodeJS.ProcessEnv): Promise<T> {
  const r = await runCli([...args, '--json'], env)
  if (r.code !== 0) throw new Error(`clawmesh ${args.join(' ')} exited ${r.code}: ${r.stderr}`)
  return JSON.parse(r.stdout) as T
}

/** A long-running CLI process (start, join) with its output collected as it comes. */
export class CliProcess {
  readonly child: ChildProcess
  stdout = ''
  stderr = ''
  readonly exited: Promise<number | null>

  constructor (args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
    this.child.stdout!.on('data', (d: Buffer) => { this.stdout += d.toString() })
    this.child.stderr!.on('data', (d: Buffer) => { this.stderr += d.toString() })
    this.exited = new Promise((resolve) => this.child.on('close', resolve))
  }

  async waitForOutput (pattern: RegExp, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!pattern.test(this.stdout + this.stderr)) {
      if (this.child.exitCode !== null) throw new Error(`process exited ${this.child.exitCode} before printing ${pattern}: ${this.stderr}`)
      if (Date.now() > deadline) throw new Error(`no ${pattern} within ${timeoutMs} ms; output so far:\n${this.stdout}\n${this.stderr}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }

  async stop (signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null) this.child.kill(signal)
    return await this.exited
  }
}
