import sqlite3 from 'sqlite3'

export type Params = Record<string, unknown> | unknown[]

/** The statements one transaction may run; the same shape as the database itself. */
export interface Queryable {
  run (sql: string, params?: Params): Promise<{ changes: number, lastID: number }>
  get<T = Record<string, unknown>> (sql: string, params?: Params): Promise<T | undefined>
  all<T = Record<string, unknown>> (sql: string, params?: Params): Promise<T[]>
  exec (sql: string): Promise<void>
}

/**
 * A promise wrapper over one sqlite3 connection. sqlite3 runs statements in order on its own thread,
 * but a transaction spans several awaits: without a queue, a statement from another task could slip
 * into someone else's open transaction (and be rolled back with it). So every operation, and every
 * transaction as a whole, takes its turn in one queue.
 */
export class SqliteDb implements Queryable {
  private queue: Promise<unknown> = Promise.resolve()
  private closed = false

  private constructor (private readonly db: sqlite3.Database, readonly path: string) {}

  static async open (path: string): Promise<SqliteDb> {
    const db = await new Promise<sqlite3.Database>((resolve, reject) => {
      const handle = new sqlite3.Database(path, (err) => err ? reject(new Error(`cannot open database ${path}: ${err.message}`)) : resolve(handle))
    })
    const wrapped = new SqliteDb(db, path)
    // WAL: readers (the CLI, the board) never block the node's writer. synchronous=NORMAL keeps every
    // commit atomic and durable across a process crash; only a power cut may lose the last commits,
    // and an fsync per gossip message (FULL) tripled gossip latency in sims/bench-mesh.
    await wrapped.exec('PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;')
    return wrapped
  }

  run (sql: string, params: Params = []): Promise<{ changes: number, lastID: number }> {
    return this.enqueue(() => this.rawRun(sql, params))
  }

  get<T = Record<string, unknown>> (sql: string, params: Params = []): Promise<T | undefined> {
    return this.enqueue(() => this.rawGet<T>(sql, params))
  }

  all<T = Record<string, unknown>> (sql: string, params: Params = []): Promise<T[]> {
    return this.enqueue(() => this.rawAll<T>(sql, params))
  }

  exec (sql: string): Promise<void> {
    return this.enqueue(() => this.rawExec(sql))
  }

  /** Runs fn inside BEGIN IMMEDIATE … COMMIT; any throw rolls everything back. */
  transaction<T> (fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.enqueue(async () => {
      await this.rawExec('BEGIN IMMEDIATE')
      const tx: Queryable = {
        run: (sql, params = []) => this.rawRun(sql, params),
        get: (sql, params = []) => this.rawGet(sql, params),
        all: (sql, params = []) => this.rawAll(sql, params),
        exec: (sql) => this.rawExec(sql)
      }
      try {
        const result = await fn(tx)
        await this.rawExec('COMMIT')
        return result
      } catch (err) {
        await this.rawExec('ROLLBACK').catch(() => {})
        throw err
      }
    })
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.enqueue(() => new Promise<void>((resolve, reject) => this.db.close((err) => err ? reject(err) : resolve())), true)
  }

  private enqueue<T> (op: () => Promise<T>, evenIfClosed = false): Promise<T> {
    if (this.closed && !evenIfClosed) return Promise.reject(new Error(`database ${this.path} is closed`))
    const next = this.queue.then(op, op)
    this.queue = next.catch(() => {})
    return next
  }

  private rawRun (sql: string, params: Params): Promise<{ changes: number, lastID: number }> {
    return new Promise((resolve, reject) => {
      this.db.run(sql, params, function (err) {
        if (err) reject(withSql(err, sql))
        else resolve({ changes: this.changes, lastID: this.lastID })
      })
    })
  }

  private rawGet<T> (sql: string, params: Params): Promise<T | undefined> {
    return new Promise((resolve, reject) => {
      this.db.get(sql, params, (err, row) => err ? reject(withSql(err, sql)) : resolve(row as T | undefined))
    })
  }

  private rawAll<T> (sql: string, params: Params): Promise<T[]> {
    return new Promise((resolve, reject) => {
      this.db.all(sql, params, (err, rows) => err ? reject(withSql(err, sql)) : resolve(rows as T[]))
    })
  }

  private rawExec (sql: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.db.exec(sql, (err) => err ? reject(withSql(err, sql)) : resolve())
    })
  }
}

function withSql (err: Error, sql: string): Error {
  const short = sql.replace(/\s+/g, ' ').trim().slice(0, 120)
  return new Error(`${err.message} (in: ${short})`, { cause: err })
}
