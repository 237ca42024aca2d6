import type { MeshNode } from '../node/node.ts'
import type { Logger } from '../log.ts'
import {
  FraudReportKind, ReceiptKind, ReceiptProposalKind, ReceiptSignatureKind, WorkerProposalKind,
  type FraudReport, type Receipt, type SignedReceipt, type WorkerSignedReceipt
} from '../../protocols/receipts.ts'
import { MeterReportKind, checkMeterReport, type MeterReport } from '../../protocols/meter-report.ts'
import { ReceiptAudit, WORKER_SEQ_BASE, type AuditDecision, type WorkMeter } from './audit.ts'
import { getContract, signedContractOf } from './contracts.ts'
import type { Envelope } from '../../protocols/envelope.ts'
import { RECEIPT_REFUSALS, ReceiptRefused, type ReceiptRefusal } from '../../protocols/receipt-terms.ts'
import { HeadBook, type RecordedUsage, type SettledUsage, type SettleHooks } from './head-book.ts'
import { ReceiptCosigner } from './cosigner.ts'
import { ingestReceipt } from './mirror.ts'
import { ReceiptSync, type ReceiptSyncOptions } from './sync.ts'
import { LedgerAnchor, type LedgerAnchorOptions } from './anchor.ts'

const REPROPOSE_MS = 1500

export interface ReceiptServiceOptions {
  /**
   * Challenge window: a usage settles only this long after it was served, so that a spot check (or a
   * fraud report) can still void the receipts of a cheating worker. 0 settles as soon as signed.
   * Default: the node's gateway.settleDelayMs, else 0.
   */
  settleDelayMs?: number
  /** Proposals unsigned after this long are voided (the worker is gone or refuses). */
  proposalTimeoutMs?: number
  /** How often to look for settleable usages. */
  tickMs?: number
  hooks?: SettleHooks
  /** Anti-entropy with peers for settled receipts that gossip did not bring (false: gossip only). */
  sync?: ReceiptSyncOptions | false
  /** Checkpoints of the ledger exchanged with peers, and the startup check against them (false: none). */
  anchor?: LedgerAnchorOptions | false
}

/**
 * Wires one node's books to gossip, in every role at once: as a head it proposes receipts, countersigns
 * what workers sign, settles and publishes; as a worker it cosigns proposals that match its contracts;
 * as a bystander it books every valid settled receipt and keeps fraud reports.
 */
export class ReceiptService {
  readonly book: HeadBook
  private readonly cosigner: ReceiptCosigner
  private readonly log: Logger
  private timer: NodeJS.Timeout | undefined
  private settling: Promise<unknown> = Promise.resolve()
  private readonly settledListeners: Array<(s: SettledUsage) => void> = []
  private readonly opts: Required<Omit<ReceiptServiceOptions, 'hooks' | 'sync' | 'anchor'>>
  /** Catches up on settled receipts missed while offline or not yet connected (undefined if off). */
  readonly sync: ReceiptSync | undefined
  /** The worker's audit of its heads' claims against its own meter (undefined until a meter is attached). */
  private audit: ReceiptAudit | undefined
  private auditTimer: NodeJS.Timeout | undefined
  private auditing: Promise<unknown> = Promise.resolve()
  private readonly refusedSlots = new Set<string>()
  /** Receipts we proposed from our own count and the head has not settled yet. */
  private readonly ownProposals = new Map<string, { signed: WorkerSignedReceipt, at: number, sentAt: number }>()
  private readonly meterReportListeners: Array<(r: MeterReport) => void> = []
  private unpaidMs = 5 * 60_000
  /** Anchors the ledger's chain in peers' countersigned checkpoints (undefined if off). */
  readonly anchor: LedgerAnchor | undefined
  /** Resolves once the anchor's startup check against local checkpoints ran (peers are asked as they connect). */
  anchorReady: Promise<void> = Promise.resolve()
  private lastRepropose = 0
  /** Gossiped receipts refused: in all, and by reason (protocols/receipt-terms.ts). */
  readonly stats = {
    rejectedReceipts: 0,
    refused: Object.fromEntries(RECEIPT_REFUSALS.map((r) => [r, 0])) as Record<ReceiptRefusal, number>,
    /** Meter reports: made by this worker, kept from others after checking, refused as unverifiable. */
    meterReports: { made: 0, kept: 0, rejected: 0 }
  }

