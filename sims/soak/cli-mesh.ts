// A mesh made the way a user makes one: real `clawmesh` processes driven through the CLI (init, invite,
// join, start, keys create), each in its own home under one root, on 127.0.0.1. Used by the soak run and
// by the end-to-end test of `clawmesh start`'s wiring.
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream, type WriteStream } from 'node:fs'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { NodeStatus } from '../../runtime/node/status-file.ts'

export const CLAWMESH_BIN = fileURLToPath(new URL('../../runtime/cli/bin.js', import.meta.url))

export interface CliResult { code: number | null, stdout: string, stderr: string }

export interface Member {
  name: string
  home: string
  port: number
  /** Its PeerId, as `clawmesh start` printed it. */
  peerId?: string
  proc?: ChildProcess
  /** Everything the running process printed (also written to <root>/<name>.log). */
  output: string
  exited?: Promise<number | null>
}

/**
 * The environment every process runs in: its own CLAWMESH_ROOT, and otherwise the defaults a user gets,
 * except mDNS: this sandbox forbids multicast off the machine, and loopback peers find each other
 * through the invite's bootstrap address anyway.
 */
export function meshEnv (root: string, extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('CLAWMESH_')) env[k] = v
  return { ...env, CLAWMESH_ROOT: root, CLAWMESH_MDNS: '0', CLAWMESH_PROBE_GPU: '0', ...extra }
}

/** One `clawmesh` command to completion (killed after timeoutMs), with what it printed. */
export async function runClawmesh (args: string[], env: NodeJS.ProcessEnv, timeoutMs = 60_000): Promise<CliResult> {
  const child = spawn(process.execPath, [CLAWMESH_BIN, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

export class CliMesh {
  readonly members = new Map<string, Member>()
  private readonly logs = new Map<string, WriteStream>()

  constructor (readonly root: string, readonly env: NodeJS.ProcessEnv = meshEnv(root)) {}

  async cli (args: string[], timeoutMs = 60_000): Promise<CliResult> {
    return await runClawmesh(args, this.env, timeoutMs)
  }

  async cliOk (args: string[], timeoutMs?: number): Promise<string> {
    const r = await this.cli(args, timeoutMs)
    if (r.code !== 0) throw new Error(`clawmesh ${args.join(' ')} exited ${r.code}:\n${r.stderr}${r.stdout}`)
    return r.stdout
  }

  home (name: string): string {
    return join(this.root, name)
  }

  member (name: string): Member {
    const m = this.members.get(name)
    if (m === undefined) throw new Error(`no member ${name} in this mesh`)
    return m
  }

  /** `clawmesh init` on a loopback port, then the given config fields merged into config.json. */
  async init (name: string, port: number, config: Record<string, unknown> = {}): Promise<Member> {
    await this.cliOk(['init', '--name', name, '--listen', `/ip4/127.0.0.1/tcp/${port}`, '--json'])
    await this.patchConfig(name, config)
    const m: Member = { name, home: this.home(name), port, output: '' }
    this.members.set(name, m)
    return m
  }

  /** `clawmesh join --invite-file F --no-start` (never the line as an argument), then the given config fields merged into config.json. */
  async join (invite: string, name: string, port: number, config: Record<string, unknown> = {}): Promise<Member> {
    const file = join(this.root, `${name}.invite`)
    await writeFile(file, invite + '\n', { mode: 0o600 })
    await this.cliOk(['join', '--invite-file', file, '--name', name, '--listen', `/ip4/127.0.0.1/tcp/${port}`, '--no-start', '--json'])
    await rm(file, { force: true })
    await this.patchConfig(name, config)
    const m: Member = { name, home: this.home(name), port, output: '' }
    this.members.set(name, m)
    return m
  }

  async patchConfig (name: string, patch: Record<string, unknown>): Promise<void> {
    if (Object.keys(patch).length === 0) return
    const path = join(this.home(name), 'config.json')
    const config = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>
    await writeFile(path, JSON.stringify({ ...config, ...patch }, null, 2))
  }

  /** `clawmesh start` in the background; resolves once it printed that it is up. */
  async start (name: string, timeoutMs = 60_000): Promise<Member> {
    const m = this.member(name)
    if (m.proc !== undefined && m.proc.exitCode === null && m.proc.signalCode === null) throw new Error(`${name} is already running`)
    let log = this.logs.get(name)
    if (log === undefined) {
      log = createWriteStream(join(this.root, `${name}.log`), { flags: 'a' })
      this.logs.set(name, log)
    }
    const out = log
    const proc = spawn(process.execPath, [CLAWMESH_BIN, 'start', '--name', name], { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] })
    m.proc = proc
    m.output = ''
    const onData = (d: Buffer): void => {
      const text = d.toString()
      out.write(text)
      m.output = (m.output + text).slice(-200_000)
    }
    proc.stdout.on('data', onData)
    proc.stderr.on('data', onData)
    m.exited = new Promise((resolve) => proc.on('close', resolve))
    m.peerId = (await this.waitFor(name, /is up: (\S+)/, timeoutMs))[1]
    return m
  }

  async waitFor (name: string, pattern: RegExp, timeoutMs = 60_000): Promise<RegExpMatchArray> {
    const m = this.member(name)
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const match = m.output.match(pattern)
      if (match !== null) return match
      if (m.proc === undefined || m.proc.exitCode !== null || m.proc.signalCode !== null) throw new Error(`${name} is not running (it printed:\n${m.output.slice(-3000)})`)
      if (Date.now() > deadline) throw new Error(`${name} did not print ${pattern} within ${timeoutMs} ms; last output:\n${m.output.slice(-3000)}`)
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }

  /** kill -9 (a crash) or SIGTERM (a clean stop); resolves once the process is gone. */
  async kill (name: string, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const m = this.member(name)
    if (m.proc === undefined || m.proc.exitCode !== null || m.proc.signalCode !== null) return
    m.proc.kill(signal)
    await m.exited
  }

  running (name: string): boolean {
    const p = this.members.get(name)?.proc
    return p !== undefined && p.exitCode === null && p.signalCode === null
  }

  /** What the running node last wrote to its status.json (undefined when it is not running). */
  async status (name: string): Promise<NodeStatus | undefined> {
    if (!this.running(name)) return undefined
    try {
      return JSON.parse(await readFile(join(this.home(name), 'status.json'), 'utf8')) as NodeStatus
    } catch {
      return undefined
    }
  }

  async stopAll (signal: NodeJS.Signals = 'SIGTERM', graceMs = 20_000): Promise<void> {
    await Promise.all([...this.members.keys()].map(async (name) => {
      const m = this.member(name)
      if (!this.running(name)) return
      m.proc!.kill(signal)
      const timer = setTimeout(() => m.proc?.kill('SIGKILL'), graceMs)
      await m.exited
      clearTimeout(timer)
    }))
    for (const log of this.logs.values()) log.end()
  }
}
