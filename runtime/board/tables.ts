import type { SqliteDb } from '../store/sqlite.ts'

export interface TableDump {
  name: string
  columns: string[]
  rows: unknown[][]
  /** Rows in the table or view, which may be more than shown. */
  total: number
}

const IDENT = /^[A-Za-z_][A-Za-z0-9_]*$/

/** Tables and views of the database whose names match a LIKE pattern. */
export async function listRelations (db: SqliteDb, like: string): Promise<string[]> {
  const rows = await db.all<{ name: string }>("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name LIKE ? ESCAPE '\\' ORDER BY name", [like])
  return rows.map((r) => r.name).filter((n) => IDENT.test(n))
}

export async function relationExists (db: SqliteDb, name: string): Promise<boolean> {
  return (await db.get("SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND name = ?", [name])) !== undefined
}

/**
 * Any table or view, generically: its columns and its latest rows. Lets the board show what other
 * layers keep (governance, gateway) without importing their code or depending on their schema.
 */
export async function dumpRelation (db: SqliteDb, name: string, limit = 100): Promise<TableDump> {
  if (!IDENT.test(name)) throw new Error(`not a table name: ${name}`)
  const rows = await db.all<Record<string, unknown>>(`SELECT * FROM "${name}" ORDER BY rowid DESC LIMIT ?`, [limit])
    .catch(async () => await db.all<Record<string, unknown>>(`SELECT * FROM "${name}" LIMIT ?`, [limit])) // views have no rowid
  const info = await db.all<{ name: string }>(`PRAGMA table_info("${name}")`)
  const columns = info.map((c) => c.name)
  const total = (await db.get<{ n: number }>(`SELECT COUNT(*) AS n FROM "${name}"`))?.n ?? 0
  return { name, columns, rows: rows.map((r) => columns.map((c) => summarise(r[c]))), total }
}

/** Long cells (signed envelopes, documents) are cut: the board is for reading, not for auditing bytes. */
function summarise (value: unknown): unknown {
  if (typeof value === 'string' && value.length > 240) return value.slice(0, 237) + '…'
  if (value instanceof Buffer) return `<${value.length} bytes>`
  return value
}
