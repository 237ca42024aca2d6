import { randomBytes } from 'node:crypto'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import {
  countersignAsHead, receiptAmount, receiptId, ReceiptInvalid,
  type Receipt, type SignedReceipt, type WorkerSignedReceipt
} from '../../protocols/receipts.ts'
import type { SqliteDb, Queryable } from '../store/sqlite.ts'
import { signedContractOf, type ContractRow } from './contracts.ts'
import { NETWORK_FEES, agentAccount, appendTransfers, userAccount, type Transfer } from './ledger.ts'
import { WORKER_SEQ_BASE } from './audit.ts'

/** Usage the head ran for itself (outside its gateway): key_id names the account that pays, its own. */
const SELF_USE = 'agent:'

export interface UsageInput {
  keyId: string
  modelSha256: string
  promptTokens: number
  completionTokens: number
  /** The pipeline that served the request, one contract per layer range. */
  contracts: ContractRow[]
  /** Network fee in whole credits for this request. */
  fee: number
  /** Workers whose receipts are void from the start (caught by a spot check on this very request). */
  voidWorkers?: ReadonlySet<string>
}

export interface RecordedUsage {
  usageId: string
  proposals: Receipt[]
}

export interface SettleHooks {
  /** Called inside the settlement transaction after its ledger entries are written (crash tests pause here). */
  midSettlement? (usageId: string): Promise<void>
}

export interface SettledUsage {
  usageId: string
  receipts: SignedReceipt[]
  charged: number
}

interface ReceiptRow { id: string, worker: string, amount: number, status: string, document: string }

/**
 * The head's side of billing. A served request becomes a `usage` row plus one proposed receipt per
 * contract, in one transaction. Workers sign their receipts; the head countersigns (status `signed`).
 * Settlement then moves credit, per usage and in one transaction: user → each worker for its
 * double-signed receipts, user → network:fees, and marks receipts and usage settled. A crash at any
 * point leaves either all of a usage's entries or none, and the unique `ledger.receipt` makes a
 * second settlement of the same receipt impossible.
 */
export class HeadBook {
  readonly peerId: string

  constructor (private readonly db: SqliteDb, private readonly key: PrivateKey, private readonly hooks: SettleHooks = {}) {
    this.peerId = peerIdFromPrivateKey(key).toString()
  }

  async recordUsage (u: UsageInput, now = Date.now()): Promise<RecordedUsage> {
    return (await this.recordUsages([u], now))[0]
  }

  /**
   * Records many served requests in one transaction, in order (receipt seq and prior follow the
   * input's order). A gateway under load groups its requests here: a transaction per request cost
   * several round trips to sqlite's thread each, and they queued behind one another.
   */
  async recordUsages (inputs: readonly UsageInput[], now = Date.now()): Promise<RecordedUsage[]> {
    if (inputs.length === 0) return []
    return await this.db.transaction(async (tx) => {
      const next = new Map<string, { seq: number, prior: number }>()
      for (const id of new Set(inputs.flatMap((u) => u.contracts.map((c) => c.id)))) next.set(id, await nextReceipt(tx, id))
      const usageRows: unknown[][] = []
      const receiptRows: unknown[][] = []
      const out = inputs.map((u): RecordedUsage => {
        const usageId = `u_${randomBytes(12).toString('hex')}`
        const tokens = u.promptTokens + u.completionTokens
        usageRows.push([usageId, u.keyId, u.modelSha256, u.promptTokens, u.completionTokens, u.fee, 'pending', now])
        const proposals: Receipt[] = []
        if (tokens <= 0) return { usageId, proposals }
        for (const c of u.contracts) {
          const at = next.get(c.id) as { seq: number, prior: number }
          const receipt: Receipt = {
            contract: c.id,
            seq: at.seq,
            tokens,
            prior: at.prior,
            layers: c.layerEnd - c.layerStart,
            modelHash: u.modelSha256,
            price: c.price,
            head: this.peerId,
            worker: c.worker,
            ts: now
          }
          next.set(c.id, { seq: at.seq + 1, prior: at.prior + tokens })
          const status = u.voidWorkers?.has(c.worker) === true ? 'void' : 'proposed'
          receiptRows.push([receiptId(receipt), c.id, receipt.seq, this.peerId, c.worker, tokens, receiptAmount(receipt), usageId, status, JSON.stringify({ receipt }), now])
          if (status === 'proposed') proposals.push(receipt)
        }
        return { usageId, proposals }
      })
      await insertRows(tx, 'usage', ['id', 'key_id', 'model_sha256', 'prompt_tokens', 'completion_tokens', 'fee', 'status', 'created_at'], usageRows)
      await insertRows(tx, 'receipts', ['id', 'contract', 'seq', 'head', 'worker', 'tokens', 'amount', 'usage_id', 'status', 'document', 'created_at'], receiptRows)
      return out
    })
  }

