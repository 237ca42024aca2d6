import type { NegotiationBook } from './book.ts'

/**
 * Offers nobody answered lapse at their own expiry; an acceptance nobody countersigned lapses after the
 * offer time. A worker's negotiation with nothing left in it is closed once the call's deadline plus the
 * offer time has passed. Every negotiation that changed is handed to `settle`, which decides what next.
 * One rule for the real ClawBot and the simulator's agents.
 */
export async function expireStaleOffers (
  book: Pick<NegotiationBook, 'negotiations' | 'threads' | 'putThread'>,
  desk: { closeNegotiation (cfpId: string): Promise<void> },
  offerTtlMs: number,
  settle: (cfpId: string) => Promise<void>,
  now = Date.now()
): Promise<void> {
  for (const n of await book.negotiations({ status: ['open', 'choosing'] })) {
    let changed = false
    for (const t of await book.threads(n.cfpId)) {
      const lapsed = (['proposed', 'countered'].includes(t.status) && t.terms.expiresAt < now) ||
        (t.status === 'accepted' && t.updatedAt + offerTtlMs < now)
      if (!lapsed) continue
      await book.putThread({ ...t, status: 'expired' })
      changed = true
    }
    if (changed || (n.role === 'worker' && n.cfp.deadline + offerTtlMs < now)) {
      if (n.role === 'worker' && (await book.threads(n.cfpId)).length === 0) await desk.closeNegotiation(n.cfpId)
      await settle(n.cfpId)
    }
  }
}

/**
 * A head renews a contract before its term ends, so that the replacement is signed and running before
 * the old one lapses: once less than `renewBeforeMs` remains, or less than a third of the term (short
 * terms), whichever comes later.
 */
export function dueForRenewal (c: { createdAt: number, signed: { doc: { serveUntil: number } } }, renewBeforeMs: number, now = Date.now()): boolean {
  const until = c.signed.doc.serveUntil
  const margin = Math.min(renewBeforeMs, Math.max(0, until - c.createdAt) / 3)
  return until - now <= margin
}
