import { dealCost, type LayerRange } from '../../protocols/index.ts'
import type { NegotiationBook } from './book.ts'
import { dueForRenewal } from './expiry.ts'

/** One deal a head holds or is making for a model: its call, its layers, its cost per million tokens. */
export interface HeadCommitment { cfpId: string, range: LayerRange, cost: number }

/**
 * What a head holds or is buying for a model: its active contracts, except those due for renewal
 * (their layers are being bought again, and the new deal takes their place in the budget), and the
 * acceptances in flight that are not contracts yet. `except` leaves out one deal (the one under review).
 * One rule for what the agent perceives and what the owner's policy allows.
 */
export async function headCommitments (
  book: Pick<NegotiationBook, 'contracts' | 'negotiations' | 'threads'>,
  head: string,
  model: string,
  o: { renewBeforeMs: number, now?: number, except?: { cfpId: string, peer: string } }
): Promise<HeadCommitment[]> {
  const now = o.now ?? Date.now()
  const excluded = (cfpId: string, peer: string): boolean => o.except !== undefined && o.except.cfpId === cfpId && o.except.peer === peer
  const out: HeadCommitment[] = []
  const contracted = new Set<string>()
  for (const c of await book.contracts({ model, head, status: 'active' })) {
    if (excluded(c.cfpId, c.signed.doc.worker)) continue
    contracted.add(`${c.cfpId}/${c.signed.doc.worker}`)
    if (dueForRenewal(c, o.renewBeforeMs, now)) continue
    out.push({ cfpId: c.cfpId, range: { start: c.signed.doc.start, end: c.signed.doc.end }, cost: dealCost(c.signed.doc) })
  }
  for (const n of await book.negotiations({ role: 'head', model, status: ['open', 'choosing'] })) {
    for (const th of await book.threads(n.cfpId)) {
      if (th.status !== 'accepted' || excluded(n.cfpId, th.peer) || contracted.has(`${n.cfpId}/${th.peer}`)) continue
      out.push({ cfpId: n.cfpId, range: { start: th.terms.start, end: th.terms.end }, cost: dealCost(th.terms) })
    }
  }
  return out
}
