import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { existsSync } from 'node:fs'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { CliProcess, cliEnv, runCli, runJson } from '../helpers/cli.ts'
import { tempDir, waitFor } from '../helpers/mesh.ts'
import { isAlive, readLiveStatus } from '../../runtime/node/status-file.ts'
import { SqliteDb } from '../../runtime/store/sqlite.ts'
import { DEFAULT_PRICE_FLOOR } from '../../runtime/config.ts'

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
    const commands = ['init', 'start', 'stop', 'status', 'peers', 'invite', 'join', 'board', 'demo']
    // Three at a time: nine tsx start-ups at once on a busy 2-core machine ran past runCli's timeout.
    const results: Awaited<ReturnType<typeof runCli>>[] = []
    for (let i = 0; i < commands.length; i += 3) {
      results.push(...await Promise.all(commands.slice(i, i + 3).map(async (cmd) => await runCli([cmd, '--help'], env, 60_000))))
    }
    results.forEach((r, i) => {
      expect(r.code, commands[i]).toBe(0)
      expect(r.stdout).toMatch(new RegExp(`Usage: clawmesh ${commands[i]}`))
    })
  }, 180_000)

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
    expect(first.stdout).toMatch(new RegExp(`Joined network clawmesh[\\s\\S]*This agent will offer:[\\s\\S]*floor\\s+${DEFAULT_PRICE_FLOOR} credits`))
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

  it('init creates the database with its tables, and keys create says when the key is useless', async () => {
    const init = await runJson<{ home: string, database: string, createdDatabase: boolean, start: string }>(['init', '--name', 'ivy', ...LOOPBACK], env)
    expect(init.database).toBe(join(dir.path, 'ivy', 'clawmesh.db'))
    expect(init.createdDatabase).toBe(true)
    expect(init.start).toBe('clawmesh start --name ivy')
    const db = await SqliteDb.open(init.database)
    try {
      expect((await db.get<{ version: number }>("SELECT version FROM schema_migrations WHERE namespace = 'runtime'"))?.version).toBeGreaterThanOrEqual(2)
      expect(await db.get<{ n: number }>('SELECT COUNT(*) AS n FROM api_keys')).toEqual({ n: 0 })
    } finally {
      await db.close()
    }
    expect((await runJson<{ createdDatabase: boolean }>(['init', '--name', 'ivy'], env)).createdDatabase).toBe(false)

    const useless = await runCli(['keys', 'create', '--name', 'ivy', '--credits', '10'], env)
    expect(useless.code, useless.stderr).toBe(0)
    expect(useless.stdout).toMatch(/secret\s+cm_/)
    expect(useless.stderr).toMatch(/has no "gateway" section[\s\S]*useless[\s\S]*"gateway": \{/)
    const config = join(dir.path, 'ivy', 'config.json')
    await writeFile(config, JSON.stringify({ ...JSON.parse(await readFile(config, 'utf8')), gateway: { port: 0 } }))
    const useful = await runCli(['keys', 'create', '--name', 'ivy', '--credits', '10', '--json'], env)
    expect(useful.code, useful.stderr).toBe(0)
    expect(useful.stderr).not.toMatch(/gateway/)
  })

  it('join --no-start starts no node (a single-use invite is redeemed without one), prints the start command for --home; clawmesh stop stops it; a taken port is explained', async () => {
    await runJson(['init', '--name', 'hub', ...LOOPBACK], env)
    const hub = new CliProcess(['start', '--name', 'hub'], env)
    procs.push(hub)
    await hub.waitForOutput(/is up/)
    await waitFor('hub status file', async () => (await readLiveStatus(join(dir.path, 'hub'))) !== undefined, 15_000, 100)
    const hubStatus = (): Promise<Status> => runJson<Status>(['status', '--name', 'hub'], env)
    const hubPeers = (): Promise<Peer[]> => runJson<Peer[]>(['peers', '--name', 'hub'], env)

    // A plain invite: nothing connects to the inviter at all.
    const { invite } = await runJson<{ invite: string }>(['invite', '--name', 'hub'], env)
    const w1Home = join(dir.path, 'elsewhere', 'w1')
    const plain = await runCli(['join', invite, '--home', w1Home, '--no-start', ...LOOPBACK], env)
    expect(plain.code, plain.stderr).toBe(0)
    const hint = /Start it with: (clawmesh start .*)/.exec(plain.stdout)
    expect(hint?.[1]).toBe(`clawmesh start --home ${w1Home}`)
    const w1 = await runJson<Status>(['status', '--home', w1Home], env)
    expect(w1.running).toBe(false)
    await new Promise((resolve) => setTimeout(resolve, 1500)) // three heartbeats of a node, had one run
    expect((await hubPeers()).some((p) => p.peerId === w1.peerId)).toBe(false)

    // A single-use invite is redeemed over a bare connection: the inviter never hears a heartbeat.
    const once = await runJson<{ invite: string }>(['invite', '--name', 'hub', '--once'], env)
    const w2 = await runCli(['join', once.invite, '--name', 'w2', '--no-start', ...LOOPBACK], env)
    expect(w2.code, w2.stderr).toBe(0)
    expect(w2.stdout).toMatch(/Start it with: clawmesh start --name w2$/m)
    const w2Id = (await runJson<Status>(['status', '--name', 'w2'], env)).peerId
    await new Promise((resolve) => setTimeout(resolve, 1500))
    expect((await hubStatus()).live!.presentPeers).toBe(0)
    expect((await hubPeers()).find((p) => p.peerId === w2Id)?.presence ?? null).toBeNull()
    const reused = await runCli(['join', once.invite, '--name', 'w3', '--no-start', ...LOOPBACK], env)
    expect(reused.stderr).toMatch(/already used by another agent/)

    // The printed command works, and clawmesh stop ends the node it started (and waits for it).
    const started = new CliProcess(hint![1].split(' ').slice(1), env)
    procs.push(started)
    await started.waitForOutput(/is up/)
    await waitFor('w1 status file', async () => (await readLiveStatus(w1Home)) !== undefined, 15_000, 100)
    const pid = (await readLiveStatus(w1Home))!.pid
    await waitFor('the hub to hear w1', async () => (await hubStatus()).live!.presentPeers === 1, 20_000, 200)
    const stop = await runJson<{ wasRunning: boolean, pid: number }>(['stop', '--home', w1Home], env)
    expect(stop).toMatchObject({ wasRunning: true, pid })
    expect(isAlive(pid)).toBe(false)
    expect(await started.exited).toBe(0)
    expect(started.stderr).toMatch(/received SIGTERM/)
    const again = await runCli(['stop', '--home', w1Home], env)
    expect(again.code).toBe(0)
    expect(again.stdout).toMatch(/No node is running/)

    // Two nodes on one port: one line that says what to change, not libp2p's stack trace.
    const port = /\/tcp\/(\d+)\//.exec((await readLiveStatus(join(dir.path, 'hub')))!.addrs[0])![1]
    await runJson(['init', '--name', 'twin'], env)
    const twin = await runCli(['start', '--name', 'twin', '--listen', `/ip4/127.0.0.1/tcp/${port}`], env)
    expect(twin.code).toBe(1)
    expect(twin.stderr).toMatch(new RegExp(`port ${port} is in use \\(another clawmesh node\\?\\) — set listen in config.json or --port`))
    expect(twin.stderr).not.toMatch(/faultTolerance|    at /)
    expect(await hub.stop()).toBe(0)
  }, 180_000)
})
