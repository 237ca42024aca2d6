import type { Queryable } from '../../runtime/store/sqlite.ts'
import type { Store } from '../../runtime/store/store.ts'
import { contractId, verifyContract, type Cfp, type ContractDoc, type SignedContract, type Terms } from '../../protocols/index.ts'

/**
 * The market's memory in the agent's database: open negotiations, the state of each alternating-offers
 * thread, and signed contracts. Everything a restart needs to pick a negotiation up where it stopped
 * lives here (the dialogue itself is in the runtime's `messages` table).
 *
 * Tables are created by the agents layer's migrations (namespace 'agents'), which include this SQL.
 */
export const MARKET_TABLES_SQL = `
  CREATE TABLE market_negotiations (
    cfp_id      TEXT PRIMARY KEY,
    role        TEXT NOT NULL CHECK (role IN ('head', 'worker')),
    model       TEXT NOT NULL,
    head        TEXT NOT NULL,
    cfp         TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
  );
  CREATE TABLE market_threads (
    cfp_id      TEXT NOT NULL,
    peer        TEXT NOT NULL,
    status      TEXT NOT NULL,
    terms       TEXT NOT NULL,
    terms_from  TEXT NOT NULL,
    rounds      INTEGER NOT NULL DEFAULT 0,
    acceptance  TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (cfp_id, peer)
  );
  ALTER TABLE contracts ADD COLUMN cfp_id TEXT;
  CREATE INDEX contracts_by_head ON contracts (head, model_sha256, status);
`

export type Role = 'head' | 'worker'
export type NegotiationStatus = 'open' | 'choosing' | 'closed'
/** proposed/countered: terms on the table; accepted: one side signed; contracted: both did. */
export type ThreadStatus = 'proposed' | 'countered' | 'accepted' | 'contracted' | 'rejected' | 'expired'

export interface Negotiation {
  cfpId: string
  role: Role
  model: string
  head: string
  cfp: Cfp
  status: NegotiationStatus
  createdAt: number
  updatedAt: number
}

export interface Acceptance {
  by: string
  contract: ContractDoc
  sig: string
}

export interface Thread {
  cfpId: string
  /** The counterpart: the worker for a head, the head for a worker. */
  peer: string
  status: ThreadStatus
  /** The terms currently on the table and who put them there. */
  terms: Terms
  termsFrom: string
  /** Counter-offers exchanged so far. */
  rounds: number
  acceptance?: Acceptance
  updatedAt: number
}

export interface StoredContract {
  id: string
  cfpId: string
  signed: SignedContract
  status: string
  createdAt: number
}

export class NegotiationBook {
  constructor (private readonly store: Store) {}

  private get db (): Queryable {
    return this.store.db
  }

  async openNegotiation (n: Omit<Negotiation, 'createdAt' | 'updatedAt'>, now = Date.now()): Promise<void> {
    await this.db.run(
      `INSERT INTO market_negotiations (cfp_id, role, model, head, cfp, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(cfp_id) DO NOTHING`,
      [n.cfpId, n.role, n.model, n.head, JSON.stringify(n.cfp), n.status, now, now]
    )
  }

  async setNegotiationStatus (cfpId: string, status: NegotiationStatus, now = Date.now()): Promise<void> {
    await this.db.run('UPDATE market_negotiations SET status = ?, updated_at = ? WHERE cfp_id = ?', [status, now, cfpId])
  }

  async negotiation (cfpId: string): Promise<Negotiation | undefined> {
    const r = await this.db.get<Record<string, unknown>>('SELECT * FROM market_negotiations WHERE cfp_id = ?', [cfpId])
    return r === undefined ? undefined : negotiationFromRow(r)
  }

  async negotiations (q: { role?: Role, status?: NegotiationStatus[], model?: string } = {}): Promise<Negotiation[]> {
    const where: string[] = []
    const params: unknown[] = []
    if (q.role !== undefined) { where.push('role = ?'); params.push(q.role) }
    if (q.model !== undefined) { where.push('model = ?'); params.push(q.model) }
    if (q.status !== undefined) { where.push(`status IN (${q.status.map(() => '?').join(', ')})`); params.push(...q.status) }
    const rows = await this.db.all<Record<string, unknown>>(
      `SELECT * FROM market_negotiations ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY created_at`, params)
    return rows.map(negotiationFromRow)
  }

  async putThread (t: Omit<Thread, 'updatedAt'>, now = Date.now()): Promise<void> {
    await this.db.run(
      `INSERT INTO market_threads (cfp_id, peer, status, terms, terms_from, rounds, acceptance, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(cfp_id, peer) DO UPDATE SET status = excluded.status, terms = excluded.terms, terms_from = excluded.terms_from,
         rounds = excluded.rounds, acceptance = excluded.acceptance, updated_at = excluded.updated_at`,
      [t.cfpId, t.peer, t.status, JSON.stringify(t.terms), t.termsFrom, t.rounds, t.acceptance === undefined ? null : JSON.stringify(t.acceptance), now]
    )
  }

  async thread (cfpId: string, peer: string): Promise<Thread | undefined> {
    const r = await this.db.get<Record<string, unknown>>('SELECT * FROM market_threads WHERE cfp_id = ? AND peer = ?', [cfpId, peer])
    return r === undefined ? undefined : threadFromRow(r)
  }

  async threads (cfpId: string): Promise<Thread[]> {
    const rows = await this.db.all<Record<string, unknown>>('SELECT * FROM market_threads WHERE cfp_id = ? ORDER BY updated_at', [cfpId])
    return rows.map(threadFromRow)
  }

