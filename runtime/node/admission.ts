import { applyMigrations } from '../store/migrations.ts'
import type { Store } from '../store/store.ts'

/**
 * Who may be in a private mesh. The mesh key keeps strangers out of libp2p, but it is in every invite
 * line and never changes, so it cannot tell a redeemed invite from a refused or expired one. Each
 * member therefore keeps the list of admitted peer ids and lets in only those (runtime/node/
 * admission-gate.ts). A peer gets on the list by redeeming an invite with a member, who tells the
 * others (admission-sync.ts).
 */
const ADMISSION_MIGRATIONS = [`
  CREATE TABLE admissions (
    peer_id     TEXT PRIMARY KEY,
    -- how we learned it: self, invite (the inviter named in our own invite), redemption (we redeemed
    -- an invite for it), gossip, sync (a member's list), grandfathered (known before admission existed)
    via         TEXT NOT NULL,
    -- the member that vouched for it (our own id for self, redemption and grandfathered)
    admitted_by TEXT NOT NULL,
    invite      TEXT,
    admitted_at INTEGER NOT NULL
  );
`]

export type AdmissionVia = 'self' | 'invite' | 'redemption' | 'gossip' | 'sync' | 'grandfathered'

export async function prepareAdmissionTable (store: Store): Promise<void> {
  await applyMigrations(store.db, 'admission', ADMISSION_MIGRATIONS)
}

/** Adds a peer to a home's admission list (a joiner records its inviter before its node starts). */
export async function recordAdmission (store: Store, peer: string, via: AdmissionVia, by: string, invite?: string, now = Date.now()): Promise<boolean> {
  await prepareAdmissionTable(store)
  const { changes } = await store.db.run(
    'INSERT INTO admissions (peer_id, via, admitted_by, invite, admitted_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(peer_id) DO NOTHING',
    [peer, via, by, invite ?? null, now]
  )
  return changes === 1
}

/** The admission list of a running node: in memory for gossipsub's synchronous scoring, backed by sqlite. */
export class Admissions {
  private readonly admitted = new Set<string>()

  private constructor (private readonly store: Store, readonly self: string) {}

  /**
   * Loads the list. A node that ran a private mesh before admission existed grandfathers the peers it
   * had already met (they held the key then, which was all it took), once, so that an upgrade does not
   * cut a working mesh apart.
   */
  static async open (store: Store, self: string): Promise<Admissions> {
    await prepareAdmissionTable(store)
    if (await store.getMeta('admissions_seeded') === undefined) {
      const known = await store.db.all<{ peer_id: string }>('SELECT peer_id FROM peers')
      for (const { peer_id: peer } of known) await recordAdmission(store, peer, 'grandfathered', self)
      await store.setMeta('admissions_seeded', String(Date.now()))
    }
    await recordAdmission(store, self, 'self', self)
    const list = new Admissions(store, self)
    await list.reload()
    return list
  }

  /** Re-reads the table: the CLI (join, a future admit command) writes it while the node runs. */
  async reload (): Promise<void> {
    for (const r of await this.store.db.all<{ peer_id: string }>('SELECT peer_id FROM admissions')) this.admitted.add(r.peer_id)
  }

  has (peer: string): boolean {
    return this.admitted.has(peer)
  }

  /** Like has(), but looks in the database before saying no. */
  async knows (peer: string): Promise<boolean> {
    if (this.admitted.has(peer)) return true
    await this.reload()
    return this.admitted.has(peer)
  }

  /** Records an admission; true when the peer was not admitted before. */
  async admit (peer: string, via: AdmissionVia, by: string, invite?: string): Promise<boolean> {
    const added = await recordAdmission(this.store, peer, via, by, invite)
    this.admitted.add(peer)
    return added
  }

  list (): string[] {
    return [...this.admitted].sort()
  }
}