  constructor (private readonly node: MeshNode, opts: ReceiptServiceOptions = {}) {
    this.book = new HeadBook(node.store.db, node.key, opts.hooks)
    // A worker counts what it served when it signs for it: the RPC server itself reports no tokens.
    this.cosigner = new ReceiptCosigner(node.store.db, node.key, (r) => { node.serving.record(r.modelHash, r.tokens) })
    this.log = node.log.child('receipts')
    this.sync = opts.sync === false ? undefined : new ReceiptSync(node, node.log.child('receipt-sync'), opts.sync)
    this.anchor = opts.anchor === false ? undefined : new LedgerAnchor(node, node.log.child('ledger-anchor'), opts.anchor)
    this.opts = { settleDelayMs: opts.settleDelayMs ?? node.config.gateway?.settleDelayMs ?? 0, proposalTimeoutMs: opts.proposalTimeoutMs ?? 60_000, tickMs: opts.tickMs ?? 250 }
  }

  private get bus (): NonNullable<MeshNode['bus']> {
    if (this.node.bus === undefined) throw new Error('receipt service needs a started node (no gossip bus)')
    return this.node.bus
  }

  start (): void {
    const self = this.node.peerId.toString()
    this.bus.subscribe(ReceiptProposalKind, async (env) => {
      if (env.body.worker !== self) return
      const p = env.body
      // Unmetered (no engine serves here), or a slot already signed: answer as before.
      if (this.audit === undefined || await this.cosigner.signedSlot(p.contract, p.seq)) {
        await this.bus.publish(ReceiptSignatureKind, await this.cosigner.sign(p, env.from))
        return
      }
      if (this.refusedSlots.has(`${p.contract}#${p.seq}`)) return
      await this.cosigner.check(p, env.from)
      await this.act(this.audit.offer(p))
    })
    this.bus.subscribe(WorkerProposalKind, async (env) => {
      const r = env.body.receipt
      if (r.head !== self || env.from !== r.worker) return
      const c = await getContract(this.node.store.db, r.contract)
      if (c === undefined) { this.log.warn('a worker proposed a receipt under a contract we do not hold', { worker: r.worker, contract: r.contract }); return }
      if (await this.book.acceptWorkerProposal(env.body, c) !== undefined) {
        this.log.info('countersigned a receipt our worker proposed for pipeline use outside the gateway', { worker: r.worker, contract: r.contract, tokens: r.tokens })
        this.kick()
      }
    })
    this.bus.subscribe(MeterReportKind, async (env) => { await this.keepMeterReport(env) })
    this.bus.subscribe(ReceiptSignatureKind, async (env) => {
      if (env.body.receipt.head !== self || env.from !== env.body.receipt.worker) return
      if (await this.book.acceptWorkerSignature(env.body) !== undefined) this.kick()
    })
    this.bus.subscribe(ReceiptKind, async (env) => {
      try {
        await ingestReceipt(this.node.store.db, self, env.body)
        this.ownProposals.delete(`${env.body.receipt.contract}#${env.body.receipt.seq}`)
      } catch (err) {
        // A well-formed envelope around a receipt that is forged, tampered, or means more than its contract allows.
        this.stats.rejectedReceipts++
        if (err instanceof ReceiptRefused) this.stats.refused[err.reason]++
        this.log.warn('refused a gossiped receipt', { from: env.from, reason: err instanceof ReceiptRefused ? err.reason : 'error', error: (err as Error).message })
      }
    })
    this.bus.subscribe(FraudReportKind, async (env) => { await this.keepFraudReport(env) })
    this.timer = setInterval(() => this.kick(), this.opts.tickMs)
    // Gossip reaches only the peers connected at the time; sync brings the rest, checked the same way.
    this.sync?.start()
    this.anchorReady = this.anchor?.start().catch((err: unknown) => { this.log.error('ledger anchor did not start', { error: (err as Error).message }) }) ?? Promise.resolve()
  }

