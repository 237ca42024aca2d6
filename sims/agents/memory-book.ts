import { contractId, verifyContract, type SignedContract } from '../../protocols/index.ts'
import type { Store } from '../../runtime/store/store.ts'
import { NegotiationBook, type Negotiation, type NegotiationStatus, type Role, type StoredContract, type Thread } from '../../skills/market/book.ts'

/**
 * The NegotiationBook with its rows in memory instead of one sqlite database per agent (a thousand
 * sqlite files, and a thread-pool round trip per query, would dominate a run). Same methods, same
 * semantics as the SQL: insert-or-ignore negotiations, upserted threads ordered by update time,
 * contracts verified before they are stored and ordered by first layer, then creation. Rows are
 * handed out as stored objects (the market code never mutates them; it spreads into new ones).
 */
export class MemoryBook extends NegotiationBook {
  private readonly negs = new Map<string, Negotiation>()
  private readonly thr = new Map<string, Map<string, Thread>>()
  private readonly cons = new Map<string, StoredContract & { order: number }>()
  private tick = 0
  /** Called once per contract when it is first stored (both sides store it). */
  onSaved: (id: string, signed: SignedContract) => void = () => {}

  constructor () {
    super(undefined as unknown as Store)
  }

  override async openNegotiation (n: Omit<Negotiation, 'createdAt' | 'updatedAt'>, now = Date.now()): Promise<void> {
    if (this.negs.has(n.cfpId)) return
    this.negs.set(n.cfpId, { ...n, createdAt: now, updatedAt: now })
  }

  override async setNegotiationStatus (cfpId: string, status: NegotiationStatus, now = Date.now()): Promise<void> {
    const n = this.negs.get(cfpId)
    if (n !== undefined) this.negs.set(cfpId, { ...n, status, updatedAt: now })
  }

  override async negotiation (cfpId: string): Promise<Negotiation | undefined> {
    return this.negs.get(cfpId)
  }

  override async negotiations (q: { role?: Role, status?: NegotiationStatus[], model?: string } = {}): Promise<Negotiation[]> {
    const out: Negotiation[] = []
    for (const n of this.negs.values()) {
      if (q.role !== undefined && n.role !== q.role) continue
      if (q.model !== undefined && n.model !== q.model) continue
      if (q.status !== undefined && !q.status.includes(n.status)) continue
      out.push(n)
    }
    // Map order is insertion order, which is creation order (a negotiation is inserted once).
    return out
  }

  override async putThread (t: Omit<Thread, 'updatedAt'>, now = Date.now()): Promise<void> {
    let m = this.thr.get(t.cfpId)
    if (m === undefined) { m = new Map(); this.thr.set(t.cfpId, m) }
    m.delete(t.peer)
    m.set(t.peer, { ...t, updatedAt: now })
  }

  override async thread (cfpId: string, peer: string): Promise<Thread | undefined> {
    return this.thr.get(cfpId)?.get(peer)
  }

  override async threads (cfpId: string): Promise<Thread[]> {
    // Re-inserted on every update, so Map order is update order (the SQL's ORDER BY updated_at).
    return [...(this.thr.get(cfpId)?.values() ?? [])]
  }

  override async committedThreads (): Promise<Thread[]> {
    const out: Thread[] = []
    for (const [cfpId, m] of this.thr) {
      if (this.negs.get(cfpId)?.role !== 'worker') continue
      for (const t of m.values()) if (t.status === 'accepted' || t.status === 'contracted') out.push(t)
    }
    return out
  }

  override async saveContract (signed: SignedContract, now = Date.now()): Promise<string> {
    const check = await verifyContract(signed)
    if (!check.ok) throw new Error(`refusing to store contract for ${signed.doc.cfpId}: ${check.reason}`)
    const id = contractId(signed.doc)
    if (!this.cons.has(id)) {
      this.cons.set(id, { id, cfpId: signed.doc.cfpId, signed, status: 'active', createdAt: now, order: this.tick++ })
      this.onSaved(id, signed)
    }
    return id
  }

  override async setContractStatus (id: string, status: 'active' | 'broken' | 'ended'): Promise<void> {
    const c = this.cons.get(id)
    if (c !== undefined) c.status = status
  }

  override async contracts (q: { id?: string, model?: string, head?: string, worker?: string, status?: string, cfpId?: string, lapsedBy?: number } = {}): Promise<StoredContract[]> {
    const out: Array<StoredContract & { order: number }> = []
    for (const c of this.cons.values()) {
      const d = c.signed.doc
      if (q.id !== undefined && c.id !== q.id) continue
      if (q.model !== undefined && d.model !== q.model) continue
      if (q.head !== undefined && d.head !== q.head) continue
      if (q.worker !== undefined && d.worker !== q.worker) continue
      if (q.status !== undefined && c.status !== q.status) continue
      if (q.cfpId !== undefined && c.cfpId !== q.cfpId) continue
      if (q.lapsedBy !== undefined && d.serveUntil > q.lapsedBy) continue
      out.push(c)
    }
    out.sort((a, b) => a.signed.doc.start - b.signed.doc.start || a.createdAt - b.createdAt || a.order - b.order)
    return out.map(({ order, ...c }) => ({ ...c }))
  }

  /** Drops closed negotiations older than `before` (keeps long runs' memory flat). */
  prune (before: number): void {
    for (const [id, n] of this.negs) {
      if (n.status !== 'closed' || n.updatedAt >= before) continue
      const ts = this.thr.get(id)
      if (ts !== undefined && [...ts.values()].some((t) => t.status === 'contracted' || t.status === 'accepted')) continue
      this.negs.delete(id)
      this.thr.delete(id)
    }
  }
}
