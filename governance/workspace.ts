import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, stat, unlink, writeFile, mkdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join, normalize, sep } from 'node:path'
import type { FileEdit } from './change-author.ts'
import { sandboxMode, spawnSandboxed, type SandboxMode } from './sandbox.ts'
import type { TreeEntry } from './forge.ts'

/**
 * A temporary clone where an agent's change is applied and the project's own tests run before anything
 * leaves the machine. The clone is real git, so `files()` and `modeOf()` see what the repository has.
 */

export interface TestResult {
  command: string
  passed: boolean
  exitCode: number | null
  /** Set when the run was killed for taking too long. */
  timedOut: boolean
  durationMs: number
  /** The last few kilobytes of stdout and stderr together. */
  outputTail: string
  /** False only where the owner allowed unsandboxed runs on a machine without the sandbox. */
  sandboxed: boolean
}

export interface RunTestsOptions {
  /** The owner's opt-in (governance.allowUnsandboxedTests) to run generated code without a sandbox. */
  allowUnsandboxed?: boolean
  /** Overrides the machine's probe (tests of the refusal). */
  mode?: SandboxMode
  /** Kills the run (its whole process group) when aborted: the owner paused the agent, or it stops. */
  signal?: AbortSignal
}

/** Environment variables an LLM-written test must never see: the forge tokens above all. */
const SECRET_ENV = /^(GITHUB_TOKEN|GH_TOKEN|CLAWMESH_GITHUB_TOKEN|.*_(TOKEN|SECRET|PASSWORD|API_KEY))$/i

export class Workspace {
  private constructor (readonly dir: string, readonly baseSha: string) {}

  static async clone (url: string, baseSha: string, root = tmpdir()): Promise<Workspace> {
    const dir = await mkdtemp(join(root, 'clawmesh-change-'))
    try {
      await run('git', ['clone', '--quiet', '--no-checkout', url, dir], root)
      await run('git', ['checkout', '--quiet', '--detach', baseSha], dir).catch(async (err: Error) => {
        throw new Error(`the clone of ${url} does not contain the base commit ${baseSha} (is the clone URL the forge's repository?): ${err.message}`)
      })
    } catch (err) {
      await rm(dir, { recursive: true, force: true })
      throw err
    }
    return new Workspace(dir, baseSha)
  }

  async files (): Promise<string[]> {
    const out = await run('git', ['ls-files', '-z'], this.dir)
    return out.split('\0').filter((p) => p !== '')
  }

  /** The file's text, or undefined when it is missing, binary or larger than maxBytes. */
  async read (path: string, maxBytes = 64 * 1024): Promise<string | undefined> {
    try {
      const buf = await readFile(this.resolve(path))
      if (buf.length > maxBytes || buf.includes(0)) return undefined
      return buf.toString('utf8')
    } catch {
      return undefined
    }
  }

  async apply (edits: FileEdit[]): Promise<void> {
    for (const e of edits) {
      const abs = this.resolve(e.path)
      if (e.content === null) {
        await unlink(abs).catch((err: NodeJS.ErrnoException) => { if (err.code !== 'ENOENT') throw err })
      } else {
        await mkdir(dirname(abs), { recursive: true })
        await writeFile(abs, e.content)
      }
    }
  }

  /**
   * Runs the project's test command in the clone: LLM-written code, so inside the sandbox (no
   * network, no agent home or owner files, only the clone writable) and without the agent's secrets
   * in its environment. Without a sandbox it refuses unless the owner opted in.
   */
  async runTests (command: string, timeoutMs = 10 * 60_000, o: RunTestsOptions = {}): Promise<TestResult> {
    const env: NodeJS.ProcessEnv = {}
    for (const [k, v] of Object.entries(process.env)) if (!SECRET_ENV.test(k)) env[k] = v
    const mode = o.mode ?? sandboxMode()
    if (!('unshare' in mode) && o.allowUnsandboxed !== true) {
      throw new Error(`refusing to run \`${command}\` on an LLM-written change: this machine has no sandbox for it (${mode.unavailable}); ` +
        'set governance.allowUnsandboxedTests to true in config.json to run it anyway, with your file access and network')
    }
    const sandboxed = 'unshare' in mode
    const started = Date.now()
    const child = sandboxed
      ? spawnSandboxed(mode, this.dir, command, env)
      : spawn(command, { cwd: this.dir, shell: true, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
    let output = ''
    const keep = (d: Buffer): void => { output = (output + d.toString()).slice(-8000) }
    child.stdout!.on('data', keep)
    child.stderr!.on('data', keep)
    let timedOut = false
    // The whole process group: test runners spawn workers that would outlive a killed shell.
    const killAll = (): void => { try { process.kill(-child.pid!, 'SIGKILL') } catch {} }
    const timer = setTimeout(() => { timedOut = true; killAll() }, timeoutMs)
    o.signal?.addEventListener('abort', killAll, { once: true })
    if (o.signal?.aborted === true) killAll()
    const exitCode = await new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
    clearTimeout(timer)
    o.signal?.removeEventListener('abort', killAll)
    return { command, passed: exitCode === 0 && !timedOut, exitCode, timedOut, durationMs: Date.now() - started, outputTail: output.slice(-4000), sandboxed }
  }

  /**
   * The tree entries for the edited paths, with contents read back from the clone (what the tests ran
   * against) and the file mode git would record. Paths whose content did not change are left out.
   */
  async entries (edits: FileEdit[]): Promise<Array<{ entry: Omit<TreeEntry, 'sha'>, content: Uint8Array | null }>> {
    const out: Array<{ entry: Omit<TreeEntry, 'sha'>, content: Uint8Array | null }> = []
    const seen = new Set<string>()
    const tracked = new Set(await this.files())
    for (const e of edits) {
      const path = normalize(e.path).split(sep).join('/')
      if (seen.has(path)) continue
      seen.add(path)
      const abs = this.resolve(path)
      const info = await stat(abs).catch(() => undefined)
      if (info === undefined) {
        if (tracked.has(path)) out.push({ entry: { path, mode: '100644' }, content: null })
        continue
      }
      const content = await readFile(abs)
      const original = tracked.has(path) ? await run('git', ['show', `${this.baseSha}:${path}`], this.dir, true).catch(() => undefined) : undefined
      if (original !== undefined && Buffer.compare(Buffer.from(original, 'binary'), content) === 0) continue
      out.push({ entry: { path, mode: (info.mode & 0o111) !== 0 ? '100755' : '100644' }, content })
    }
    return out
  }

  async dispose (): Promise<void> {
    await rm(this.dir, { recursive: true, force: true })
  }

  /** Refuses paths that leave the clone or touch git's own directory. */
  private resolve (path: string): string {
    const norm = normalize(path)
    if (norm.startsWith('..') || norm.startsWith(sep) || /^[A-Za-z]:/.test(norm) || norm.split(sep).some((s) => s === '.git' || s === '..')) {
      throw new Error(`refusing to touch ${JSON.stringify(path)}: edits must stay inside the repository and out of .git`)
    }
    return join(this.dir, norm)
  }
}

function run (cmd: string, args: string[], cwd: string, binary = false): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
    const out: Buffer[] = []
    let err = ''
    child.stdout.on('data', (d: Buffer) => out.push(d))
    child.stderr.on('data', (d: Buffer) => { err += d.toString() })
    child.on('error', reject)
    child.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out).toString(binary ? 'binary' : 'utf8'))
      else reject(new Error(`${cmd} ${args.join(' ')} exited ${code}: ${err.trim().slice(0, 500)}`))
    })
  })
}
