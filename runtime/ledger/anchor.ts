import { readFile, rename, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { lpStream } from '@libp2p/utils'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { z } from 'zod'
import {
  LedgerCheckpointKind, LedgerWitnessKind, SignedCheckpointSchema, ledgerAnchorProtocolFor, signCheckpoint,
  verifyCheckpoint, verifyWitnessed, witnessCheckpoint, type SignedCheckpoint, type WitnessedCheckpoint
} from '../../protocols/ledger-checkpoint.ts'
import { fromUtf8, utf8 } from '../../protocols/encoding.ts'
import type { Envelope } from '../../protocols/envelope.ts'
import type { MeshNode } from '../node/node.ts'
import type { Logger } from '../log.ts'
import { chainHead, entryHash, verifyChain, type ChainAnchor } from './ledger.ts'

export interface LedgerAnchorOptions {
  /** How often to sign and announce a checkpoint, if the chain grew since the last one. Default 60 s. */
  intervalMs?: number
  /** Copy of the newest countersigned checkpoint outside the database; false: none. Default <home>/ledger-anchor.json. */
  file?: string | false
  /** A peer's answer on the anchor protocol must come within this. Default 5 s. */
  timeoutMs?: number
}

export interface AnchorStatus {
  /** undefined until the first check; false once the chain failed one (it stays false until restart). */
  ok: boolean | undefined
  /** Checkpoints the last check compared the chain with, and where they came from. */
  anchors: number
  peersAsked: number
  reason?: string
}

const ReplySchema = z.object({ checkpoint: SignedCheckpointSchema.nullable() }).strict()
const MAX_FRAME = 4096

/**
 * Anchors this node's ledger outside its database file. Every intervalMs, if the chain grew, the node
 * signs a checkpoint (seq, head hash) and gossips it; peers keep the newest one of each node and answer
 * with a countersignature, which the node keeps (table and a file beside the database). When it starts,
 * and on each first connection to a peer, the node asks the peer for the newest checkpoint of its own
 * that the peer keeps and checks that its chain still holds it (verifyChain with anchors). A database
 * rewritten while the node was down (triggers dropped, rows edited, the chain re-hashed) fails that check,
 * however consistent the rewritten chain is: status.ok turns false and the error is logged.
 *
 * The node signs no checkpoint of a chain that does not extend its last one, so a rewrite while it runs
 * is not laundered into peers' copies either. What was appended after the newest checkpoint peers hold
 * (at most intervalMs of entries) is not anchored yet.
 */
export class LedgerAnchor {
  readonly protocol: string
  readonly status: AnchorStatus = { ok: undefined, anchors: 0, peersAsked: 0 }
  readonly stats = { published: 0, witnessed: 0, witnesses: 0, served: 0, refused: 0 }
  private readonly opts: { intervalMs: number, file: string | false, timeoutMs: number }
  private readonly self: string
  private readonly asked = new Set<string>()
  private last: { seq: number, hash: string } | undefined
  private timer: NodeJS.Timeout | undefined
  private checking: Promise<unknown> = Promise.resolve()
  private stopped = false
  private readonly onConnect = (evt: CustomEvent<PeerId>): void => { this.askSoon(evt.detail) }

  constructor (private readonly node: MeshNode, private readonly log: Logger, opts: LedgerAnchorOptions = {}) {
    this.protocol = ledgerAnchorProtocolFor(node.config.networkId)
    this.self = node.peerId.toString()
    this.opts = { intervalMs: opts.intervalMs ?? 60_000, file: opts.file ?? join(node.home, 'ledger-anchor.json'), timeoutMs: opts.timeoutMs ?? 5_000 }
  }

  private get bus (): NonNullable<MeshNode['bus']> {
    if (this.node.bus === undefined) throw new Error('ledger anchor needs a started node (no gossip bus)')
    return this.node.bus
  }

  private get db (): MeshNode['store']['db'] {
    return this.node.store.db
  }

  /** Checks the chain against what this node kept locally, then against each peer as it connects. */
  async start (): Promise<void> {
    const host = this.node.host
    if (host === undefined) throw new Error('ledger anchor needs a started node (no libp2p host)')
    this.bus.subscribe(LedgerCheckpointKind, async (env) => { await this.keep(env) })
    this.bus.subscribe(LedgerWitnessKind, async (env) => { await this.takeWitness(env) })
    await host.handle(this.protocol, async (stream, connection) => { await this.answer(stream, connection) }, { maxInboundStreams: 2, maxOutboundStreams: 2 })
    host.addEventListener('peer:connect', this.onConnect)
    await this.check([])
    for (const c of host.getConnections()) this.askSoon(c.remotePeer)
    this.schedule()
  }

  async stop (): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    const host = this.node.host
    if (host === undefined) return
    host.removeEventListener('peer:connect', this.onConnect)
    await host.unhandle(this.protocol).catch(() => {})
    await this.checking.catch(() => {})
  }

  /** Signs and announces the chain's head, if it grew and still extends the last checkpoint we signed. */
  async checkpoint (now = Date.now()): Promise<SignedCheckpoint | undefined> {
    if (this.status.ok === false) return undefined
    const head = await chainHead(this.db)
    if (head.seq === 0 || (this.last !== undefined && head.seq === this.last.seq)) return undefined
    const broken = await this.extendsLast(head.seq)
    if (broken !== undefined) {
      this.fail(broken)
      return undefined
    }
    const signed = await signCheckpoint(this.node.key, { node: this.self, seq: head.seq, hash: head.hash, ts: now })
    await this.bus.publish(LedgerCheckpointKind, signed)
    this.last = head
    this.stats.published++
    return signed
  }

  /** Asks one peer for the newest checkpoint of ours it keeps, and checks the chain against it. */
  async askPeer (peer: PeerId): Promise<SignedCheckpoint | undefined> {
    const signal = AbortSignal.timeout(this.opts.timeoutMs)
    const stream = await this.node.host!.dialProtocol(peer, this.protocol, { signal })
    let reply: z.infer<typeof ReplySchema>
    try {
      const lp = lpStream(stream, { maxDataLength: MAX_FRAME })
      const data = await lp.read({ signal })
      reply = ReplySchema.parse(JSON.parse(fromUtf8(data.subarray())))
      await stream.close({ signal })
    } catch (err) {
      stream.abort(err as Error)
      throw err
    }
    try {
      if (reply.checkpoint === null) return undefined
      // Only our own signature makes it ours: a peer cannot make up a checkpoint that fails us.
      const checked = await verifyCheckpoint(reply.checkpoint).catch(() => undefined)
      if (checked === undefined || checked.checkpoint.node !== this.self) {
        this.stats.refused++
        this.log.warn('peer answered with a checkpoint that is not ours', { peer: peer.toString() })
        return undefined
      }
      await this.check([{ seq: checked.checkpoint.seq, hash: checked.checkpoint.hash, from: peer.toString() }])
      return checked
    } finally {
      // Counted once the answer is judged: status then reflects it.
      this.status.peersAsked++
    }
  }

  /**
   * verifyChain against every checkpoint we know of: the countersigned ones kept here and in the file
   * (a rewriter may have removed them, but needs not have), plus `more` (a peer's answer).
   */
  async check (more: ChainAnchor[]): Promise<AnchorStatus> {
    const run = this.checking.then(async () => {
      const anchors = [...await this.localAnchors(), ...more]
      const report = await verifyChain(this.db, anchors)
      this.status.anchors = anchors.length
      if (!report.ok) this.fail(`entry ${report.brokenAt?.seq}: ${report.brokenAt?.reason}`)
      else if (this.status.ok === undefined) this.status.ok = true
      return { ...this.status }
    })
    this.checking = run.catch(() => {})
    return await run
  }

  private fail (reason: string): void {
    if (this.status.ok !== false) this.log.error('the ledger does not match its checkpoints: the database was altered outside clawmesh', { reason })
    this.status.ok = false
    this.status.reason = reason
  }

  /** Recomputes the entries after the last checkpoint we signed: they must extend it unchanged. */
  private async extendsLast (upTo: number): Promise<string | undefined> {
    const last = this.last
    if (last === undefined) return undefined
    const rows = await this.db.all<{ seq: number, ts: number, debit: string, credit: string, amount: number, memo: string, receipt: string | null, prev_hash: string, hash: string }>(
      'SELECT * FROM ledger WHERE seq >= ? AND seq <= ? ORDER BY seq', [last.seq, upTo])
    if (rows[0]?.seq !== last.seq || rows[0].hash !== last.hash) return `entry ${last.seq} no longer has the hash we signed at our last checkpoint`
    let prev = last.hash
    for (const r of rows.slice(1)) {
      if (r.prev_hash !== prev || entryHash(prev, r) !== r.hash) return `entry ${r.seq} does not extend the chain we signed at ${last.seq}`
      prev = r.hash
    }
    return undefined
  }

  private async localAnchors (): Promise<ChainAnchor[]> {
    const rows = await this.db.all<{ seq: number, hash: string, witness: string }>('SELECT seq, hash, witness FROM ledger_witnesses')
    const out: ChainAnchor[] = rows.map((r) => ({ seq: r.seq, hash: r.hash, from: r.witness }))
    if (this.opts.file !== false) {
      const text = await readFile(this.opts.file, 'utf8').catch(() => undefined)
      const w = text === undefined ? undefined : await verifyWitnessed(JSON.parse(text)).catch(() => undefined)
      if (w !== undefined && w.checkpoint.node === this.self) out.push({ seq: w.checkpoint.seq, hash: w.checkpoint.hash, from: `${w.witness} (file)` })
    }
    return out
  }

  /** A peer's checkpoint: kept (the newest per node) and countersigned back. */
  private async keep (env: Envelope<SignedCheckpoint>): Promise<void> {
    if (env.from === this.self) return
    const checked = await verifyCheckpoint(env.body).catch((err: Error) => { this.stats.refused++; this.log.warn('refused a ledger checkpoint', { from: env.from, error: err.message }) })
    if (checked === undefined) return
    const c = checked.checkpoint
    if (c.node !== env.from) { this.stats.refused++; return }
    const { changes } = await this.db.run(
      `INSERT INTO ledger_peer_checkpoints (node, seq, hash, document, received_at) SELECT ?, ?, ?, ?, ?
       WHERE NOT EXISTS (SELECT 1 FROM ledger_peer_checkpoints WHERE node = ? AND seq >= ?)`,
      [c.node, c.seq, c.hash, JSON.stringify(checked), Date.now(), c.node, c.seq])
    if (changes === 0) return
    await this.db.run('DELETE FROM ledger_peer_checkpoints WHERE node = ? AND seq < ?', [c.node, c.seq])
    await this.bus.publish(LedgerWitnessKind, await witnessCheckpoint(this.node.key, checked))
    this.stats.witnessed++
  }

  /** A countersignature of one of our checkpoints: kept here and copied to the file. */
  private async takeWitness (env: Envelope<WitnessedCheckpoint>): Promise<void> {
    if (env.body.checkpoint.node !== this.self || env.body.witness !== env.from) return
    const w = await verifyWitnessed(env.body).catch(() => undefined)
    if (w === undefined) { this.stats.refused++; return }
    await this.db.run('INSERT INTO ledger_witnesses (seq, hash, witness, document, received_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING',
      [w.checkpoint.seq, w.checkpoint.hash, w.witness, JSON.stringify(w), Date.now()])
    // The newest per witness covers the older ones (the chain is append-only).
    await this.db.run('DELETE FROM ledger_witnesses WHERE witness = ? AND seq < ?', [w.witness, w.checkpoint.seq])
    this.stats.witnesses++
    if (this.opts.file !== false) {
      const tmp = `${this.opts.file}.tmp`
      await writeFile(tmp, JSON.stringify(w), { mode: 0o600 })
      await rename(tmp, this.opts.file)
    }
  }

  /** Hands the asking peer the newest checkpoint of its own that we keep (null if none). */
  private async answer (stream: Stream, connection: Connection): Promise<void> {
    try {
      const row = await this.db.get<{ document: string }>('SELECT document FROM ledger_peer_checkpoints WHERE node = ? ORDER BY seq DESC LIMIT 1', [connection.remotePeer.toString()])
      const lp = lpStream(stream, { maxDataLength: MAX_FRAME })
      await lp.write(utf8(JSON.stringify({ checkpoint: row === undefined ? null : JSON.parse(row.document) })), { signal: AbortSignal.timeout(this.opts.timeoutMs) })
      await stream.close()
      this.stats.served++
    } catch (err) {
      stream.abort(err as Error)
    }
  }

  /** Each peer is asked once per run, on its first connection. */
  private askSoon (peer: PeerId): void {
    const key = peer.toString()
    if (this.stopped || this.asked.has(key)) return
    this.asked.add(key)
    // Identify runs first: the peer may not list the protocol yet, and older peers never will.
    setTimeout(() => {
      if (this.stopped) return
      this.askPeer(peer).catch((err: Error) => { this.log.debug('no ledger checkpoint from peer', { peer: key, error: err.message }) })
    }, 300).unref()
  }

  private schedule (): void {
    if (this.stopped) return
    this.timer = setTimeout(() => {
      this.checkpoint().catch((err: Error) => { this.log.warn('could not publish a ledger checkpoint', { error: err.message }) }).finally(() => { this.schedule() })
    }, this.opts.intervalMs * (0.75 + Math.random() / 2))
  }
}
