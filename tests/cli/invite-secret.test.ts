import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { BIN, CliProcess, cliEnv, runJson } from '../helpers/cli.ts'
import { tempDir, waitFor } from '../helpers/mesh.ts'
import { readLiveStatus } from '../../runtime/node/status-file.ts'

const LOOPBACK = ['--listen', '/ip4/127.0.0.1/tcp/0']

/** What every local user can read about a process: its command line. */
async function cmdline (pid: number): Promise<string> {
  return (await readFile(`/proc/${pid}/cmdline`, 'utf8')).replace(/\0/g, ' ')
}

/** Issue #15, finding 13: `clawmesh join <invite>` kept the invite, mesh key included, in its process arguments. */
describe.skipIf(process.platform !== 'linux')('clawmesh join keeps the invite out of its process arguments', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let env: NodeJS.ProcessEnv
  const procs: CliProcess[] = []
  let invite = ''
  let psk = ''

  beforeAll(async () => {
    dir = await tempDir('clawmesh-secret-')
    env = cliEnv(dir.path)
    await runJson(['init', '--name', 'host', '--private', ...LOOPBACK], env)
    const host = new CliProcess(['start', '--name', 'host'], env)
    procs.push(host)
    await host.waitForOutput(/is up/, 60_000)
    await waitFor('host status file', async () => (await readLiveStatus(join(dir.path, 'host'))) !== undefined, 15_000, 100)
    invite = (await runJson<{ invite: string }>(['invite', '--name', 'host'], env)).invite
    psk = (JSON.parse(Buffer.from(invite.slice('clawmesh-invite:'.length), 'base64url').toString()) as { psk: string }).psk
  }, 120_000)
  afterAll(async () => {
    await Promise.all(procs.map(async (p) => await p.stop('SIGKILL')))
    await dir.cleanup()
  })

  it('reads it from a file: the running node shows neither the invite nor the key', async () => {
    const file = join(dir.path, 'invite.txt')
    await writeFile(file, invite + '\n', { mode: 0o600 })
    const guest = new CliProcess(['join', '--invite-file', file, '--name', 'guest', ...LOOPBACK], env)
    procs.push(guest)
    await guest.waitForOutput(/is up/, 60_000)
    const args = await cmdline(guest.child.pid!)
    expect(args).toContain('--invite-file')
    expect(args).not.toContain(psk)
    expect(args).not.toContain('clawmesh-invite:')
    expect(guest.stderr).not.toMatch(/warning/)
  }, 90_000)

  it('reads it from stdin (--invite-file -)', async () => {
    const child = spawn(process.execPath, [BIN, 'join', '--invite-file', '-', '--name', 'piped', '--no-start', '--json', ...LOOPBACK], { env, stdio: ['pipe', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d: Buffer) => { out += d.toString() })
    child.stdin.end(invite + '\n')
    const code = await new Promise((resolve) => child.on('close', resolve))
    expect(code).toBe(0)
    expect(JSON.parse(out)).toMatchObject({ privateMesh: true })
  }, 60_000)

  it('still takes it as an argument, but warns and takes it off its own command line', async () => {
    const legacy = new CliProcess(['join', invite, '--name', 'legacy', ...LOOPBACK], env)
    procs.push(legacy)
    await legacy.waitForOutput(/is up/, 60_000)
    const args = await cmdline(legacy.child.pid!)
    expect(args).not.toContain(psk)
    expect(args).not.toContain('clawmesh-invite:')
    expect(legacy.stderr).toMatch(/warning: the invite was given as a command-line argument.*--invite-file/)
  }, 90_000)
})
