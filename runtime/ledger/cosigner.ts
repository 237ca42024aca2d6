import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { receiptAmount, receiptId, ReceiptInvalid, signAsWorker, type Receipt, type WorkerSignedReceipt } from '../../protocols/receipts.ts'
import type { SqliteDb } from '../store/sqlite.ts'
import { getContract } from './contracts.ts'

/**
 * The worker's side: it signs a receipt only if the terms are those of a contract it holds with that
 * head (same model, layer count and price), and signs each (contract, seq) at most once, so a head
 * cannot collect two signatures for one slot. The token count is checked apart, against the worker's
 * own meter, before `sign` is called (runtime/ledger/audit.ts, wired in service.ts).
 */
export class ReceiptCosigner {
  readonly peerId: string

  /** onSigned: called once per receipt slot newly signed (not for a re-sent proposal), after it is stored. */
  constructor (private readonly db: SqliteDb, private readonly key: PrivateKey, private readonly onSigned?: (receipt: Receipt) => void) {
    this.peerId = peerIdFromPrivateKey(key).toString()
  }

  /** Throws ReceiptInvalid unless the proposal's terms are those of our contract with its head. */
  async check (proposal: Receipt, proposedBy: string): Promise<void> {
    if (proposal.worker !== this.peerId) throw new ReceiptInvalid(`proposal is for ${proposal.worker}, not us`)
    if (proposedBy !== proposal.head) throw new ReceiptInvalid(`proposal for head ${proposal.head} came from ${proposedBy}`)
    const c = await getContract(this.db, proposal.contract)
    if (c === undefined) throw new ReceiptInvalid(`no contract ${proposal.contract}`)
    const mismatch = [
      c.worker !== this.peerId && 'worker', c.head !== proposal.head && 'head', c.modelSha256 !== proposal.modelHash && 'model',
      c.layerEnd - c.layerStart !== proposal.layers && 'layers', c.price !== proposal.price && 'price'
    ].filter(Boolean)
    if (mismatch.length > 0) throw new ReceiptInvalid(`proposal ${proposal.contract}#${proposal.seq} differs from the contract in ${mismatch.join(', ')}`)
    // The running total the amount is rounded on: no less than what we already signed for before it.
    const before = await this.db.get<{ tokens: number }>('SELECT COALESCE(SUM(tokens), 0) AS tokens FROM receipts WHERE contract = ? AND seq < ?', [proposal.contract, proposal.seq])
    if (proposal.prior < (before?.tokens ?? 0)) throw new ReceiptInvalid(`proposal ${proposal.contract}#${proposal.seq} says ${proposal.prior} tokens were billed before it; we signed for ${before?.tokens ?? 0}`)
  }

  /** Whether we already signed this slot (a re-sent proposal is answered without a new audit). */
  async signedSlot (contract: string, seq: number): Promise<boolean> {
    return await this.db.get('SELECT 1 AS x FROM receipts WHERE contract = ? AND seq = ? AND worker = ?', [contract, seq, this.peerId]) !== undefined
  }

  async sign (proposal: Receipt, proposedBy: string, now = Date.now()): Promise<WorkerSignedReceipt> {
    await this.check(proposal, proposedBy)
    const id = receiptId(proposal)
    const signed = await signAsWorker(this.key, proposal)
    const fresh = await this.db.transaction(async (tx) => {
      const slot = await tx.get<{ id: string }>('SELECT id FROM receipts WHERE contract = ? AND seq = ?', [proposal.contract, proposal.seq])
      if (slot !== undefined && slot.id !== id) throw new ReceiptInvalid(`${proposal.contract}#${proposal.seq} was already signed with other terms`)
      if (slot === undefined) {
        await tx.run('INSERT INTO receipts (id, contract, seq, head, worker, tokens, amount, usage_id, status, document, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)',
          [id, proposal.contract, proposal.seq, proposal.head, proposal.worker, proposal.tokens, receiptAmount(proposal), 'cosigned', JSON.stringify(signed), now])
      }
      return slot === undefined
    })
    if (fresh) this.onSigned?.(proposal)
    return signed
  }
}
