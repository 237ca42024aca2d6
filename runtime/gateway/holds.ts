import type { SqliteDb } from '../store/sqlite.ts'
import type { HeadBook } from '../ledger/head-book.ts'
import { insufficientCredit } from './errors.ts'

/**
 * The credit a node's requests in flight have reserved, per API key, and the one queue that orders
 * reserving against recording-and-releasing. A key's balance lives in the node's database, so its
 * holds must too live once per database: two gateways (or two models) with holds of their own would
 * each see the whole balance, and a key funded for 3 requests got 6 answers.
 */
export class HoldBook {
  private readonly holds = new Map<string, number>()
  private accounting: Promise<unknown> = Promise.resolve()

  /** Runs fn after every accounting step queued before it (reservations, records, releases). */
  async serially<T> (fn: () => Promise<T>): Promise<T> {
    const run = this.accounting.then(fn)
    this.accounting = run.catch(() => {})
    return await run
  }

  /**
   * Reserves credit for a request, or refuses it with 402. Call it inside serially(): otherwise a request
   * finishing between our read of the owed usage and our read of the holds would be counted in
   * neither, and two requests could spend the same credit.
   */
  async hold (book: HeadBook, keyId: string, amount: number): Promise<void> {
    const { balance, pending } = await book.funds(keyId)
    const available = balance - pending - this.held(keyId)
    if (available < amount) {
      throw insufficientCredit(`this request may cost up to ${amount} credits; key ${keyId} has ${Math.max(0, available)} available (balance ${balance}, ${pending} owed for unsettled usage)`)
    }
    this.holds.set(keyId, this.held(keyId) + amount)
  }

  release (keyId: string, amount: number): void {
    const left = this.held(keyId) - amount
    if (left > 0) this.holds.set(keyId, left)
    else this.holds.delete(keyId)
  }

  held (keyId: string): number {
    return this.holds.get(keyId) ?? 0
  }
}

const byDb = new WeakMap<SqliteDb, HoldBook>()

/** The hold book of the node whose database this is: every gateway on that database shares it. */
export function holdBookFor (db: SqliteDb): HoldBook {
  let book = byDb.get(db)
  if (book === undefined) {
    book = new HoldBook()
    byDb.set(db, book)
  }
  return book
}