  /**
   * Makes this node's worker side sign only what its own meter counted (audit.ts): proposals are
   * checked against `meter`, shortfalls refused and reported, rows nobody proposed for proposed by us.
   * `quietMs`: how long a meter must be idle before a shortfall is final; `unpaidMs`: how long the
   * head has to countersign and settle our own proposals before we report it unpaid.
   */
  attachMeter (meter: WorkMeter, o: { quietMs?: number, unpaidMs?: number } = {}): void {
    const quietMs = o.quietMs ?? 5000
    this.audit = new ReceiptAudit(meter, quietMs)
    this.unpaidMs = o.unpaidMs ?? this.unpaidMs
    clearInterval(this.auditTimer)
    this.auditTimer = setInterval(() => { this.reviewAudit() }, Math.max(100, Math.min(1000, quietMs / 4)))
    this.auditTimer.unref()
  }

  /** Called with each meter report this worker makes (the engine suspends the contract). */
  onMeterReport (fn: (r: MeterReport) => void): void {
    this.meterReportListeners.push(fn)
  }

  async stop (): Promise<void> {
    clearInterval(this.auditTimer)
    await this.auditing
    clearInterval(this.timer)
    await this.sync?.stop()
    await this.anchorReady
    await this.anchor?.stop()
  }

  onSettled (fn: (s: SettledUsage) => void): void {
    this.settledListeners.push(fn)
  }

  /** Asks each worker of a recorded usage to sign its receipt. */
  async propose (recorded: RecordedUsage): Promise<void> {
    for (const p of recorded.proposals) await this.bus.publish(ReceiptProposalKind, p)
  }

  /** Voids the accused's unsettled receipts and tells everyone, signed. */
  async reportFraud (report: Omit<FraudReport, 'voided' | 'ts'>): Promise<FraudReport> {
    const voided = await this.book.voidUnsettled(report.accused)
    const full: FraudReport = { ...report, voided, ts: Date.now() }
    const env = await this.bus.publish(FraudReportKind, full)
    await this.keepFraudReport(env)
    this.log.warn('spot check failed: fraud reported', { accused: report.accused, contract: report.contract, voided })
    return full
  }

  /** Runs the audit's periodic review (one at a time): final shortfalls, unbilled rows, unpaid proposals. */
  reviewAudit (now = Date.now()): Promise<unknown> {
    const audit = this.audit
    if (audit === undefined) return this.auditing
    const run = this.auditing.then(async () => {
      const rows = await this.node.store.db.all<{ id: string }>('SELECT id FROM contracts WHERE worker = ?', [this.node.peerId.toString()])
      for (const d of audit.review(rows.map((r) => r.id), now)) await this.act(d, now)
      for (const [slot, o] of this.ownProposals) {
        if (now - o.at >= this.unpaidMs) {
          this.ownProposals.delete(slot)
          await this.report('unpaid', o.signed.receipt.contract, o.signed.receipt.head, 0, o.signed.receipt.tokens, [o.signed.receipt.seq])
        } else if (now - o.sentAt >= 5000) {
          o.sentAt = now // gossip is fire-and-forget: the head may have missed it
          await this.bus.publish(WorkerProposalKind, o.signed)
        }
      }
    }).catch((err: unknown) => { this.log.error('receipt audit failed', { error: (err as Error).message }) })
    this.auditing = run
    return run
  }

  private async act (d: AuditDecision | undefined, now = Date.now()): Promise<void> {
    if (d === undefined) return
    if (d.kind === 'sign') {
      for (const r of d.receipts) await this.bus.publish(ReceiptSignatureKind, await this.cosigner.sign(r, r.head))
    } else if (d.kind === 'refuse') {
      for (const r of d.receipts) this.refusedSlots.add(`${r.contract}#${r.seq}`)
      const r0 = d.receipts[0]
      this.log.warn('refused receipts that claim fewer tokens than we computed', { contract: r0.contract, head: r0.head, claimed: d.claimed, counted: d.counted })
      await this.report('under-billed', r0.contract, r0.head, d.claimed, d.counted, d.receipts.map((r) => r.seq))
    } else {
      await this.proposeOwn(d.contract, d.tokens, now)
    }
  }

