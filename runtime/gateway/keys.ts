import { createHash, randomBytes } from 'node:crypto'
import type { SqliteDb } from '../store/sqlite.ts'
import { EXTERNAL_TOPUP, appendTransfers, balanceOf, userAccount } from '../ledger/ledger.ts'

/**
 * API keys of outside users. The secret (`cm_` + 32 random bytes, base64url) is shown once at creation;
 * the database keeps only its SHA-256, so a leaked database does not leak usable keys. A key's
 * balance is its `user:<id>` ledger account; top-ups come from `external:topup`.
 */
export interface ApiKey {
  id: string
  label: string
  ratePerMin: number
  burst: number
  revoked: boolean
  createdAt: number
}

export interface ApiKeyWithBalance extends ApiKey {
  balance: number
}

export const DEFAULT_RATE_PER_MIN = 600
export const KEY_PREFIX = 'cm_'

export function hashSecret (secret: string): string {
  return createHash('sha256').update(secret, 'utf8').digest('hex')
}

function fromRow (r: Record<string, unknown>): ApiKey {
  return {
    id: r.id as string,
    label: r.label as string,
    ratePerMin: r.rate_per_min as number,
    burst: r.burst as number,
    revoked: r.revoked === 1,
    createdAt: r.created_at as number
  }
}

export interface CreateKeyOptions {
  label?: string
  /** Initial top-up in credits. */
  credits?: number
  ratePerMin?: number
  /** Requests allowed at once before the rate applies; default: a tenth of a minute's worth, at least 1. */
  burst?: number
}

export async function createKey (db: SqliteDb, opts: CreateKeyOptions = {}, now = Date.now()): Promise<{ key: ApiKey, secret: string }> {
  const secret = KEY_PREFIX + randomBytes(32).toString('base64url')
  const id = `key_${randomBytes(6).toString('hex')}`
  const ratePerMin = opts.ratePerMin ?? DEFAULT_RATE_PER_MIN
  if (!(ratePerMin > 0)) throw new RangeError(`rate must be positive, got ${ratePerMin}`)
  const burst = opts.burst ?? Math.max(1, Math.ceil(ratePerMin / 10))
  const credits = opts.credits ?? 0
  if (!Number.isSafeInteger(credits) || credits < 0) throw new RangeError(`credits must be a whole number ≥ 0, got ${credits}`)
  await db.transaction(async (tx) => {
    await tx.run('INSERT INTO api_keys (id, hash, label, rate_per_min, burst, revoked, created_at) VALUES (?, ?, ?, ?, ?, 0, ?)',
      [id, hashSecret(secret), opts.label ?? '', ratePerMin, burst, now])
    if (credits > 0) await appendTransfers(tx, [{ debit: EXTERNAL_TOPUP, credit: userAccount(id), amount: credits, memo: `top-up ${id}` }], now)
  })
  return { key: { id, label: opts.label ?? '', ratePerMin, burst, revoked: false, createdAt: now }, secret }
}

/** The key a secret belongs to, revoked or not; undefined for unknown secrets. */
export async function findKeyBySecret (db: SqliteDb, secret: string): Promise<ApiKey | undefined> {
  if (!secret.startsWith(KEY_PREFIX)) return undefined
  const r = await db.get<Record<string, unknown>>('SELECT * FROM api_keys WHERE hash = ?', [hashSecret(secret)])
  return r === undefined ? undefined : fromRow(r)
}

export async function getKey (db: SqliteDb, id: string): Promise<ApiKey | undefined> {
  const r = await db.get<Record<string, unknown>>('SELECT * FROM api_keys WHERE id = ?', [id])
  return r === undefined ? undefined : fromRow(r)
}

export async function listKeys (db: SqliteDb): Promise<ApiKeyWithBalance[]> {
  const rows = await db.all<Record<string, unknown>>('SELECT * FROM api_keys ORDER BY created_at, id')
  const out: ApiKeyWithBalance[] = []
  for (const r of rows) {
    const key = fromRow(r)
    out.push({ ...key, balance: await balanceOf(db, userAccount(key.id)) })
  }
  return out
}

export async function revokeKey (db: SqliteDb, id: string): Promise<void> {
  const { changes } = await db.run('UPDATE api_keys SET revoked = 1 WHERE id = ?', [id])
  if (changes === 0) throw new Error(`no API key ${id}`)
}

/** Adds outside credit to a key; returns its new balance. */
export async function topUp (db: SqliteDb, id: string, credits: number, now = Date.now()): Promise<number> {
  if (!Number.isSafeInteger(credits) || credits <= 0) throw new RangeError(`top-up must be a whole number of credits > 0, got ${credits}`)
  return await db.transaction(async (tx) => {
    const key = await tx.get('SELECT id FROM api_keys WHERE id = ?', [id])
    if (key === undefined) throw new Error(`no API key ${id}`)
    await appendTransfers(tx, [{ debit: EXTERNAL_TOPUP, credit: userAccount(id), amount: credits, memo: `top-up ${id}` }], now)
    return await balanceOf(tx, userAccount(id))
  })
}
