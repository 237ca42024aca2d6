import { createHash } from 'node:crypto'
import { canonicalBytes } from '../../protocols/encoding.ts'
import type { Queryable } from '../store/sqlite.ts'

/**
 * The node's books: an append-only, hash-chained, double-entry ledger in the runtime `ledger` table.
 * Every row is one balanced transfer: `amount` leaves the `debit` account and reaches the `credit`
 * account, so the sum of all balances is zero by construction and credit is only ever moved, never
 * made — except out of `external:*` accounts, whose negative balance is exactly what came from outside.
 * Each row's hash covers the previous row's hash and the row's canonical terms, so changing, removing
 * or reordering any past row breaks every hash after it (verifyChain).
 */
export const GENESIS_HASH = '0'.repeat(64)

/** Where outside money enters (API key top-ups); the only account allowed below zero besides mirrors. */
export const EXTERNAL_TOPUP = 'external:topup'
export const NETWORK_FEES = 'network:fees'
export const userAccount = (keyId: string): string => `user:${keyId}`
export const agentAccount = (peerId: string): string => `agent:${peerId}`
/**
 * A node that is not a receipt's head books the payout against `head:<peerId>`: it mirrors what that
 * head owes its workers, without seeing the head's private user accounts.
 */
export const headAccount = (peerId: string): string => `head:${peerId}`

function mayGoNegative (account: string): boolean {
  return account.startsWith('external:') || account.startsWith('head:')
}

export interface Transfer {
  debit: string
  credit: string
  /** Whole credits, > 0. */
  amount: number
  memo: string
  /** What the entry settles (a receipt id, fee:<usage>): unique across the ledger, so never twice. */
  ref?: string
}

export interface LedgerEntry {
  seq: number
  ts: number
  debit: string
  credit: string
  amount: number
  memo: string
  receipt: string | null
  prevHash: string
  hash: string
}

export class InsufficientCredit extends Error {
  constructor (readonly account: string, readonly balance: number, readonly needed: number) {
    super(`account ${account} holds ${balance} credits, ${needed} needed`)
    this.name = 'InsufficientCredit'
  }
}

export function entryHash (prevHash: string, e: Omit<LedgerEntry, 'prevHash' | 'hash'>): string {
  return createHash('sha256')
    .update(prevHash)
    .update(canonicalBytes({ seq: e.seq, ts: e.ts, debit: e.debit, credit: e.credit, amount: e.amount, memo: e.memo, receipt: e.receipt }))
    .digest('hex')
}

/** An account's balance, from the running balances kept beside the ledger. */
export async function balanceOf (q: Queryable, account: string): Promise<number> {
  const row = await q.get<{ balance: number }>('SELECT balance FROM ledger_balances WHERE account = ?', [account])
  return row?.balance ?? 0
}

async function addToBalance (tx: Queryable, account: string, delta: number): Promise<void> {
  await tx.run('INSERT INTO ledger_balances (account, balance) VALUES (?, ?) ON CONFLICT(account) DO UPDATE SET balance = balance + excluded.balance', [account, delta])
}

/**
 * Appends transfers inside the caller's transaction (which must be BEGIN IMMEDIATE, as SqliteDb's are,
 * so that nobody appends between our read of the chain head and our insert). Callers bundle the
 * entries with whatever they settle, so both commit or neither does.
 */
