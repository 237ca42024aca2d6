import { lpStream, type LengthPrefixedStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import type { Connection, PeerId, Stream } from '@libp2p/interface'
import { z } from 'zod'
import {
  RECEIPT_SYNC_LIMITS, SyncFrameSchema, SyncProtocolError, SyncSet, receiptSyncProtocolFor,
  type SyncFrame, type SyncItem, type SyncLimits
} from '../../protocols/receipt-sync.ts'
import { ReceiptInvalid, SignedReceiptSchema, receiptId, type SignedReceipt } from '../../protocols/receipts.ts'
import { fromUtf8, utf8 } from '../../protocols/encoding.ts'
import { RECEIPT_REFUSALS, ReceiptRefused, type ReceiptRefusal } from '../../protocols/receipt-terms.ts'
import type { MeshNode } from '../node/node.ts'
import type { Logger } from '../log.ts'
import { ingestReceipt } from './mirror.ts'
import { signedContractOf } from './contracts.ts'

export type SyncRejectReason =
  | 'oversized' | 'malformed' | 'out-of-order' | 'over-limit' | 'timeout' | 'busy'
  | 'bad-receipt' | 'unrequested' | 'conflict'

export const SYNC_REJECT_REASONS: readonly SyncRejectReason[] = [
  'oversized', 'malformed', 'out-of-order', 'over-limit', 'timeout', 'busy', 'bad-receipt', 'unrequested', 'conflict'
]

/** A sync peer broke the protocol or its limits; the session ends and the reason is counted. */
export class SyncRejected extends Error {
  constructor (readonly reason: SyncRejectReason, detail: string) {
    super(`${reason}: ${detail}`)
    this.name = 'SyncRejected'
  }
}

export interface ReceiptSyncOptions {
  /** Mean time between sessions with a random connected peer (±25 % jitter). Default 45 s. */
  intervalMs?: number
  /** Mean delay before syncing with a newly connected peer (identify runs first). Default 500 ms. */
  connectDelayMs?: number
  /** A whole session, reconciliation and pulls, must end within this. Default 20 s. */
  sessionTimeoutMs?: number
  /** Each frame must arrive within this. Default 5 s. */
  frameTimeoutMs?: number
  /** Sessions served at once, over all peers; more are refused ('busy'). Default 4. */
  maxInboundSessions?: number
  limits?: Partial<SyncLimits>
}

export interface SyncReport {
  peer: string
  rounds: number
  /** Receipts the peer holds that we lacked (learned by reconciliation). */
  missing: number
  booked: number
  duplicate: number
  rejected: number
  /** The session stopped at a limit with receipts still to learn or pull; another follows at once. */
  more: boolean
  bytesSent: number
  bytesReceived: number
  ms: number
}

export interface ReceiptSyncStats {
  /** Sessions we initiated that completed, and that failed (peer gone, timeout, refused). */
  initiated: number
  failed: number
  /** Sessions we answered to the end. */
  served: number
  pulled: number
  booked: number
  rejected: Record<SyncRejectReason, number>
  /** Pulled receipts the mirror refused, by its reason (each also counts as bad-receipt or conflict). */
  refused: Record<ReceiptRefusal, number>
  bytesSent: number
  bytesReceived: number
}

const READ_ERRORS = new Set(['InvalidDataLengthError', 'InvalidDataLengthLengthError', 'InvalidMessageLengthError'])

/**
 * Anti-entropy for settled receipts (protocols/receipt-sync.ts): on every new connection, and every
 * intervalMs with a random connected peer, a node reconciles its settled receipts with the peer's and
 * pulls what it lacks. A sync peer is as untrusted as gossip: each pulled receipt must be one we asked
 * for and goes through ingestReceipt, the mirror's own verification and booking; frames are bounded
 * in size, count and time, and whatever breaks a rule is refused with a reason and counted, never
 * stored.
 */
export class ReceiptSync {
  readonly protocol: string
  readonly stats: ReceiptSyncStats = {
    initiated: 0, failed: 0, served: 0, pulled: 0, booked: 0, bytesSent: 0, bytesReceived: 0,
    rejected: Object.fromEntries(SYNC_REJECT_REASONS.map((r) => [r, 0])) as Record<SyncRejectReason, number>,
    refused: Object.fromEntries(RECEIPT_REFUSALS.map((r) => [r, 0])) as Record<ReceiptRefusal, number>
  }

  /** Resolves once the protocol handler is registered. */
  ready: Promise<void> = Promise.resolve()
  private readonly limits: SyncLimits
  private readonly opts: Required<Omit<ReceiptSyncOptions, 'limits'>>
  private readonly outbound = new Map<string, Promise<SyncReport>>()
  private queue: Promise<unknown> = Promise.resolve()
  private readonly timers = new Set<NodeJS.Timeout>()
  private readonly stopping = new AbortController()
  private inbound = 0
  private readonly onConnect = (evt: CustomEvent<PeerId>): void => {
    this.later(this.opts.connectDelayMs * (0.5 + Math.random()), () => { this.syncSoon(evt.detail, 'connect') })
  }

  constructor (private readonly node: MeshNode, private readonly log: Logger, opts: ReceiptSyncOptions = {}) {
    this.protocol = receiptSyncProtocolFor(node.config.networkId)
    this.limits = { ...RECEIPT_SYNC_LIMITS, ...opts.limits }
    this.opts = {
      intervalMs: opts.intervalMs ?? 45_000,
      connectDelayMs: opts.connectDelayMs ?? 500,
      sessionTimeoutMs: opts.sessionTimeoutMs ?? 20_000,
      frameTimeoutMs: opts.frameTimeoutMs ?? 5_000,
      maxInboundSessions: opts.maxInboundSessions ?? 4
    }
  }

  private get host (): NonNullable<MeshNode['host']> {
    if (this.node.host === undefined) throw new Error('receipt sync needs a started node (no libp2p host)')
    return this.node.host
  }

  start (): void {
    const host = this.host
    this.ready = host.handle(this.protocol, async (stream, connection) => { await this.answer(stream, connection) }, { maxInboundStreams: 2, maxOutboundStreams: 2 })
    host.addEventListener('peer:connect', this.onConnect)
    this.schedulePeriodic()
  }

  async stop (): Promise<void> {
    if (this.stopping.signal.aborted) return
    this.stopping.abort(new Error('receipt sync stopped'))
    for (const t of this.timers) clearTimeout(t)
    this.timers.clear()
    const host = this.node.host
    if (host === undefined) return
    host.removeEventListener('peer:connect', this.onConnect)
    await host.unhandle(this.protocol).catch(() => {})
    await Promise.allSettled([...this.outbound.values()])
  }

  /**
   * One session as initiator: learn what the peer holds that we lack, pull it, book what verifies.
   * A session already running with the peer is joined rather than doubled.
   */
  async syncWith (peer: PeerId | string): Promise<SyncReport> {
    const peerId = typeof peer === 'string' ? peerIdFromString(peer) : peer
    const key = peerId.toString()
    const running = this.outbound.get(key)
    if (running !== undefined) return await running
    // One session at a time: a node that reconnects to several peers at once would otherwise pull the
    // same missing receipts from each of them; in turn, the second finds the first already booked them.
    const session = this.queue.then(async () => await this.initiate(peerId)).finally(() => this.outbound.delete(key))
    this.queue = session.catch(() => {})
    this.outbound.set(key, session)
    return await session
  }

  private async initiate (peer: PeerId): Promise<SyncReport> {
    const started = Date.now()
    const signal = this.sessionSignal()
    const io = { sent: 0, received: 0 }
    const report: SyncReport = { peer: peer.toString(), rounds: 0, missing: 0, booked: 0, duplicate: 0, rejected: 0, more: false, bytesSent: 0, bytesReceived: 0, ms: 0 }
    let stream: Stream | undefined
    try {
      stream = await this.host.dialProtocol(peer, this.protocol, { signal })
      const lp = this.frames(stream)
      const set = await this.loadSet()
      const need = new Set<string>()
      let ranges = set.initial()
      while (ranges.length > 0 && need.size < this.limits.maxPullPerSession) {
        if (report.rounds === this.limits.maxRounds) { report.more = true; break }
        report.rounds++
        await this.send(lp, { t: 'rec', ranges }, signal, io)
        const reply = await this.receive(lp, signal, io)
        if (reply.t !== 'rec') throw new SyncRejected('malformed', `expected a reconciliation frame, got ${reply.t}`)
        ranges = this.reconcile(set, reply.ranges, 'initiator', need)
      }
      report.missing = need.size
      const wanted = [...need].slice(0, this.limits.maxPullPerSession)
      if (need.size >= this.limits.maxPullPerSession) report.more = true
      for (let i = 0; i < wanted.length; i += this.limits.maxPullPerRequest) {
        const batch = wanted.slice(i, i + this.limits.maxPullPerRequest)
        await this.send(lp, { t: 'get', ids: batch }, signal, io)
        const reply = await this.receive(lp, signal, io)
        if (reply.t !== 'docs') throw new SyncRejected('malformed', `expected receipts, got ${reply.t}`)
        if (reply.receipts.length > batch.length) throw new SyncRejected('over-limit', `${reply.receipts.length} receipts for ${batch.length} asked`)
        const requested = new Set(batch)
        for (const doc of reply.receipts) await this.take(doc, requested, report)
      }
      await this.send(lp, { t: 'done' }, signal, io)
      await stream.close({ signal })
      this.stats.initiated++
      Object.assign(report, { bytesSent: io.sent, bytesReceived: io.received, ms: Date.now() - started })
      if (report.booked > 0 || report.rejected > 0) this.log.info('receipts synced', { ...report })
      return report
    } catch (err) {
      this.stats.failed++
      const e = this.classify(err, signal)
      if (e instanceof SyncRejected) this.count(e.reason, report.peer, e.message)
      stream?.abort(e)
      throw e
    }
  }

  /** A pulled receipt: refused unless we asked for it; otherwise verified and booked exactly as gossip is. */
  private async take (doc: unknown, requested: Set<string>, report: SyncReport): Promise<void> {
    this.stats.pulled++
    const parsed = SignedReceiptSchema.safeParse(doc)
    const id = parsed.success ? receiptId(parsed.data.receipt) : undefined
    if (id !== undefined && !requested.has(id)) {
      this.reject(report, 'unrequested', `receipt ${parsed.data!.receipt.contract}#${parsed.data!.receipt.seq} was not asked for (or was sent twice)`)
      return
    }
    try {
      const result = await ingestReceipt(this.node.store.db, this.node.peerId.toString(), doc)
      // Only a receipt that verified answers the request: a forged copy sent first does not use it up.
      if (id !== undefined) requested.delete(id)
      if (result === 'booked') { report.booked++; this.stats.booked++ } else report.duplicate++
    } catch (err) {
      // Both signatures verified, yet another receipt holds its (contract, seq): the head and the worker
      // signed two different receipts for one slot. Neither is booked over the other.
      if (err instanceof ReceiptRefused) {
        this.stats.refused[err.reason]++
        this.reject(report, err.reason === 'conflict' ? 'conflict' : 'bad-receipt', err.message)
        return
      }
      if (err instanceof ReceiptInvalid) { this.reject(report, 'bad-receipt', err.message); return }
      if (/UNIQUE constraint/.test((err as Error).message)) { this.reject(report, 'conflict', (err as Error).message); return }
      throw err
    }
  }

  private reject (report: SyncReport, reason: SyncRejectReason, detail: string): void {
    report.rejected++
    this.stats.rejected[reason]++
    this.log.warn('refused a synced receipt', { from: report.peer, reason, detail: detail.slice(0, 200) })
  }

  /** Answers one peer's session: reconciliation rounds, then the receipts it asks for. */
  private async answer (stream: Stream, connection: Connection): Promise<void> {
    const peer = connection.remotePeer.toString()
    if (this.inbound >= this.opts.maxInboundSessions) {
      this.count('busy', peer, `${this.inbound} sessions already being served`)
      stream.abort(new Error('busy: too many receipt sync sessions'))
      return
    }
    this.inbound++
    const signal = this.sessionSignal()
    const io = { sent: 0, received: 0 }
    try {
      const lp = this.frames(stream)
      let set: SyncSet | undefined
      let rounds = 0
      let served = 0
      for (;;) {
        const frame = await this.receive(lp, signal, io)
        if (frame.t === 'done') break
        if (frame.t === 'rec') {
          if (++rounds > this.limits.maxRounds) throw new SyncRejected('over-limit', `more than ${this.limits.maxRounds} reconciliation rounds`)
          // One snapshot per session, so that every round compares against the same set.
          set ??= await this.loadSet()
          await this.send(lp, { t: 'rec', ranges: this.reconcile(set, frame.ranges, 'responder', new Set()) }, signal, io)
        } else if (frame.t === 'get') {
          served += frame.ids.length
          if (served > this.limits.maxPullPerSession) throw new SyncRejected('over-limit', `more than ${this.limits.maxPullPerSession} receipts asked in one session`)
          await this.send(lp, { t: 'docs', receipts: await this.documents(frame.ids) }, signal, io)
        } else {
          throw new SyncRejected('malformed', `a responder takes no ${frame.t} frames`)
        }
      }
      await stream.close({ signal })
      this.stats.served++
    } catch (err) {
      const e = this.classify(err, signal)
      if (e instanceof SyncRejected) this.count(e.reason, peer, e.message)
      else this.log.debug('receipt sync session ended early', { peer, error: e.message })
      stream.abort(e)
    } finally {
      this.inbound--
    }
  }

  private count (reason: SyncRejectReason, peer: string, detail: string): void {
    this.stats.rejected[reason]++
    this.log.warn('refused a receipt sync peer', { peer, reason, detail: detail.slice(0, 200) })
  }

  private reconcile (set: SyncSet, ranges: Parameters<SyncSet['reconcile']>[0], role: 'initiator' | 'responder', need: Set<string>): ReturnType<SyncSet['reconcile']> {
    try {
      return set.reconcile(ranges, role, need)
    } catch (err) {
      if (err instanceof SyncProtocolError) throw new SyncRejected(err.reason, err.message)
      throw err
    }
  }

  private frames (stream: Stream): LengthPrefixedStream<Stream> {
    return lpStream(stream, { maxDataLength: this.limits.maxFrameBytes, maxBufferSize: 2 * this.limits.maxFrameBytes })
  }

  private async send (lp: LengthPrefixedStream<Stream>, frame: SyncFrame, signal: AbortSignal, io: { sent: number }): Promise<void> {
    const bytes = utf8(JSON.stringify(frame))
    // Our own frames are bounded by the same limits; one over them is our bug, not the peer's.
    if (bytes.byteLength > this.limits.maxFrameBytes) throw new Error(`receipt sync ${frame.t} frame of ${bytes.byteLength} bytes exceeds ${this.limits.maxFrameBytes}`)
    await lp.write(bytes, { signal })
    io.sent += bytes.byteLength
    this.stats.bytesSent += bytes.byteLength
  }

  private async receive (lp: LengthPrefixedStream<Stream>, signal: AbortSignal, io: { received: number }): Promise<SyncFrame> {
    const data = await lp.read({ signal: AbortSignal.any([signal, AbortSignal.timeout(this.opts.frameTimeoutMs)]) })
    io.received += data.byteLength
    this.stats.bytesReceived += data.byteLength
    let json: unknown
    try {
      json = JSON.parse(fromUtf8(data.subarray()))
    } catch (err) {
      throw new SyncRejected('malformed', `frame is not UTF-8 JSON (${(err as Error).message})`)
    }
    const parsed = SyncFrameSchema.safeParse(json)
    if (!parsed.success) throw new SyncRejected('malformed', z.prettifyError(parsed.error))
    return parsed.data
  }

  /** Maps stream errors to reasons: a length prefix over the cap, a peer too slow; others pass through. */
  private classify (err: unknown, signal: AbortSignal): Error {
    const e = err instanceof Error ? err : new Error(String(err))
    if (e instanceof SyncRejected) return e
    if (READ_ERRORS.has(e.name)) return new SyncRejected('oversized', `frame length over ${this.limits.maxFrameBytes} bytes (${e.message})`)
    if (e.name === 'TimeoutError' || e.name === 'AbortError') {
      if (this.stopping.signal.aborted) return e
      return new SyncRejected('timeout', signal.aborted ? `session over ${this.opts.sessionTimeoutMs} ms` : `no frame within ${this.opts.frameTimeoutMs} ms`)
    }
    return e
  }

  private sessionSignal (): AbortSignal {
    return AbortSignal.any([this.stopping.signal, AbortSignal.timeout(this.opts.sessionTimeoutMs)])
  }

  /** Every settled receipt we hold, ours as head included, as (ts, id). */
  private async loadSet (): Promise<SyncSet> {
    const rows = await this.node.store.db.all<{ id: string, ts: unknown }>(
      "SELECT id, json_extract(document, '$.receipt.ts') AS ts FROM receipts WHERE status = 'settled'")
    const items: SyncItem[] = []
    for (const r of rows) if (Number.isSafeInteger(r.ts) && (r.ts as number) >= 0) items.push({ ts: r.ts as number, id: r.id })
    return new SyncSet(items, this.limits)
  }

  private async documents (ids: string[]): Promise<unknown[]> {
    const db = this.node.store.db
    const rows = await db.all<{ document: string }>(
      `SELECT document FROM receipts WHERE status = 'settled' AND id IN (${ids.map(() => '?').join(', ')})`, ids)
    const out: unknown[] = []
    for (const r of rows) {
      const doc = JSON.parse(r.document) as SignedReceipt
      // Receipts settled before contracts travelled with them: attach ours, if we hold it, so that the
      // peer can check them (without it, it refuses them as no-contract).
      const contract = doc.contract ?? await signedContractOf(db, doc.receipt?.contract ?? '')
      out.push(contract === undefined ? doc : { ...doc, contract })
    }
    return out
  }

  private syncSoon (peer: PeerId, why: string): void {
    if (this.stopping.signal.aborted) return
    this.syncWith(peer).then((report) => {
      if (report.more) this.later(100, () => { this.syncSoon(peer, 'more') })
    }, (err: unknown) => {
      const e = err as Error
      // Peers on an older version do not speak the protocol; a peer that left mid-session is no news.
      if (e.name === 'UnsupportedProtocolError' || this.stopping.signal.aborted) this.log.debug('no receipt sync', { peer: peer.toString(), why, error: e.message })
      else this.log.warn('receipt sync failed', { peer: peer.toString(), why, error: e.message })
    })
  }

  private schedulePeriodic (): void {
    this.later(this.opts.intervalMs * (0.75 + Math.random() / 2), () => {
      const peers = [...new Set((this.node.host?.getConnections() ?? []).map((c) => c.remotePeer.toString()))]
      if (peers.length > 0) this.syncSoon(peerIdFromString(peers[Math.floor(Math.random() * peers.length)]), 'periodic')
      this.schedulePeriodic()
    })
  }

  private later (ms: number, fn: () => void): void {
    if (this.stopping.signal.aborted) return
    const t = setTimeout(() => { this.timers.delete(t); fn() }, ms)
    this.timers.add(t)
  }
}
