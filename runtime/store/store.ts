import { SqliteDb } from './sqlite.ts'
import { MIGRATIONS, applyMigrations } from './migrations.ts'
import type { Envelope, Presence } from '../../protocols/index.ts'

export interface PeerRow {
  peerId: string
  name: string | null
  firstSeen: number
  lastSeen: number
  addrs: string[]
  presence: Presence | null
  presenceAt: number | null
}

export interface MessageRow {
  author: string
  id: string
  kind: string
  ts: number
  receivedAt: number
  outgoing: boolean
  envelope: Envelope
}

export interface ModelFileRow {
  path: string
  sizeBytes: number
  mtimeMs: number
  sha256: string
  architecture: string
  layers: number
}

/** One agent's database: its view of the mesh and everything it has said and heard. */
export class Store {
  private constructor (readonly db: SqliteDb) {}

  static async open (path: string): Promise<Store> {
    const db = await SqliteDb.open(path)
    try {
      await applyMigrations(db, 'runtime', MIGRATIONS, path)
    } catch (err) {
      await db.close()
      throw err
    }
    return new Store(db)
  }

  close (): Promise<void> {
    return this.db.close()
  }

  async getMeta (key: string): Promise<string | undefined> {
    return (await this.db.get<{ value: string }>('SELECT value FROM meta WHERE key = ?', [key]))?.value
  }

  async setMeta (key: string, value: string): Promise<void> {
    await this.db.run('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value', [key, value])
  }

  /** Records that a peer was seen (connected or heard from), keeping its first sighting. */
  async touchPeer (peerId: string, addrs: string[] | undefined, now = Date.now()): Promise<void> {
    await this.db.run(
      `INSERT INTO peers (peer_id, first_seen, last_seen, addrs) VALUES (?, ?, ?, ?)
       ON CONFLICT(peer_id) DO UPDATE SET last_seen = excluded.last_seen,
         addrs = CASE WHEN ? THEN excluded.addrs ELSE peers.addrs END`,
      [peerId, now, now, JSON.stringify(addrs ?? []), addrs !== undefined && addrs.length > 0 ? 1 : 0]
    )
  }

  async recordPresence (peerId: string, presence: Presence, now = Date.now()): Promise<void> {
    await this.db.run(
      `INSERT INTO peers (peer_id, name, first_seen, last_seen, presence, presence_at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT(peer_id) DO UPDATE SET name = excluded.name, last_seen = excluded.last_seen,
         presence = excluded.presence, presence_at = excluded.presence_at`,
      [peerId, presence.name, now, now, JSON.stringify(presence), now]
    )
  }

  async listPeers (): Promise<PeerRow[]> {
    const rows = await this.db.all<Record<string, unknown>>('SELECT * FROM peers ORDER BY last_seen DESC')
    return rows.map((r) => ({
      peerId: r.peer_id as string,
      name: r.name as string | null,
      firstSeen: r.first_seen as number,
      lastSeen: r.last_seen as number,
      addrs: JSON.parse(r.addrs as string) as string[],
      presence: r.presence === null ? null : JSON.parse(r.presence as string) as Presence,
      presenceAt: r.presence_at as number | null
    }))
  }

  /** Stores an accepted envelope; a duplicate (same author and id) is ignored, never stored twice. */
  async saveMessage (env: Envelope, outgoing: boolean, now = Date.now()): Promise<boolean> {
    const { changes } = await this.db.run(
      `INSERT INTO messages (author, id, kind, ts, received_at, outgoing, envelope) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(author, id) DO NOTHING`,
      [env.from, env.id, env.kind, env.ts, now, outgoing ? 1 : 0, JSON.stringify(env)]
    )
    return changes === 1
  }

  async listMessages (opts: { kind?: string, author?: string, limit?: number } = {}): Promise<MessageRow[]> {
    const where: string[] = []
    const params: unknown[] = []
    if (opts.kind !== undefined) { where.push('kind = ?'); params.push(opts.kind) }
    if (opts.author !== undefined) { where.push('author = ?'); params.push(opts.author) }
    params.push(opts.limit ?? 1000)
    const rows = await this.db.all<Record<string, unknown>>(
      `SELECT * FROM messages ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY received_at, rowid LIMIT ?`,
      params
    )
    return rows.map((r) => ({
      author: r.author as string,
      id: r.id as string,
      kind: r.kind as string,
      ts: r.ts as number,
      receivedAt: r.received_at as number,
      outgoing: r.outgoing === 1,
      envelope: JSON.parse(r.envelope as string) as Envelope
    }))
  }

  async countMessages (): Promise<number> {
    return (await this.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM messages'))?.n ?? 0
  }

  async getModelFile (path: string): Promise<ModelFileRow | undefined> {
    const r = await this.db.get<Record<string, unknown>>('SELECT * FROM model_files WHERE path = ?', [path])
    if (r === undefined) return undefined
    return {
      path: r.path as string,
      sizeBytes: r.size_bytes as number,
      mtimeMs: r.mtime_ms as number,
      sha256: r.sha256 as string,
      architecture: r.architecture as string,
      layers: r.layers as number
    }
  }

  async putModelFile (row: ModelFileRow): Promise<void> {
    await this.db.run(
      `INSERT INTO model_files (path, size_bytes, mtime_ms, sha256, architecture, layers) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT(path) DO UPDATE SET size_bytes = excluded.size_bytes, mtime_ms = excluded.mtime_ms,
         sha256 = excluded.sha256, architecture = excluded.architecture, layers = excluded.layers`,
      [row.path, row.sizeBytes, row.mtimeMs, row.sha256, row.architecture, row.layers]
    )
  }
}
