import type { Queryable } from '../store/sqlite.ts'
import { contractFromRow, type ContractTerms } from '../store/contracts.ts'
import { SignedContractSchema, contractId, type SignedContract } from '../../protocols/market.ts'

/** What the ledger needs of a contract: its terms (see runtime/store/contracts.ts). */
export type ContractRow = ContractTerms

/** Statuses under which a contract may still be billed. The market layer owns the vocabulary. */
export const BILLABLE_STATUSES = ['active']


export async function getContract (q: Queryable, id: string): Promise<ContractRow | undefined> {
  const r = await q.get<Record<string, unknown>>('SELECT * FROM contracts WHERE id = ?', [id])
  return r === undefined ? undefined : contractFromRow(r)
}

/** The contracts under which `head` can serve a model now, ordered by layer range (the pipeline). */
export async function billableContracts (q: Queryable, head: string, modelSha256: string, now = Date.now()): Promise<ContractRow[]> {
  const rows = await q.all<Record<string, unknown>>(
    `SELECT * FROM contracts WHERE head = ? AND model_sha256 = ? AND expires_at > ? AND status IN (${BILLABLE_STATUSES.map(() => '?').join(', ')})
     ORDER BY layer_start`, [head, modelSha256, now, ...BILLABLE_STATUSES])
  return rows.map(contractFromRow)
}

/** For tests and tools that stand in for the market layer. */
export async function putContract (q: Queryable, c: ContractRow, document = '{}', now = Date.now()): Promise<void> {
  await q.run(
    `INSERT INTO contracts (id, model_sha256, head, worker, layer_start, layer_end, price, expires_at, status, document, created_at)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
     ON CONFLICT(id) DO UPDATE SET status = excluded.status, expires_at = excluded.expires_at, price = excluded.price`,
    [c.id, c.modelSha256, c.head, c.worker, c.layerStart, c.layerEnd, c.price, c.expiresAt, c.status, document, now])
}

/**
 * The contract `id` as both parties signed it, if this node holds it (the market stores the
 * SignedContract as the row's document); undefined for a missing row or one without a signed document.
 * Signatures are not checked here: whoever relies on it checks them (protocols/receipt-terms.ts).
 */
export async function signedContractOf (q: Queryable, id: string): Promise<SignedContract | undefined> {
  const row = await q.get<{ document: string }>('SELECT document FROM contracts WHERE id = ?', [id])
  if (row === undefined) return undefined
  let json: unknown
  try {
    json = JSON.parse(row.document)
  } catch {
    return undefined
  }
  const parsed = SignedContractSchema.safeParse(json)
  return parsed.success && contractId(parsed.data.doc) === id ? parsed.data : undefined
}
