import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { access } from 'node:fs/promises'
import { createInvite } from '../../protocols/index.ts'
import { DATABASE_FILE, loadConfig } from '../config.ts'
import { loadOrCreateIdentity } from '../node/identity.ts'
import { isAlive, readLiveStatus, type NodeStatus } from '../node/status-file.ts'
import { recordInvite } from '../node/invites.ts'
import { Store, type PeerRow } from '../store/store.ts'
import { moneySummary, type MoneySummary } from '../ledger/summary.ts'
import { initHome, startCommand, type InitOptions } from './home.ts'
import { ago, bytes, printJson, table } from './format.ts'
import { peerName } from '../../protocols/peer-text.ts'

export interface Out {
  json: boolean
}

export async function cmdInit (home: string, opts: InitOptions & Out): Promise<void> {
  const result = await initHome(home, opts)
  if (opts.json) return printJson({ home: result.home, peerId: result.peerId, createdIdentity: result.createdIdentity, database: result.database, createdDatabase: result.createdDatabase, config: result.config, start: startCommand(home, opts.name) })
  console.log(`${result.createdIdentity ? 'Created' : 'Kept'} agent ${result.config.name} in ${result.home}`)
  console.log(`  peer id  ${result.peerId}`)
  console.log(`  network  ${result.config.networkId ?? 'clawmesh'}${result.config.meshKey !== undefined ? ' (private mesh)' : ''}`)
  console.log(`  config   ${join(result.home, 'config.json')}`)
  console.log(`  database ${result.database}${result.createdDatabase ? '' : ' (kept)'}`)
  console.log(`Next: ${startCommand(home, opts.name)}`)
}

async function homeExists (home: string): Promise<boolean> {
  try { await access(join(home, 'identity.key')); return true } catch { return false }
}

async function requireHome (home: string): Promise<void> {
  if (!await homeExists(home)) throw new Error(`no clawmesh agent in ${home}; create one with "clawmesh init" or "clawmesh join <invite>"`)
}

export interface StatusReport {
  running: boolean
  home: string
  name: string
  peerId: string
  networkId: string
  privateMesh: boolean
  live?: NodeStatus
  knownPeers: number
  messagesStored: number
  /** The agent's credits: balance, earnings as a worker, what its paid API sold (from its ledger; also when not running). */
  money: MoneySummary
  /** Shortcuts into money: the figures an owner asks for first. */
  balance: number
  earned: number
  /** Tokens served per model sha256, all time (money.tokensServed). */
  tokensServed: Record<string, number>
}

