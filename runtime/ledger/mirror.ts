import { receiptAmount, receiptId, verifyReceipt, type SignedReceipt } from '../../protocols/receipts.ts'
import type { SqliteDb } from '../store/sqlite.ts'
import { agentAccount, appendTransfers, headAccount } from './ledger.ts'

export interface IngestHooks {
  /** Called inside the ingest transaction after the receipt row is written (crash tests pause here). */
  midIngest? (id: string): Promise<void>
}

export type IngestResult = 'booked' | 'duplicate' | 'own'

/**
 * Books a settled receipt heard from another head: head:<head> → agent:<worker>, in the same
 * transaction as the receipt row. Every node that hears the same receipts therefore holds the same
 * agent balances, which is how any agent checks any other's balance; a receipt heard twice (gossip
 * replays, a restart mid-ingest) is booked once, because receipt ids are unique in both tables.
 */
export async function ingestReceipt (db: SqliteDb, self: string, input: unknown, hooks: IngestHooks = {}, now = Date.now()): Promise<IngestResult> {
  const signed = await verifyReceipt(input)
  const r = signed.receipt
  // Our own receipts were booked against the paying user when we settled them.
  if (r.head === self) return 'own'
  const id = receiptId(r)
  return await db.transaction(async (tx) => {
    const row = await tx.get<{ status: string }>('SELECT status FROM receipts WHERE id = ?', [id])
    if (row?.status === 'settled') return 'duplicate'
    if (row === undefined) {
      await tx.run('INSERT INTO receipts (id, contract, seq, head, worker, tokens, amount, usage_id, status, document, created_at, settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)',
        [id, r.contract, r.seq, r.head, r.worker, r.tokens, receiptAmount(r), 'settled', JSON.stringify(signed), now, now])
    } else {
      await tx.run("UPDATE receipts SET status = 'settled', document = ?, settled_at = ? WHERE id = ?", [JSON.stringify(signed), now, id])
    }
    await hooks.midIngest?.(id)
    const amount = receiptAmount(r)
    if (amount > 0) {
      await appendTransfers(tx, [{ debit: headAccount(r.head), credit: agentAccount(r.worker), amount, memo: `receipt ${r.contract}#${r.seq}`, ref: id }], now)
    }
    return 'booked'
  })
}

/** Every double-signed receipt this node holds as settled (for recomputing balances). */
export async function settledReceipts (db: SqliteDb): Promise<SignedReceipt[]> {
  const rows = await db.all<{ document: string }>("SELECT document FROM receipts WHERE status = 'settled' ORDER BY contract, seq")
  return rows.map((r) => JSON.parse(r.document) as SignedReceipt)
}
