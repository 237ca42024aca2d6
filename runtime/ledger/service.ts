import type { MeshNode } from '../node/node.ts'
import type { Logger } from '../log.ts'
import {
  FraudReportKind, ReceiptKind, ReceiptProposalKind, ReceiptSignatureKind,
  type FraudReport, type SignedReceipt
} from '../../protocols/receipts.ts'
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
  /** Anchors the ledger's chain in peers' countersigned checkpoints (undefined if off). */
  readonly anchor: LedgerAnchor | undefined
  /** Resolves once the anchor's startup check against local checkpoints ran (peers are asked as they connect). */
  anchorReady: Promise<void> = Promise.resolve()
  private lastRepropose = 0
  /** Gossiped receipts refused: in all, and by reason (protocols/receipt-terms.ts). */
  readonly stats = { rejectedReceipts: 0, refused: Object.fromEntries(RECEIPT_REFUSALS.map((r) => [r, 0])) as Record<ReceiptRefusal, number> }

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
      const signed = await this.cosigner.sign(env.body, env.from)
      await this.bus.publish(ReceiptSignatureKind, signed)
    })
    this.bus.subscribe(ReceiptSignatureKind, async (env) => {
      if (env.body.receipt.head !== self || env.from !== env.body.receipt.worker) return
      if (await this.book.acceptWorkerSignature(env.body) !== undefined) this.kick()
    })
    this.bus.subscribe(ReceiptKind, async (env) => {
      try {
        await ingestReceipt(this.node.store.db, self, env.body)
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

  async stop (): Promise<void> {
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