export async function cmdStatus (home: string, opts: Out): Promise<void> {
  await requireHome(home)
  const config = await loadConfig(home)
  const { key } = await loadOrCreateIdentity(home)
  const live = await readLiveStatus(home)
  const store = await Store.open(join(home, DATABASE_FILE))
  let report: StatusReport
  try {
    const peerId = (await import('@libp2p/peer-id')).peerIdFromPrivateKey(key).toString()
    const money = await moneySummary(store.db, peerId)
    report = {
      running: live !== undefined,
      home,
      name: config.name,
      peerId,
      networkId: config.networkId,
      privateMesh: config.meshKey !== undefined,
      ...(live !== undefined ? { live } : {}),
      knownPeers: (await store.listPeers()).length,
      messagesStored: await store.countMessages(),
      money,
      balance: money.balance,
      earned: money.earned,
      tokensServed: money.tokensServed
    }
  } finally {
    await store.close()
  }
  if (opts.json) return printJson(report)
  console.log(`${report.name}  ${report.running ? 'RUNNING' : 'not running'}`)
  console.log(`  peer id     ${report.peerId}`)
  console.log(`  network     ${report.networkId}${report.privateMesh ? ' (private mesh)' : ''}`)
  console.log(`  home        ${report.home}`)
  if (live !== undefined) {
    console.log(`  state       ${live.state}, up ${ago(live.startedAt).replace(' ago', '')}, pid ${live.pid}`)
    console.log(`  connected   ${live.connections.length} peers, ${live.presentPeers} present on gossip`)
    for (const addr of live.addrs) console.log(`  listening   ${addr}`)
    const rejected = Object.entries(live.gossip.rejected).filter(([, n]) => n > 0)
    console.log(`  gossip      ${Object.values(live.gossip.accepted).reduce((a, b) => a + b, 0)} accepted, ${rejected.reduce((a, [, n]) => a + n, 0)} rejected${rejected.length > 0 ? ' (' + rejected.map(([r, n]) => `${r} ${n}`).join(', ') + ')' : ''}`)
  }
  console.log(`  known peers ${report.knownPeers}, messages stored ${report.messagesStored}`)
  const m = report.money
  console.log(`  credits     ${m.balance} held; ${m.earned} earned as a worker (${m.receipts.settled} settled receipts)${m.pendingEarnings > 0 ? `, ${m.pendingEarnings} pending in ${m.receipts.pending} receipts` : ''}`)
  for (const [model, n] of Object.entries(m.tokensServed)) console.log(`  served      ${n} tokens of model ${model.slice(0, 12)}${live?.serving?.perSecond[model] !== undefined ? `, ${live.serving.perSecond[model].toFixed(1)} tokens/s now` : ''}`)
  if (m.gateway !== null) console.log(`  paid API    ${m.gateway.keys} keys, ${m.gateway.requests} requests, ${m.gateway.promptTokens + m.gateway.completionTokens} tokens, ${m.gateway.charged} credits charged, ${m.gateway.userBalances} left on keys`)
}

export interface PeerReport {
  peerId: string
  name: string | null
  connected: boolean
  addr: string | null
  lastSeen: number
  presence: PeerRow['presence']
}

export async function cmdPeers (home: string, opts: Out): Promise<void> {
  await requireHome(home)
  const live = await readLiveStatus(home)
  const store = await Store.open(join(home, DATABASE_FILE))
  let rows: PeerRow[]
  try { rows = await store.listPeers() } finally { await store.close() }
  const connected = new Map((live?.connections ?? []).map((c) => [c.peerId, c.addr]))
  const peers: PeerReport[] = rows.map((r) => ({
    peerId: r.peerId,
    name: r.name,
    connected: connected.has(r.peerId),
    addr: connected.get(r.peerId) ?? null,
    lastSeen: r.lastSeen,
    presence: r.presence
  }))
  if (opts.json) return printJson(peers)
  if (peers.length === 0) {
    console.log(live === undefined ? 'No peers known yet, and the node is not running (clawmesh start).' : 'No peers yet: waiting for discovery.')
    return
  }
  console.log(table(
    ['NAME', 'PEER', 'LINK', 'SEEN', 'CPU/GPU', 'FREE RAM', 'MODELS', 'FLOOR'],
    peers.map((p) => [
      // Names are peer-chosen and go to a terminal: no escape sequences, no direction overrides.
      peerName(p.name ?? '?'),
      `…${p.peerId.slice(-10)}`,
      p.connected ? 'direct' : 'gossip',
      ago(p.lastSeen),
      p.presence === null ? '-' : `${p.presence.hardware.cpu.cores} cores${p.presence.hardware.backend === false ? '' : ' + ' + p.presence.hardware.backend}`,
      p.presence === null ? '-' : bytes(p.presence.hardware.memory.free),
      p.presence === null ? '-' : p.presence.models.map((m) => `${peerName(m.name)}(${m.layers}L)`).join(' ') || '-',
      p.presence === null ? '-' : String(p.presence.priceFloor)
    ])
  ))
}

const DURATION = /^(\d+)\s*(s|m|h|d)$/
export function parseDuration (text: string): number {
  const m = DURATION.exec(text.trim())
  if (m === null) throw new Error(`"${text}" is not a duration like 30m, 12h or 7d`)
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[2] as 's' | 'm' | 'h' | 'd']
}

