import { z } from 'zod'
import { SignedReceiptSchema, receiptAmount, receiptId, verifyReceipt, type SignedReceipt } from '../../protocols/receipts.ts'
import { ReceiptRefused, checkReceiptTerms, type HeldOnContract } from '../../protocols/receipt-terms.ts'
import type { Queryable, SqliteDb } from '../store/sqlite.ts'
import { signedContractOf } from './contracts.ts'
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
 *
 * Signatures are not enough: a receipt is booked only under a contract both parties signed (attached
 * to it, or held here), within that contract's terms (protocols/receipt-terms.ts). Anything else
 * throws ReceiptRefused with the reason, and nothing is written. The stored document keeps the
 * contract, so that this node can hand the receipt on (receipt sync) to peers that lack it.
 */
export async function ingestReceipt (db: SqliteDb, self: string, input: unknown, hooks: IngestHooks = {}, now = Date.now()): Promise<IngestResult> {
  const parsed = SignedReceiptSchema.safeParse(input)
  if (!parsed.success) throw new ReceiptRefused('malformed', z.prettifyError(parsed.error))
  let signed: SignedReceipt
  try {
    signed = await verifyReceipt(parsed.data)
  } catch (err) {
    throw new ReceiptRefused('signature', (err as Error).message)
  }
  const r = signed.receipt
  // Our own receipts were booked against the paying user when we settled them.
  if (r.head === self) return 'own'
  const id = receiptId(r)
  const contract = signed.contract ?? await signedContractOf(db, r.contract)
  if (contract === undefined) throw new ReceiptRefused('no-contract', `receipt ${r.contract}#${r.seq} names a contract it does not carry and this node does not hold`)
  const document = JSON.stringify({ ...signed, contract })
  return await db.transaction(async (tx) => {
    const row = await tx.get<{ status: string, contract: string, seq: number }>('SELECT status, contract, seq FROM receipts WHERE id = ?', [id])
    if (row?.status === 'settled') return 'duplicate'
    // Checked inside the transaction: what this node holds on the contract cannot change under us.
    await checkReceiptTerms(r, contract, await heldOn(tx, r.contract, id), now)
    const slot = await tx.get<{ id: string }>('SELECT id FROM receipts WHERE contract = ? AND seq = ?', [r.contract, r.seq])
    if (slot !== undefined && slot.id !== id) throw new ReceiptRefused('conflict', `${r.contract}#${r.seq} is already held with other terms (receipt ${slot.id.slice(0, 12)})`)
    if (row === undefined) {
      await tx.run('INSERT INTO receipts (id, contract, seq, head, worker, tokens, amount, usage_id, status, document, created_at, settled_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)',
        [id, r.contract, r.seq, r.head, r.worker, r.tokens, receiptAmount(r), 'settled', document, now, now])
    } else {
      await tx.run("UPDATE receipts SET status = 'settled', document = ?, settled_at = ? WHERE id = ?", [document, now, id])
    }
    await hooks.midIngest?.(id)
    const amount = receiptAmount(r)
    if (amount > 0) {
      await appendTransfers(tx, [{ debit: headAccount(r.head), credit: agentAccount(r.worker), amount, memo: `receipt ${r.contract}#${r.seq}`, ref: id }], now)
    }
    return 'booked'
  })
}

/** What this node booked on a contract so far, other than receipt `except`. */
async function heldOn (q: Queryable, contract: string, except: string): Promise<HeldOnContract> {
  const row = await q.get<{ tokens: number, latest: number | null }>(
    "SELECT COALESCE(SUM(tokens), 0) AS tokens, MAX(json_extract(document, '$.receipt.ts')) AS latest FROM receipts WHERE contract = ? AND status = 'settled' AND id <> ?",
    [contract, except])
  return { tokens: row?.tokens ?? 0, latestTs: row?.latest ?? 0 }
}

/** Every double-signed receipt this node holds as settled (for recomputing balances). */
export async function settledReceipts (db: SqliteDb): Promise<SignedReceipt[]> {
  const rows = await db.all<{ document: string }>("SELECT document FROM receipts WHERE status = 'settled' ORDER BY contract, seq")
  return rows.map((r) => JSON.parse(r.document) as SignedReceipt)
}
