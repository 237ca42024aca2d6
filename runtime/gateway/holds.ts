import type { SqliteDb } from '../store/sqlite.ts'
import type { HeadBook, RecordedUsage, UsageInput } from '../ledger/head-book.ts'
import { insufficientCredit } from './errors.ts'
import { Grouper } from './group.ts'

interface Reservation { book: HeadBook, keyId: string, amount: number }
interface Served { book: HeadBook, usage: UsageInput, reserved: number }

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
   * Reservations and records are grouped (Grouper): every request that asks while the queue is busy
   * rides the next step with the others, so under load a step costs one read of each key's funds, or
   * one transaction, for many requests instead of one each.
   */
  private readonly reservations = new Grouper<Reservation, undefined>(async (step) => { await this.serially(step) }, async (items) => await this.grant(items))
  private readonly records = new Grouper<Served, RecordedUsage>(async (step) => { await this.serially(step) }, async (items) => await this.commit(items))

  /** Reserves credit for a request, or refuses it with 402 (insufficient_quota). */
  async reserve (book: HeadBook, keyId: string, amount: number): Promise<void> {
    await this.reservations.add({ book, keyId, amount })
  }

  /**
   * Records a served request's usage, then releases its reservation; resolves once the usage is
   * committed. The reservation stays held until then, and the usage is owed from then on, so no read
   * of a key's funds ever misses the request's credit, however long the group waits for its turn.
   * Rejects (and releases) if the usage could not be written: the request is not billed.
   */
  async record (book: HeadBook, usage: UsageInput, reserved: number): Promise<RecordedUsage> {
    return await this.records.add({ book, usage, reserved })
  }

  /**
   * One step of reservations: each key's funds read once, then the requests granted in arrival order.
   * Inside serially(): a request finishing between our read of the owed usage and our read of the holds
   * would be counted in neither, and two requests could spend the same credit.
   */
  private async grant (items: Reservation[]): Promise<Array<undefined | Error>> {
    const funds = new Map<string, { balance: number, pending: number }>()
    const out: Array<undefined | Error> = []
    for (const { book, keyId, amount } of items) {
      let f = funds.get(keyId)
      if (f === undefined) {
        f = await book.funds(keyId)
        funds.set(keyId, f)
      }
      const available = f.balance - f.pending - this.held(keyId)
      if (available < amount) {
        out.push(insufficientCredit(`this request may cost up to ${amount} credits; key ${keyId} has ${Math.max(0, available)} available (balance ${f.balance}, ${f.pending} owed for unsettled usage)`))
        continue
      }
      this.holds.set(keyId, this.held(keyId) + amount)
      out.push(undefined)
    }
    return out
  }

  /** One step of records: one transaction per book (a node has one), then every reservation released. */
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
      for (const it of items) this.release(it.usage.keyId, it.reserved)
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