/** Non-loopback addresses first: a joiner on another machine can only use those. */
function rankAddrs (addrs: string[]): string[] {
  const loop = (a: string): number => /\/ip4\/127\.|\/ip6\/::1\//.test(a) ? 1 : 0
  return [...addrs].sort((a, b) => loop(a) - loop(b)).slice(0, 16)
}

export async function cmdInvite (home: string, opts: Out & { expires?: string, once?: boolean }): Promise<void> {
  await requireHome(home)
  const config = await loadConfig(home)
  const live = await readLiveStatus(home)
  const addrs = live?.addrs ?? []
  if (addrs.length === 0) throw new Error('the node is not running: start it first (clawmesh start) so that the invite carries its live addresses')
  const { key } = await loadOrCreateIdentity(home)
  const exp = opts.expires !== undefined ? Date.now() + parseDuration(opts.expires) : undefined
  const boot = rankAddrs(addrs)
  // Invites of a private mesh are always redeemed with this node: members let in only peers a member
  // admitted, so the mesh key in the line is not enough on its own (a reused or expired invite opens nothing).
  const redeemed = opts.once === true || config.meshKey !== undefined
  const id = redeemed ? randomBytes(16).toString('base64url') : undefined
  if (id !== undefined) {
    const store = await Store.open(join(home, DATABASE_FILE))
    try { await recordInvite(store, id, exp, opts.once === true) } finally { await store.close() }
  }
  const invite = await createInvite(key, {
    net: config.networkId,
    boot,
    ...(config.meshKey !== undefined ? { psk: config.meshKey } : {}),
    ...(exp !== undefined ? { exp } : {}),
    ...(id !== undefined ? (opts.once === true ? { once: id } : { ticket: id }) : {})
  })
  if (opts.json) return printJson({ invite, networkId: config.networkId, bootstrap: boot, privateMesh: config.meshKey !== undefined, expiresAt: exp ?? null, singleUse: opts.once === true })
  console.log(invite)
  if (config.meshKey !== undefined) console.error('This invite carries the private-mesh key: share it only with people you let in. The joiner should pass it on stdin or in a file (clawmesh join --invite-file), never as an argument.')
}

export interface StopReport {
  home: string
  /** Whether a node was running when asked. */
  wasRunning: boolean
  pid: number | null
  /** How long the node took to go after SIGTERM. */
  waitedMs: number
}

/**
 * Stops the node running from a home: SIGTERM to the pid in its status file (the node's own process,
 * which `npx` or a shell in between may not pass signals to), then waits until the process is gone,
 * so that a script may start it again right after.
 */
export async function cmdStop (home: string, opts: Out & { timeoutS: number }): Promise<void> {
  await requireHome(home)
  const live = await readLiveStatus(home)
  if (live === undefined) {
    if (opts.json) return printJson({ home, wasRunning: false, pid: null, waitedMs: 0 } satisfies StopReport)
    console.log(`No node is running from ${home}.`)
    return
  }
  const t0 = Date.now()
  try {
    process.kill(live.pid, 'SIGTERM')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw new Error(`could not signal the node (pid ${live.pid}) of ${home}: ${(err as Error).message}`)
  }
  if (!opts.json) console.error(`Stopping ${live.name} (pid ${live.pid})…`)
  const deadline = t0 + opts.timeoutS * 1000
  while (isAlive(live.pid)) {
    if (Date.now() > deadline) {
      throw new Error(`the node of ${home} (pid ${live.pid}) is still running ${opts.timeoutS} s after SIGTERM (a shutdown step hangs?); see its log, or end it with: kill -9 ${live.pid}`)
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  const report: StopReport = { home, wasRunning: true, pid: live.pid, waitedMs: Date.now() - t0 }
  if (opts.json) return printJson(report)
  console.log(`Stopped ${live.name} (pid ${live.pid}) in ${(report.waitedMs / 1000).toFixed(1)} s.`)
}