export async function appendTransfers (tx: Queryable, transfers: Transfer[], now = Date.now()): Promise<LedgerEntry[]> {
  if (transfers.length === 0) return []
  const last = await tx.get<{ seq: number, hash: string }>('SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1')
  let seq = last?.seq ?? 0
  let prevHash = last?.hash ?? GENESIS_HASH
  // Net change per account over the whole batch: one balance check and one update per account.
  const deltas = new Map<string, number>()
  for (const t of transfers) {
    if (!Number.isSafeInteger(t.amount) || t.amount <= 0) throw new RangeError(`ledger amounts are positive whole credits, got ${t.amount} (${t.memo})`)
    if (t.debit === t.credit) throw new RangeError(`transfer from ${t.debit} to itself (${t.memo})`)
    deltas.set(t.debit, (deltas.get(t.debit) ?? 0) - t.amount)
    deltas.set(t.credit, (deltas.get(t.credit) ?? 0) + t.amount)
  }
  for (const [account, delta] of deltas) {
    if (delta >= 0 || mayGoNegative(account)) continue
    const balance = await balanceOf(tx, account)
    if (balance + delta < 0) throw new InsufficientCredit(account, balance, -delta)
  }
  const out: LedgerEntry[] = []
  for (const t of transfers) {
    seq++
    const base = { seq, ts: now, debit: t.debit, credit: t.credit, amount: t.amount, memo: t.memo, receipt: t.ref ?? null }
    const hash = entryHash(prevHash, base)
    await tx.run('INSERT INTO ledger (seq, ts, debit, credit, amount, memo, receipt, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      [seq, now, t.debit, t.credit, t.amount, t.memo, base.receipt, prevHash, hash])
    out.push({ ...base, prevHash, hash })
    prevHash = hash
  }
  for (const [account, delta] of deltas) if (delta !== 0) await addToBalance(tx, account, delta)
  return out
}

/** Balances recomputed from the ledger itself (the truth), not from the running balances. */
export async function allBalances (q: Queryable): Promise<Map<string, number>> {
  const rows = await q.all<{ account: string, b: number }>(
    `SELECT account, SUM(delta) AS b FROM (
       SELECT credit AS account, amount AS delta FROM ledger
       UNION ALL SELECT debit AS account, -amount AS delta FROM ledger)
     GROUP BY account ORDER BY account`)
  return new Map(rows.map((r) => [r.account, r.b]))
}

export interface ChainReport {
  ok: boolean
  entries: number
  /** First entry whose link or hash is wrong, with the reason. */
  brokenAt?: { seq: number, reason: string }
}

/** A (seq, hash) the chain held once, as a checkpoint signed by this node and kept by peers. */
export interface ChainAnchor {
  seq: number
  hash: string
  /** Who vouches for it (a witness's peer id, 'file'): named in the report. */
  from?: string
}

/** The chain's last entry: what a checkpoint signs (seq 0 and GENESIS_HASH for an empty chain). */
export async function chainHead (q: Queryable): Promise<{ seq: number, hash: string }> {
  const last = await q.get<{ seq: number, hash: string }>('SELECT seq, hash FROM ledger ORDER BY seq DESC LIMIT 1')
  return last ?? { seq: 0, hash: GENESIS_HASH }
}

/**
 * Recomputes the whole chain; any edited, dropped, inserted or reordered entry is reported, and so is
 * a running balance that no longer matches the entries (brokenAt.seq 0). A consistent chain proves
 * nothing against someone who can write the file (drop the triggers, edit, re-hash every later entry),
 * so each anchor, a checkpoint kept outside the file, must also still be on the chain.
 */
export async function verifyChain (q: Queryable, anchors: readonly ChainAnchor[] = []): Promise<ChainReport> {
  const rows = await q.all<{ seq: number, ts: number, debit: string, credit: string, amount: number, memo: string, receipt: string | null, prev_hash: string, hash: string }>(
    'SELECT * FROM ledger ORDER BY seq')
  let prev = GENESIS_HASH
  let expectSeq = 1
  for (const r of rows) {
    const fail = (reason: string): ChainReport => ({ ok: false, entries: rows.length, brokenAt: { seq: r.seq, reason } })
    if (r.seq !== expectSeq) return fail(`expected seq ${expectSeq}: an entry is missing`)
    if (r.prev_hash !== prev) return fail('prev_hash does not match the previous entry')
    if (!(r.amount > 0)) return fail(`non-positive amount ${r.amount}`)
    const want = entryHash(prev, { seq: r.seq, ts: r.ts, debit: r.debit, credit: r.credit, amount: r.amount, memo: r.memo, receipt: r.receipt })
    if (want !== r.hash) return fail('hash does not match the entry: it was altered')
    prev = r.hash
    expectSeq++
  }
  const hashAt = new Map(rows.map((r) => [r.seq, r.hash]))
  for (const a of [...anchors].sort((x, y) => x.seq - y.seq)) {
    const held = a.seq === 0 ? GENESIS_HASH : hashAt.get(a.seq)
    if (held === a.hash) continue
    const why = held === undefined ? `the chain ends at ${rows.length}: entries were removed` : 'the chain was rewritten at or before it'
    return { ok: false, entries: rows.length, brokenAt: { seq: a.seq, reason: `checkpoint ${a.seq} (${a.hash.slice(0, 12)}…${a.from === undefined ? '' : `, kept by ${a.from}`}) no longer matches: ${why}` } }
  }
  const kept = new Map((await q.all<{ account: string, balance: number }>('SELECT account, balance FROM ledger_balances')).map((r) => [r.account, r.balance]))
  const truth = await allBalances(q)
  for (const account of new Set([...kept.keys(), ...truth.keys()])) {
    if ((kept.get(account) ?? 0) !== (truth.get(account) ?? 0)) {
      return { ok: false, entries: rows.length, brokenAt: { seq: 0, reason: `running balance of ${account} is ${kept.get(account) ?? 0}, the ledger says ${truth.get(account) ?? 0}` } }
    }
  }
  return { ok: true, entries: rows.length }
}

export interface Conservation {
  /** Σ balances of every account that is not external:* or a head:* mirror. */
  held: number
  /** Credit that came in from outside: minus the balance of the external:* accounts. */
  external: number
  /** What head:* mirrors say heads owe (their negative balances). */
  mirrored: number
  /** Σ of every balance; zero in a double-entry ledger. */
  total: number
}

export async function conservation (q: Queryable): Promise<Conservation> {
  let held = 0; let external = 0; let mirrored = 0; let total = 0
  for (const [account, b] of await allBalances(q)) {
    total += b
    if (account.startsWith('external:')) external -= b
    else if (account.startsWith('head:')) mirrored -= b
    else held += b
  }
  return { held, external, mirrored, total }
}