  /**
   * Takes a worker's signature over a receipt we proposed: checks it matches our proposal exactly and
   * verifies, countersigns and stores the double-signed receipt. Returns undefined for receipts we did
   * not propose or that are no longer waiting (void, already signed).
   */
  async acceptWorkerSignature (ws: WorkerSignedReceipt): Promise<SignedReceipt | undefined> {
    const id = receiptId(ws.receipt)
    const row = await this.db.get<ReceiptRow>('SELECT id, worker, amount, status, document FROM receipts WHERE id = ?', [id])
    if (row === undefined || row.status !== 'proposed') return undefined
    if (ws.receipt.worker !== row.worker) throw new ReceiptInvalid(`receipt ${id} was proposed to ${row.worker}, signed by ${ws.receipt.worker}`)
    const signed = await countersignAsHead(this.key, ws)
    const { changes } = await this.db.run("UPDATE receipts SET status = 'signed', document = ? WHERE id = ? AND status = 'proposed'", [JSON.stringify(signed), id])
    return changes === 1 ? signed : undefined
  }

  /**
   * A receipt the worker proposed from its own meter because we proposed none (we ran the pipeline
   * outside the gateway): we owe it, so we countersign it if its terms are our contract's and its
   * slot is the worker's own and free, and book it as our own usage, paid from our account.
   */
  async acceptWorkerProposal (ws: WorkerSignedReceipt, contract: ContractRow, now = Date.now()): Promise<SignedReceipt | undefined> {
    const r = ws.receipt
    const mismatch = [
      contract.head !== this.peerId && 'head', contract.worker !== r.worker && 'worker', contract.modelSha256 !== r.modelHash && 'model',
      contract.layerEnd - contract.layerStart !== r.layers && 'layers', contract.price !== r.price && 'price', r.seq < WORKER_SEQ_BASE && 'seq'
    ].filter(Boolean)
    if (mismatch.length > 0) throw new ReceiptInvalid(`worker proposal ${r.contract}#${r.seq} differs from the contract in ${mismatch.join(', ')}`)
    const id = receiptId(r)
    const signed = await countersignAsHead(this.key, ws)
    const usageId = `u_${randomBytes(12).toString('hex')}`
    return await this.db.transaction(async (tx) => {
      const slot = await tx.get<{ id: string }>('SELECT id FROM receipts WHERE contract = ? AND seq = ?', [r.contract, r.seq])
      if (slot !== undefined) return undefined
      await tx.run('INSERT INTO usage (id, key_id, model_sha256, prompt_tokens, completion_tokens, fee, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)',
        [usageId, agentAccount(this.peerId), r.modelHash, r.tokens, 0, 0, 'pending', now])
      await tx.run('INSERT INTO receipts (id, contract, seq, head, worker, tokens, amount, usage_id, status, document, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        [id, r.contract, r.seq, this.peerId, r.worker, r.tokens, receiptAmount(r), usageId, 'signed', JSON.stringify(signed), now])
      return signed
    })
  }

  /** Usages whose receipts are all decided (signed or void) and older than the challenge window. */
  async settleable (olderThan: number): Promise<string[]> {
    const rows = await this.db.all<{ id: string }>(
      `SELECT u.id FROM usage u WHERE u.status = 'pending' AND u.created_at <= ?
         AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.usage_id = u.id AND r.status = 'proposed')
       ORDER BY u.created_at`, [olderThan])
    return rows.map((r) => r.id)
  }

  /**
   * Moves the credit of one usage, all in one transaction. Credits move only on double-signed receipts;
   * the fee is charged only if at least one receipt was paid (a request nobody was paid for is free).
   */
  async settleUsage (usageId: string, now = Date.now()): Promise<SettledUsage | undefined> {
    return await this.db.transaction(async (tx) => {
      const usage = await tx.get<{ key_id: string, fee: number, status: string }>('SELECT key_id, fee, status FROM usage WHERE id = ?', [usageId])
      if (usage === undefined || usage.status !== 'pending') return undefined
      const rows = await tx.all<ReceiptRow>("SELECT id, worker, amount, status, document FROM receipts WHERE usage_id = ? AND status = 'signed' ORDER BY id", [usageId])
      const user = usage.key_id.startsWith(SELF_USE) ? usage.key_id : userAccount(usage.key_id)
      const transfers: Transfer[] = rows.filter((r) => r.amount > 0).map((r) => ({
        debit: user, credit: agentAccount(r.worker), amount: r.amount, memo: `receipt usage:${usageId}`, ref: r.id
      }))
      if (transfers.length > 0 && usage.fee > 0) transfers.push({ debit: user, credit: NETWORK_FEES, amount: usage.fee, memo: `network fee usage:${usageId}`, ref: `fee:${usageId}` })
      await appendTransfers(tx, transfers, now)
      // Crash tests pause here: entries written, receipts and usage not yet marked, nothing committed.
      if (transfers.length > 0) await this.hooks.midSettlement?.(usageId)
      // Each settled receipt carries its signed contract, so that bystanders who never saw the
      // contract can check the receipt against it before booking (runtime/ledger/mirror.ts).
      const receipts: SignedReceipt[] = []
      for (const r of rows) {
        const doc = JSON.parse(r.document) as SignedReceipt
        const contract = doc.contract ?? await signedContractOf(tx, doc.receipt.contract)
        const full = contract === undefined ? doc : { ...doc, contract }
        await tx.run("UPDATE receipts SET status = 'settled', settled_at = ?, document = ? WHERE id = ? AND status = 'signed'", [now, JSON.stringify(full), r.id])
        receipts.push(full)
      }
      await tx.run("UPDATE usage SET status = 'settled', settled_at = ? WHERE id = ?", [now, usageId])
      const charged = transfers.reduce((sum, t) => sum + t.amount, 0)
      return { usageId, receipts, charged }
    })
  }

  /**
   * Settles every settleable usage, each in its own transaction. One usage that cannot settle (say
   * its key was overdrawn by hand) is reported in `failed` and does not hold up the others.
   */
  async settleReady (olderThan = Date.now(), failed: Array<{ usageId: string, error: Error }> = []): Promise<SettledUsage[]> {
    const out: SettledUsage[] = []
    for (const id of await this.settleable(olderThan)) {
      try {
        const s = await this.settleUsage(id)
        if (s !== undefined) out.push(s)
      } catch (err) {
        failed.push({ usageId: id, error: err as Error })
      }
    }
    return out
  }

  /** A worker caught cheating loses every receipt of its that has not been settled yet. */
  async voidUnsettled (worker: string): Promise<number> {
    const { changes } = await this.db.run("UPDATE receipts SET status = 'void' WHERE head = ? AND worker = ? AND status IN ('proposed', 'signed')", [this.peerId, worker])
    return changes
  }

  /** Proposals still waiting for their worker's signature that were made before `olderThan`. */
  async waitingProposals (olderThan: number): Promise<Receipt[]> {
    const rows = await this.db.all<{ document: string }>("SELECT document FROM receipts WHERE head = ? AND status = 'proposed' AND created_at <= ? ORDER BY created_at LIMIT 500", [this.peerId, olderThan])
    return rows.map((r) => (JSON.parse(r.document) as { receipt: Receipt }).receipt)
  }

  /** Proposals a worker never signed (it died, or refused) stop blocking their usage after a while. */
  async expireProposals (olderThan: number): Promise<number> {
    const { changes } = await this.db.run("UPDATE receipts SET status = 'void' WHERE head = ? AND status = 'proposed' AND created_at <= ?", [this.peerId, olderThan])
    return changes
  }

  /** Credits a key owes for usage not settled yet: reserved against its balance until settlement. */
  async pendingCharge (keyId: string, q: Queryable = this.db): Promise<number> {
    return (await this.funds(keyId, q)).pending
  }

  /** A key's balance and what it owes for unsettled usage, read together (one query, one snapshot). */
  async funds (keyId: string, q: Queryable = this.db): Promise<{ balance: number, pending: number }> {
    const row = await q.get<{ balance: number, pending: number }>(
      `SELECT COALESCE((SELECT balance FROM ledger_balances WHERE account = ?), 0) AS balance,
              COALESCE((SELECT SUM(u.fee + (SELECT COALESCE(SUM(r.amount), 0) FROM receipts r WHERE r.usage_id = u.id AND r.status IN ('proposed', 'signed')))
                        FROM usage u WHERE u.key_id = ? AND u.status = 'pending'), 0) AS pending`, [userAccount(keyId), keyId])
    return { balance: row?.balance ?? 0, pending: row?.pending ?? 0 }
  }
}

/**
 * The seq and prior of a contract's next receipt: one past its last, and every token billed on it
 * before. Read from the last receipt (its prior plus its tokens: each receipt's prior is the sum of
 * those before it, by construction above) rather than summed over all of them, which grew with the
 * contract's history and was paid on every request.
 */
async function nextReceipt (q: Queryable, contract: string): Promise<{ seq: number, prior: number }> {
  // Slots from WORKER_SEQ_BASE up are the worker's own proposals (audit.ts): ours stay below, and the
  // prior counts every receipt of the contract, the worker's included.
  const r = await q.get<{ seq: number, prior: number }>('SELECT COALESCE(MAX(CASE WHEN seq < ? THEN seq END), 0) + 1 AS seq, COALESCE(SUM(tokens), 0) AS prior FROM receipts WHERE contract = ?', [WORKER_SEQ_BASE, contract])
  return { seq: r?.seq ?? 1, prior: r?.prior ?? 0 }
}

/** SQLite builds may bind as few as 999 parameters per statement. */
const MAX_PARAMS = 999

/** Multi-row INSERTs: one statement (one trip to sqlite's thread) per few dozen rows, not per row. */
async function insertRows (q: Queryable, table: string, columns: readonly string[], rows: readonly unknown[][]): Promise<void> {
  const perStatement = Math.max(1, Math.floor(MAX_PARAMS / columns.length))
  const tuple = `(${columns.map(() => '?').join(', ')})`
  for (let i = 0; i < rows.length; i += perStatement) {
    const chunk = rows.slice(i, i + perStatement)
    await q.run(`INSERT INTO ${table} (${columns.join(', ')}) VALUES ${chunk.map(() => tuple).join(', ')}`, chunk.flat())
  }
}
