import type { Receipt } from '../../protocols/receipts.ts'

/**
 * What the receipt signer asks of whatever serves a contract: how many token rows this node computed
 * under it by its own count (the star's rpc meter, the chain's stage meter), and when it last counted.
 * Undefined: nothing here served the contract (yet).
 */
export interface WorkMeter {
  counted (contract: string): { rows: number, lastAt: number } | undefined
}

/**
 * How far below the worker's own count a head's claim may fall and still be signed: 32 rows plus 2 %.
 * An honest head claims prompt + completion tokens, and the worker computes (uncached prompt) +
 * completion − 1 rows (measured on a real pipeline), so an honest claim is at or above the count:
 * prompt caching only raises it. What an honest head leaves unbilled is small and bounded: the
 * pipeline's warmup (2 rows at start), a spot check's replay on its own pipeline (≤ 16 generated rows,
 * its prompt cached), a client hanging up a few tokens before the server notices. 32 rows cover those;
 * 2 % covers the rest of what one count does not see of the other (a request cut between two meter
 * readings). A head that under-claims by more is refused; within it, it can shave at most this much.
 */
export const AUDIT_SLACK_ROWS = 32
export const AUDIT_SLACK_SHARE = 0.02
export const tolerance = (own: number): number => AUDIT_SLACK_ROWS + Math.ceil(AUDIT_SLACK_SHARE * own)

/** Receipt slots the worker numbers itself, so that they never meet the head's (which count from 1). */
export const WORKER_SEQ_BASE = 2 ** 30

export type AuditDecision =
  | { kind: 'sign', receipts: Receipt[] }
  | { kind: 'refuse', receipts: Receipt[], claimed: number, counted: number }
  | { kind: 'propose', contract: string, tokens: number }

interface Books {
  /** Meter reading at which the books last balanced (claims signed or refused against it). */
  base: number
  held: Receipt[]
  heldSince: number
}

/**
 * The worker's audit of its heads' claims, per contract, on totals: the worker cannot tell which rows
 * belong to which request (the graphs carry no request ids), so it compares the tokens of the
 * proposals it holds with the rows its meter counted since the books last balanced. A proposal whose
 * claim covers the count (less the tolerance) is signed at once, with any others held for the same
 * contract, and the books balance at the current reading (rows counted above a claim are forgiven,
 * rows claimed above the count are the head's business with its users). A claim that falls short is
 * held, not refused: another request may still be running, its proposal not yet sent. Once the
 * meter has been quiet for `quietMs` (nothing in flight) and the proposal has waited as long, the
 * shortfall is final and every held proposal of the contract is refused with both counts.
 * Rows counted with no proposal at all, quiet for `quietMs` twice over (the head had time to
 * propose), become a receipt the worker proposes itself.
 */
export class ReceiptAudit {
  private readonly books = new Map<string, Books>()

  constructor (private readonly meter: WorkMeter, private readonly quietMs = 5000) {}

  /** A proposal arrived (re-sent ones are merged by slot); returns what to do now. */
  offer (p: Receipt, now = Date.now()): AuditDecision | undefined {
    const b = this.booksOf(p.contract)
    if (!b.held.some((h) => h.seq === p.seq)) {
      if (b.held.length === 0) b.heldSince = now
      b.held.push(p)
    }
    return this.decide(p.contract, b, now)
  }

  /** Looks at every contract again (called on a timer): held claims that turned final, unbilled rows. */
  review (contracts: Iterable<string>, now = Date.now()): AuditDecision[] {
    const out: AuditDecision[] = []
    for (const c of contracts) {
      const b = this.booksOf(c)
      const d = b.held.length > 0 ? this.decide(c, b, now) : this.unbilled(c, b, now)
      if (d !== undefined) out.push(d)
    }
    return out
  }

  /** The worker's own proposal for `tokens` rows was made: the books balance at the current reading. */
  proposed (contract: string, tokens: number): void {
    this.booksOf(contract).base += tokens
  }

  /** Rows counted and not yet balanced against a claim. */
  owed (contract: string): number {
    return (this.meter.counted(contract)?.rows ?? 0) - this.booksOf(contract).base
  }

  private booksOf (contract: string): Books {
    let b = this.books.get(contract)
    if (b === undefined) {
      b = { base: 0, held: [], heldSince: 0 }
      this.books.set(contract, b)
    }
    return b
  }

  private decide (contract: string, b: Books, now: number): AuditDecision | undefined {
    const m = this.meter.counted(contract) ?? { rows: 0, lastAt: 0 }
    const own = m.rows - b.base
    const claimed = b.held.reduce((n, r) => n + r.tokens, 0)
    const receipts = b.held.splice(0)
    if (claimed >= own - tolerance(own)) {
      b.base = m.rows
      return { kind: 'sign', receipts }
    }
    if (now - m.lastAt >= this.quietMs && now - b.heldSince >= this.quietMs) {
      b.base = m.rows
      return { kind: 'refuse', receipts, claimed, counted: own }
    }
    b.held.push(...receipts)
    return undefined
  }

  private unbilled (contract: string, b: Books, now: number): AuditDecision | undefined {
    const m = this.meter.counted(contract)
    if (m === undefined) return undefined
    const own = m.rows - b.base
    // Only what the tolerance would not forgive, and only once the head had time to propose it.
    if (own <= tolerance(own) || now - m.lastAt < 2 * this.quietMs) return undefined
    return { kind: 'propose', contract, tokens: own }
  }
}
