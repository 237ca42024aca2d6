import { lpStream } from '@libp2p/utils'
import { peerIdFromString } from '@libp2p/peer-id'
import { multiaddr } from '@multiformats/multiaddr'
import { z } from 'zod'
import { fromUtf8, utf8 } from '../../protocols/index.ts'
import { applyMigrations } from '../store/migrations.ts'
import type { Store } from '../store/store.ts'
import type { Host } from './host.ts'
import type { Logger } from '../log.ts'

export const INVITE_PROTOCOL = '/clawmesh/invite/1'

/** The inviting node's record of the invites it must redeem (its own migration namespace). */
const INVITE_MIGRATIONS = [`
  CREATE TABLE invites (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    redeemed_by TEXT,
    redeemed_at INTEGER
  );
`, `
  -- 2: reusable private-mesh invites (a ticket) are redeemed too, once per joining peer, until they expire.
  ALTER TABLE invites ADD COLUMN single_use INTEGER NOT NULL DEFAULT 1;
  CREATE TABLE invite_redemptions (
    invite      TEXT NOT NULL,
    peer_id     TEXT NOT NULL,
    redeemed_at INTEGER NOT NULL,
    PRIMARY KEY (invite, peer_id)
  );
`]

const Request = z.object({ v: z.literal(1), id: z.string().max(64) }).strict()
const Response = z.object({ ok: z.boolean(), reason: z.string().max(300).optional() }).strict()
export type RedeemResult = z.infer<typeof Response>

export async function prepareInviteTable (store: Store): Promise<void> {
  await applyMigrations(store.db, 'invites', INVITE_MIGRATIONS)
}

/** Records an invite id so that the node redeems it: once (single-use), or for every peer until it expires. */
export async function recordInvite (store: Store, id: string, expiresAt: number | undefined, singleUse: boolean): Promise<void> {
  await prepareInviteTable(store)
  await store.db.run('INSERT INTO invites (id, created_at, expires_at, single_use) VALUES (?, ?, ?, ?)', [id, Date.now(), expiresAt ?? null, singleUse ? 1 : 0])
}

/** Records a single-use invite id so that the node redeems it once. */
export async function recordSingleUseInvite (store: Store, id: string, expiresAt: number | undefined): Promise<void> {
  await recordInvite(store, id, expiresAt, true)
}

/**
 * Whether some invite of this node can still be redeemed. Only then does a private mesh node let a peer
 * it has not admitted connect at all (to redeem it): with no open invite there is nothing to redeem.
 */
export async function hasOpenInvites (store: Store, now = Date.now()): Promise<boolean> {
  await prepareInviteTable(store)
  const row = await store.db.get('SELECT 1 AS open FROM invites WHERE (expires_at IS NULL OR expires_at > ?) AND (single_use = 0 OR redeemed_by IS NULL) LIMIT 1', [now])
  return row !== undefined
}

/**
 * Redeems an invite id for a peer, atomically: the conditional UPDATE lets exactly one peer win even if
 * two redeem at once. The same peer redeeming again (say after a restart) is not a second use.
 */
export async function redeemInvite (store: Store, id: string, peerId: string, now = Date.now()): Promise<RedeemResult> {
  return await store.db.transaction(async (tx) => {
    const row = await tx.get<{ expires_at: number | null, redeemed_by: string | null, single_use: number }>('SELECT expires_at, redeemed_by, single_use FROM invites WHERE id = ?', [id])
    if (row === undefined) return { ok: false, reason: 'this invite is unknown to the inviting node (it was not made there, or was revoked)' }
    if (row.single_use === 0) {
      const again = await tx.get('SELECT 1 AS seen FROM invite_redemptions WHERE invite = ? AND peer_id = ?', [id, peerId])
      if (again !== undefined) return { ok: true }
      if (row.expires_at !== null && row.expires_at <= now) return { ok: false, reason: 'this invite has expired; ask for a new one' }
      await tx.run('INSERT INTO invite_redemptions (invite, peer_id, redeemed_at) VALUES (?, ?, ?)', [id, peerId, now])
      return { ok: true }
    }
    if (row.redeemed_by === peerId) return { ok: true }
    if (row.redeemed_by !== null) return { ok: false, reason: 'this single-use invite was already used by another agent; ask for a new one' }
    if (row.expires_at !== null && row.expires_at <= now) return { ok: false, reason: 'this invite has expired; ask for a new one' }
    await tx.run('UPDATE invites SET redeemed_by = ?, redeemed_at = ? WHERE id = ? AND redeemed_by IS NULL', [peerId, now, id])
    return { ok: true }
  })
}

/**
 * Serves redemptions on the inviting node. The redeeming peer's id comes from the connection (noise
 * authenticated it), never from the request; onRedeemed admits it (private meshes).
 */
export async function serveInvites (host: Host, store: Store, log: Logger, onRedeemed?: (peer: string, invite: string) => Promise<void>): Promise<void> {
  await prepareInviteTable(store)
  await host.handle(INVITE_PROTOCOL, async (stream, connection) => {
    const lp = lpStream(stream)
    const peer = connection.remotePeer.toString()
    let result: RedeemResult
    try {
      const req = Request.parse(JSON.parse(fromUtf8((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray())))
      result = await redeemInvite(store, req.id, peer)
      if (result.ok) await onRedeemed?.(peer, req.id)
    } catch (err) {
      result = { ok: false, reason: `bad redemption request: ${(err as Error).message.slice(0, 200)}` }
    }
    log.info(result.ok ? 'invite redeemed' : 'invite refused', { peer, reason: result.reason ?? '' })
    try {
      await lp.write(utf8(JSON.stringify(result)))
      await stream.close()
    } catch (err) {
      stream.abort(err as Error)
    }
  })
}

/** Asks the inviting peer to redeem a single-use invite for us. */
export async function requestRedemption (host: Host, inviter: string, addrs: string[], id: string): Promise<RedeemResult> {
  const peer = peerIdFromString(inviter)
  await host.dial(addrs.filter((a) => a.endsWith(`/p2p/${inviter}`)).map((a) => multiaddr(a)), { signal: AbortSignal.timeout(10_000) })
  const stream = await host.dialProtocol(peer, INVITE_PROTOCOL, { signal: AbortSignal.timeout(10_000) })
  const lp = lpStream(stream)
  await lp.write(utf8(JSON.stringify({ v: 1, id })))
  const reply = Response.parse(JSON.parse(fromUtf8((await lp.read({ signal: AbortSignal.timeout(10_000) })).subarray())))
  await stream.close().catch(() => {})
  return reply
}