  /** Threads of ours (as a worker) that hold or are about to hold memory: accepted or contracted. */
  async committedThreads (): Promise<Thread[]> {
    const rows = await this.db.all<Record<string, unknown>>(
      `SELECT t.* FROM market_threads t JOIN market_negotiations n ON n.cfp_id = t.cfp_id
       WHERE n.role = 'worker' AND t.status IN ('accepted', 'contracted')`)
    return rows.map(threadFromRow)
  }

  /**
   * Stores a contract both parties signed, in the runtime's `contracts` table that the engine reads.
   * Verifies the signatures first: a row there grants access to our machine.
   */
  async saveContract (signed: SignedContract, now = Date.now()): Promise<string> {
    const check = await verifyContract(signed)
    if (!check.ok) throw new Error(`refusing to store contract for ${signed.doc.cfpId}: ${check.reason}`)
    const { doc } = signed
    const id = contractId(doc)
    await this.db.run(
      `INSERT INTO contracts (id, model_sha256, head, worker, layer_start, layer_end, price, expires_at, status, document, created_at, cfp_id)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?) ON CONFLICT(id) DO NOTHING`,
      [id, doc.model, doc.head, doc.worker, doc.start, doc.end, doc.price, doc.serveUntil, JSON.stringify(signed), now, doc.cfpId]
    )
    return id
  }

  /**
   * Contracts whose term is over end: status `ended`, and their threads leave `contracted`, so the
   * worker's memory and deal slot are free again. Returns the contracts that ended now.
   */
  async endLapsedContracts (now = Date.now()): Promise<StoredContract[]> {
    // Every agent runs this each housekeeping round: let sqlite find the few lapsed ones.
    const lapsed = await this.contracts({ status: 'active', lapsedBy: now })
    for (const c of lapsed) await this.closeContract(c, 'ended', now)
    return lapsed
  }

  /**
   * Ends one active contract early ('broken': a party failed or left; 'ended': a party closed it), and
   * moves its thread out of `contracted` as a lapse does, so a worker's memory and deal slot are free.
   * Returns the contract when it was active until now, undefined when it was not (nothing changes).
   */
  async endContract (id: string, status: 'broken' | 'ended', now = Date.now()): Promise<StoredContract | undefined> {
    const [c] = await this.contracts({ id, status: 'active' })
    if (c === undefined) return undefined
    await this.closeContract(c, status, now)
    return c
  }

  /** One active contract stops binding: its thread leaves `contracted`, then the contract leaves `active`. */
  private async closeContract (c: StoredContract, status: 'broken' | 'ended', now: number): Promise<void> {
    // Threads first: interrupted between the two, the contract is still active and the next sweep redoes both.
    await this.db.run("UPDATE market_threads SET status = 'expired', updated_at = ? WHERE cfp_id = ? AND peer IN (?, ?) AND status = 'contracted'",
      [now, c.cfpId, c.signed.doc.head, c.signed.doc.worker])
    await this.db.run("UPDATE contracts SET status = ? WHERE id = ? AND status = 'active'", [status, c.id])
  }

  async setContractStatus (id: string, status: 'active' | 'broken' | 'ended'): Promise<void> {
    await this.db.run('UPDATE contracts SET status = ? WHERE id = ?', [status, id])
  }

  /** Contracts matching every given field; `lapsedBy`: only those whose term ended by then. */
  async contracts (q: { id?: string, model?: string, head?: string, worker?: string, status?: string, cfpId?: string, lapsedBy?: number } = {}): Promise<StoredContract[]> {
    const where: string[] = []
    const params: unknown[] = []
    if (q.id !== undefined) { where.push('id = ?'); params.push(q.id) }
    if (q.model !== undefined) { where.push('model_sha256 = ?'); params.push(q.model) }
    if (q.head !== undefined) { where.push('head = ?'); params.push(q.head) }
    if (q.worker !== undefined) { where.push('worker = ?'); params.push(q.worker) }
    if (q.status !== undefined) { where.push('status = ?'); params.push(q.status) }
    if (q.cfpId !== undefined) { where.push('cfp_id = ?'); params.push(q.cfpId) }
    if (q.lapsedBy !== undefined) { where.push('expires_at <= ?'); params.push(q.lapsedBy) }
    const rows = await this.db.all<Record<string, unknown>>(
      `SELECT id, cfp_id, document, status, created_at FROM contracts ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY layer_start, created_at`, params)
    return rows.map((r) => ({
      id: r.id as string,
      cfpId: r.cfp_id as string,
      signed: JSON.parse(r.document as string) as SignedContract,
      status: r.status as string,
      createdAt: r.created_at as number
    }))
  }
}

function negotiationFromRow (r: Record<string, unknown>): Negotiation {
  return {
    cfpId: r.cfp_id as string,
    role: r.role as Role,
    model: r.model as string,
    head: r.head as string,
    cfp: JSON.parse(r.cfp as string) as Cfp,
    status: r.status as NegotiationStatus,
    createdAt: r.created_at as number,
    updatedAt: r.updated_at as number
  }
}

function threadFromRow (r: Record<string, unknown>): Thread {
  return {
    cfpId: r.cfp_id as string,
    peer: r.peer as string,
    status: r.status as ThreadStatus,
    terms: JSON.parse(r.terms as string) as Terms,
    termsFrom: r.terms_from as string,
    rounds: r.rounds as number,
    acceptance: r.acceptance === null ? undefined : JSON.parse(r.acceptance as string) as Acceptance,
    updatedAt: r.updated_at as number
  }
}
