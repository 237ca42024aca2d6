import type { SqliteDb } from '../store/sqlite.ts'
import { findKeyBySecret, type ApiKey } from './keys.ts'

/** How long a key read from the database is trusted: a revocation (by the CLI, another process) applies within this. */
export const KEY_TTL_MS = 1000
/** Secrets remembered at most; past it the cache starts over (a flood of keys costs reads, not memory). */
const MAX_KEYS = 10_000

/**
 * The API keys of recent requests, by secret, so that a client sending many requests costs one
 * database read a second instead of one per request (the read queued behind the node's writes and
 * was a good part of the gateway's time to first token). Only keys that exist are kept: an unknown
 * secret is looked up every time.
 */
export class KeyCache {
  private readonly keys = new Map<string, { key: ApiKey, at: number }>()

  constructor (private readonly db: SqliteDb, private readonly ttlMs = KEY_TTL_MS) {}

  async find (secret: string, now = Date.now()): Promise<ApiKey | undefined> {
    const hit = this.keys.get(secret)
    if (hit !== undefined && now - hit.at <= this.ttlMs) return hit.key
    const key = await findKeyBySecret(this.db, secret)
    if (key === undefined) {
      this.keys.delete(secret)
      return undefined
    }
    if (this.keys.size >= MAX_KEYS) this.keys.clear()
    this.keys.set(secret, { key, at: now })
    return key
  }
}