  /** Rows computed that no proposal came for: we propose and sign a receipt for them ourselves. */
  private async proposeOwn (contract: string, tokens: number, now: number): Promise<void> {
    const db = this.node.store.db
    const c = await getContract(db, contract)
    const self = this.node.peerId.toString()
    if (c === undefined || c.worker !== self) return
    const row = await db.get<{ n: number, prior: number }>('SELECT COALESCE(SUM(CASE WHEN seq >= ? THEN 1 ELSE 0 END), 0) AS n, COALESCE(SUM(tokens), 0) AS prior FROM receipts WHERE contract = ?', [WORKER_SEQ_BASE, contract])
    const receipt: Receipt = {
      contract, seq: WORKER_SEQ_BASE + (row?.n ?? 0) + 1, tokens, prior: row?.prior ?? 0, layers: c.layerEnd - c.layerStart,
      modelHash: c.modelSha256, price: c.price, head: c.head, worker: self, ts: now
    }
    this.audit?.proposed(contract, tokens)
    const signed = await this.cosigner.sign(receipt, c.head, now)
    this.ownProposals.set(`${contract}#${receipt.seq}`, { signed, at: now, sentAt: now })
    this.log.info('proposed a receipt from our own count: the head proposed none', { contract, head: c.head, tokens })
    await this.bus.publish(WorkerProposalKind, signed)
  }

  private async report (reason: MeterReport['reason'], contract: string, head: string, claimed: number, counted: number, seqs: number[]): Promise<void> {
    const signed = await signedContractOf(this.node.store.db, contract)
    if (signed === undefined) { this.log.warn('cannot report a head without the signed contract', { contract, reason }); return }
    const report: MeterReport = { reason, accused: head, contract: signed, claimed, counted, seqs: seqs.slice(0, 1000), ts: Date.now() }
    this.stats.meterReports.made++
    const env = await this.bus.publish(MeterReportKind, report)
    await this.keepMeterReport(env)
    for (const fn of this.meterReportListeners) fn(report)
  }

  /** Keeps a meter report once its contract and parties check out (ours included, checked the same way). */
  private async keepMeterReport (env: Envelope<MeterReport>): Promise<void> {
    const v = await checkMeterReport(env.from, env.body)
    if (!v.ok) {
      this.stats.meterReports.rejected++
      this.log.warn('refused a meter report', { from: env.from, reason: v.reason })
      return
    }
    this.stats.meterReports.kept++
    await this.node.store.db.run(
      'INSERT INTO fraud_reports (id, accused, reporter, contract, document, created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING',
      [`${env.from}/${env.id}`, env.body.accused, env.from, v.contract, JSON.stringify(env), Date.now()])
  }

  /** Settles whatever is due now (serialised: one settlement pass at a time). */
  async settleNow (olderThan = Date.now() - this.opts.settleDelayMs): Promise<SettledUsage[]> {
    const run = this.settling.then(async () => {
      await this.book.expireProposals(Date.now() - this.opts.proposalTimeoutMs)
      await this.reproposeWaiting()
      const failed: Array<{ usageId: string, error: Error }> = []
      const done = await this.book.settleReady(olderThan, failed)
      for (const f of failed) this.log.error('usage could not settle', { usage: f.usageId, error: f.error.message })
      for (const s of done) {
        for (const r of s.receipts) await this.publishReceipt(r)
        for (const fn of this.settledListeners) fn(s)
      }
      return done
    })
    this.settling = run.catch(() => {})
    return await run
  }

  /**
   * Gossip is fire-and-forget: a proposal sent before the worker's subscription reached us, or while
   * it was restarting, is simply lost. So proposals still unsigned after a while are sent again
   * (signing is idempotent on the worker's side).
   */
  private async reproposeWaiting (): Promise<void> {
    const now = Date.now()
    if (now - this.lastRepropose < REPROPOSE_MS) return
    this.lastRepropose = now
    for (const p of await this.book.waitingProposals(now - REPROPOSE_MS)) await this.bus.publish(ReceiptProposalKind, p)
  }

  private kick (): void {
    this.settleNow().catch((err: unknown) => this.log.error('settlement failed', { error: (err as Error).message }))
  }

  private async publishReceipt (r: SignedReceipt): Promise<void> {
    try {
      await this.bus.publish(ReceiptKind, r)
    } catch (err) {
      // Settled is settled: peers that miss the gossip can still ask for the receipt later.
      this.log.warn('could not gossip a settled receipt', { contract: r.receipt.contract, seq: r.receipt.seq, error: (err as Error).message })
    }
  }

  private async keepFraudReport (env: Envelope<FraudReport>): Promise<void> {
    await this.node.store.db.run(
      'INSERT INTO fraud_reports (id, accused, reporter, contract, document, created_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING',
      [`${env.from}/${env.id}`, env.body.accused, env.from, env.body.contract, JSON.stringify(env), Date.now()])
  }
}
