import type { SqliteDb } from '../store/sqlite.ts'
import { applyMigrations } from '../store/migrations.ts'

/** The activity log's own table, under its own migration namespace so that no layer's numbering moves. */
const ACTIVITY_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE activity (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    ts      INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    summary TEXT NOT NULL,
    detail  TEXT
  );
  CREATE INDEX activity_by_time ON activity (ts);
  `
]

export interface ActivityEntry {
  seq: number
  ts: number
  /** A short machine-friendly tag: 'decision', 'lifecycle', 'control', 'serve', … */
  kind: string
  /** One line for a human: what the agent did. */
  summary: string
  /** Why, and anything else worth keeping (shown on the board, never interpreted by the runtime). */
  detail: unknown
}

const MAX_SUMMARY = 500
const MAX_DETAIL_BYTES = 16_384

/**
 * What the agent did and why, in its own words. Any layer may record here (the runtime records
 * lifecycle and owner controls; the agents record their decisions); the board shows it. It lives in
 * the node's database so that the history survives restarts, and it is local: never gossiped.
 */
export class ActivityLog {
  private readonly listeners = new Set<(entry: ActivityEntry) => void>()

  private constructor (private readonly db: SqliteDb) {}

  static async open (db: SqliteDb): Promise<ActivityLog> {
    await applyMigrations(db, 'activity', ACTIVITY_MIGRATIONS, db.path)
    return new ActivityLog(db)
  }

  async record (kind: string, summary: string, detail?: unknown, now = Date.now()): Promise<ActivityEntry> {
    let json = detail === undefined ? null : JSON.stringify(detail)
    // A runaway detail must not bloat the database: keep a marked prefix rather than refuse the entry.
    if (json !== null && json.length > MAX_DETAIL_BYTES) json = JSON.stringify({ truncated: true, prefix: json.slice(0, MAX_DETAIL_BYTES) })
    const text = summary.length > MAX_SUMMARY ? summary.slice(0, MAX_SUMMARY - 1) + '…' : summary
    const { lastID } = await this.db.run('INSERT INTO activity (ts, kind, summary, detail) VALUES (?, ?, ?, ?)', [now, kind, text, json])
    const entry: ActivityEntry = { seq: lastID, ts: now, kind, summary: text, detail: detail === undefined ? null : JSON.parse(json as string) }
    for (const listener of this.listeners) listener(entry)
    return entry
  }

  /** Newest first. */
  async list (opts: { limit?: number, kind?: string, beforeSeq?: number } = {}): Promise<ActivityEntry[]> {
    const where: string[] = []
    const params: unknown[] = []
    if (opts.kind !== undefined) { where.push('kind = ?'); params.push(opts.kind) }
    if (opts.beforeSeq !== undefined) { where.push('seq < ?'); params.push(opts.beforeSeq) }
    params.push(Math.min(opts.limit ?? 100, 1000))
    const rows = await this.db.all<{ seq: number, ts: number, kind: string, summary: string, detail: string | null }>(
      `SELECT * FROM activity ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq DESC LIMIT ?`, params)
    return rows.map((r) => ({ seq: r.seq, ts: r.ts, kind: r.kind, summary: r.summary, detail: r.detail === null ? null : JSON.parse(r.detail) }))
  }

  onRecord (listener: (entry: ActivityEntry) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }
}
