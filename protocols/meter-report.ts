import { z } from 'zod'
import { defineKind } from './envelope.ts'
import { SignedContractSchema, contractId, verifyContract } from './market.ts'

/**
 * A worker's signed statement that the head of a contract billed less than the worker computed
 * (`under-billed`: the head's receipts claimed `claimed` tokens where the worker's own meter counted
 * `counted` rows since the last receipt it signed), or did not countersign a receipt the worker
 * proposed from its own count (`unpaid`: the head ran the pipeline outside its gateway and paid
 * nothing). The envelope's signature makes it the worker's statement; the contract travels with it,
 * signed by both parties, so any bystander can check who the two parties are and that the reporter
 * is the contract's worker and the accused its head. The counts themselves are the worker's word:
 * a bystander learns who disputes what, not who is right.
 */
export const MeterReportSchema = z.object({
  reason: z.enum(['under-billed', 'unpaid']),
  accused: z.string().min(40).max(80),
  contract: SignedContractSchema,
  /** Tokens the head's refused proposals claimed (0 for `unpaid`). */
  claimed: z.number().int().nonnegative(),
  /** Rows the worker's meter counted over the same span. */
  counted: z.number().int().nonnegative(),
  /** The receipt slots (seq) refused or left unpaid. */
  seqs: z.array(z.number().int().positive()).max(1000),
  ts: z.number().int().nonnegative()
}).strict()

export type MeterReport = z.infer<typeof MeterReportSchema>
export const MeterReportKind = defineKind('meter-report', MeterReportSchema, 15 * 60_000)

/**
 * What a bystander can check of a meter report signed by `from` (the envelope's verified signer):
 * the contract's two signatures, that `from` is its worker and the accused its head.
 */
export async function checkMeterReport (from: string, r: MeterReport): Promise<{ ok: true, contract: string } | { ok: false, reason: string }> {
  const v = await verifyContract(r.contract)
  if (!v.ok) return { ok: false, reason: `its contract does not verify: ${v.reason}` }
  if (r.contract.doc.worker !== from) return { ok: false, reason: `reported by ${from}, who is not the contract's worker ${r.contract.doc.worker}` }
  if (r.contract.doc.head !== r.accused) return { ok: false, reason: `accuses ${r.accused}, who is not the contract's head ${r.contract.doc.head}` }
  return { ok: true, contract: contractId(r.contract.doc) }
}
