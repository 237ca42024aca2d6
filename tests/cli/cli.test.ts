import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { CliProcess, cliEnv, runCli, runJson } from '../helpers/cli.ts'
import { tempDir, waitFor } from '../helpers/mesh.ts'
import { readLiveStatus } from '../../runtime/node/status-file.ts'

const LOOPBACK = ['--listen', '/ip4/127.0.0.1/tcp/0']

interface Status { running: boolean, peerId: string, networkId: string, privateMesh: boolean, live?: { connections: Array<{ peerId: string }>, addrs: string[], presentPeers: number } }
interface Peer { peerId: string, name: string | null, connected: boolean, presence: { name: string } | null }

describe('the clawmesh CLI', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let env: NodeJS.ProcessEnv
  const procs: CliProcess[] = []

  beforeAll(async () => {
    dir = await tempDir()
    env = cliEnv(dir.path)
  })
  afterAll(async () => {
    await Promise.all(procs.map(async (p) => await p.stop('SIGKILL')))
    await dir.cleanup()
  })

  it('has --help on every command', async () => {
    const commands = ['init', 'start', 'status', 'peers', 'invite', 'join', 'board', 'demo']
    const results = await Promise.all(commands.map(async (cmd) => await runCli([cmd, '--help'], env)))
    results.forEach((r, i) => {
      expect(r.code, commands[i]).toBe(0)
      expect(r.stdout).toMatch(new RegExp(`Usage: clawmesh ${commands[i]}`))
    })
  })

  it('explains what is missing instead of failing obscurely', async () => {
    const r = await runCli(['status', '--name', 'nobody'], env)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/no clawmesh agent in .*nobody.*clawmesh init/)
    const bad = await runCli(['join', 'clawmesh-invite:garbage', '--name', 'x', '--no-start'], env)
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/invite/)
  })

  it('inits, starts, invites; a fresh home joins from the invite; both stop cleanly', async () => {
    const init = await runJson<{ peerId: string, home: string }>(['init', '--name', 'alice', '--private', ...LOOPBACK], env)
    expect(init.home).toBe(join(dir.path, 'alice'))
    const offline = await runJson<Status>(['status', '--name', 'alice'], env)
    expect(offline).toMatchObject({ running: false, peerId: init.peerId, privateMesh: true })

    const alice = new CliProcess(['start', '--name', 'alice'], env)
    procs.push(alice)
    await alice.waitForOutput(/is up/)
    await waitFor('alice status file', async () => (await readLiveStatus(join(dir.path, 'alice'))) !== undefined, 15_000, 100)

    const { invite } = await runJson<{ invite: string }>(['invite', '--name', 'alice'], env)
    expect(invite).toMatch(/^clawmesh-invite:/)

    const bob = new CliProcess(['join', invite, '--name', 'bob', ...LOOPBACK], env)
    procs.push(bob)
    await bob.waitForOutput(/is up/)
    await waitFor('bob to hear alice', async () => ((await readLiveStatus(join(dir.path, 'bob')))?.presentPeers ?? 0) > 0, 20_000, 100)
    const peers = await runJson<Peer[]>(['peers', '--name', 'bob'], env)
    expect(peers.find((p) => p.peerId === init.peerId)).toMatchObject({ connected: true, presence: { name: 'alice' } })
    const aliceStatus = await runJson<Status>(['status', '--name', 'alice'], env)
    expect(aliceStatus.live!.presentPeers).toBe(1)
    const bobStatus = await runJson<Status>(['status', '--name', 'bob'], env)
    expect(bobStatus).toMatchObject({ running: true, privateMesh: true })

    expect(await bob.stop('SIGTERM')).toBe(0)
    expect(await alice.stop('SIGINT')).toBe(0)
    expect(alice.stderr).toMatch(/node stopped/)
    expect(existsSync(join(dir.path, 'alice', 'status.json'))).toBe(false)
    expect((await runJson<Status>(['status', '--name', 'alice'], env)).running).toBe(false)
  }, 180_000)

  it('refuses tampered, reused single-use and expired invites with a clear message', async () => {
    const init = await runJson<{ peerId: string }>(['init', '--name', 'carol', ...LOOPBACK], env)
    expect(init.peerId).toMatch(/^12D3KooW/)
    const carol = new CliProcess(['start', '--name', 'carol'], env)
    procs.push(carol)
    await carol.waitForOutput(/is up/)
    await waitFor('carol status file', async () => (await readLiveStatus(join(dir.path, 'carol'))) !== undefined, 15_000, 100)
    const expiring = await runJson<{ invite: string, expiresAt: number }>(['invite', '--name', 'carol', '--expires', '1h'], env)
    expect(expiring.expiresAt).toBeGreaterThan(Date.now())
    const payload = JSON.parse(Buffer.from(expiring.invite.slice('clawmesh-invite:'.length), 'base64url').toString())
    const tampered = 'clawmesh-invite:' + Buffer.from(JSON.stringify({ ...payload, exp: payload.exp + 1e9 })).toString('base64url')
    const r = await runCli(['join', tampered, '--name', 'dave', '--no-start'], env)
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/signature does not verify/)
    expect(existsSync(join(dir.path, 'dave'))).toBe(false)

    // Single-use: the first agent redeems it, the second is refused and left with nothing half-made.
    const once = await runJson<{ invite: string, singleUse: boolean }>(['invite', '--name', 'carol', '--once'], env)
    expect(once.singleUse).toBe(true)
    const first = await runCli(['join', once.invite, '--name', 'erin', '--no-start', ...LOOPBACK], env)
    expect(first.code, first.stderr).toBe(0)
    expect(first.stdout).toMatch(/Joined network clawmesh[\s\S]*This agent will offer:[\s\S]*floor\s+1 credits/)
    const again = await runCli(['join', once.invite, '--name', 'frank', '--no-start', ...LOOPBACK], env)
    expect(again.code).toBe(1)
    expect(again.stderr).toMatch(/already used by another agent/)
    expect(existsSync(join(dir.path, 'frank'))).toBe(false)
    // The agent that redeemed it may join again with it (a restart is not a second use).
    const rejoin = await runCli(['join', once.invite, '--name', 'erin', '--no-start', ...LOOPBACK], env)
    expect(rejoin.code, rejoin.stderr).toBe(0)

    const shortLived = await runJson<{ invite: string }>(['invite', '--name', 'carol', '--expires', '1s'], env)
    await new Promise((resolve) => setTimeout(resolve, 1100))
    const late = await runCli(['join', shortLived.invite, '--name', 'gina', '--no-start'], env)
    expect(late.code).toBe(1)
    expect(late.stderr).toMatch(/expired/)
    expect(await carol.stop()).toBe(0)
  }, 180_000)
})
