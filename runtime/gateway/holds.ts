import type { SqliteDb } from '../store/sqlite.ts'
import type { HeadBook, RecordedUsage, UsageInput } from '../ledger/head-book.ts'
import { receiptAmount } from '../../protocols/receipts.ts'
import { insufficientCredit } from './errors.ts'
import { Grouper } from './group.ts'

/** How long a key's funds read from the database are used before they are read again. */
export const FUNDS_TTL_MS = 1000

interface Served { book: HeadBook, usage: UsageInput, reserved: number }

/**
 * A key's funds as last read from the database, plus what this node recorded for it since. Only the
 * node's own records make a key owe more, and they are added here as they commit; everything else
 * that changes funds (settlement, top-ups, voided receipts) leaves the key more to spend, never less,
 * so between reads these figures can only understate what is available.
 */
interface Funds { balance: number, pending: number, at: number }

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

  private readonly funds = new Map<string, Funds>()
  /**
   * Records are grouped (Grouper): every request that finishes while the queue is busy rides the next
   * step with the others, so under load one transaction records many requests instead of one each.
   */
  private readonly records = new Grouper<Served, RecordedUsage>(async (step) => { await this.serially(step) }, async (items) => await this.commit(items))

  /**
   * Reserves credit for a request, or refuses it with 402 (insufficient_quota). With the key's funds
   * read less than FUNDS_TTL_MS ago and enough available, this decides at once, without a database
   * read or a turn in the queue (a read per request, queued behind the records, was most of the
   * gateway's added time to first token). Otherwise the funds are read again first, inside serially():
   * a request finishing between our read of the owed usage and the record's release of its hold would
   * be counted in neither, and two requests could spend the same credit.
   */
  async reserve (book: HeadBook, keyId: string, amount: number, now = Date.now()): Promise<void> {
    const known = this.funds.get(keyId)
    if (known !== undefined && now - known.at <= FUNDS_TTL_MS && this.available(keyId, known) >= amount) {
      this.holds.set(keyId, this.held(keyId) + amount)
      return
    }
    await this.serially(async () => {
      const read = await book.funds(keyId)
      const f: Funds = { ...read, at: Date.now() }
      this.funds.set(keyId, f)
      const available = this.available(keyId, f)
      if (available < amount) {
        throw insufficientCredit(`this request may cost up to ${amount} credits; key ${keyId} has ${Math.max(0, available)} available (balance ${f.balance}, ${f.pending} owed for unsettled usage)`)
      }
      this.holds.set(keyId, this.held(keyId) + amount)
    })
  }

  /**
   * Records a served request's usage, then releases its reservation; resolves once the usage is
   * committed. The reservation stays held until then, and in the same step the usage becomes owed, so
   * no decision ever misses the request's credit, however long the group waits for its turn.
   * Rejects (and releases) if the usage could not be written: the request is not billed.
   */
  async record (book: HeadBook, usage: UsageInput, reserved: number): Promise<RecordedUsage> {
    return await this.records.add({ book, usage, reserved })
  }

  private available (keyId: string, f: Funds): number {
    return f.balance - f.pending - this.held(keyId)
  }

  /**
   * One step of records: one transaction per book (a node has one); then, with no await in between,
   * each committed usage's charge is added to what its key owes and every reservation is released.
   */
  private async commit (items: Served[]): Promise<Array<RecordedUsage | Error>> {
    const out: Array<RecordedUsage | Error> = new Array(items.length)
    const byBook = new Map<HeadBook, number[]>()
    for (const [i, it] of items.entries()) byBook.set(it.book, [...(byBook.get(it.book) ?? []), i])
    try {
      for (const [book, indices] of byBook) {
        try {
          const recorded = await book.recordUsages(indices.map((i) => items[i].usage))
          for (const [j, i] of indices.entries()) out[i] = recorded[j]
        } catch (err) {
          const e = new Error(`could not record the usage of ${indices.length} request(s): ${(err as Error).message}`, { cause: err })
          for (const i of indices) out[i] = e
        }
      }
    } finally {
      for (const [i, it] of items.entries()) {
        const rec = out[i]
        const known = this.funds.get(it.usage.keyId)
        // What funds() would now count as owed for it: its fee and its receipts awaiting signature.
        if (rec !== undefined && !(rec instanceof Error) && known !== undefined) {
          known.pending += it.usage.fee + rec.proposals.reduce((sum, p) => sum + receiptAmount(p), 0)
        }
        this.release(it.usage.keyId, it.reserved)
      }
    }
    return out
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
