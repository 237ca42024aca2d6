import { z } from 'zod'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { canonicalBytes, concatBytes, fromBase64Url, fromUtf8, toBase64Url, utf8 } from './encoding.ts'
import { NETWORK_ID_PATTERN } from './topics.ts'

const INVITE_PREFIX = 'clawmesh-invite:'
const INVITE_SIGNING_DOMAIN = 'clawmesh/invite/v1\n'

/**
 * An invite is one line a person can paste: the network to join, where to find it, and the private-mesh
 * key if the network has one. It is signed by the inviting peer so that a typo or an edit in transit is
 * caught before the joiner dials anyone.
 */
export const InviteSchema = z.object({
  v: z.literal(1),
  net: z.string().regex(NETWORK_ID_PATTERN),
  boot: z.array(z.string().startsWith('/').max(300)).min(1).max(16),
  /** The private-mesh pre-shared key (64 hex characters), present only for private meshes. */
  psk: z.string().regex(/^[0-9a-f]{64}$/).optional(),
  /** Milliseconds since the epoch after which the invite is refused. */
  exp: z.number().int().positive().optional(),
  /** Set on single-use invites: the id the inviter redeems once. */
  once: z.string().regex(/^[A-Za-z0-9_-]{16,43}$/).optional(),
  /**
   * Set on reusable private-mesh invites: the id the inviter redeems for every peer that joins before
   * it expires. Members admit a peer only after a redemption, so the key alone opens nothing.
   */
  ticket: z.string().regex(/^[A-Za-z0-9_-]{16,43}$/).optional(),
  by: z.string(),
  sig: z.string()
}).strict()

export type Invite = z.infer<typeof InviteSchema>
export type InviteTerms = Omit<Invite, 'v' | 'by' | 'sig'>

export class InviteError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'InviteError'
  }
}

function signingBytes (unsigned: Omit<Invite, 'sig'>): Uint8Array {
  return concatBytes(utf8(INVITE_SIGNING_DOMAIN), canonicalBytes(unsigned))
}

export async function createInvite (key: PrivateKey, terms: InviteTerms): Promise<string> {
  const unsigned = { v: 1 as const, ...terms, by: peerIdFromPrivateKey(key).toString() }
  const sig = toBase64Url(await key.sign(signingBytes(unsigned)))
  const invite = InviteSchema.parse({ ...unsigned, sig })
  return INVITE_PREFIX + toBase64Url(canonicalBytes(invite))
}

/** Parses and verifies an invite line; every failure says what is wrong with it in words. */
export async function parseInvite (line: string, now = Date.now()): Promise<Invite> {
  const text = line.trim()
  if (!text.startsWith(INVITE_PREFIX)) throw new InviteError(`an invite starts with "${INVITE_PREFIX}"; got "${text.slice(0, 24)}…"`)
  let json: unknown
  try {
    json = JSON.parse(fromUtf8(fromBase64Url(text.slice(INVITE_PREFIX.length))))
  } catch {
    throw new InviteError('the invite is damaged (not valid base64url JSON); copy the whole line again')
  }
  const parsed = InviteSchema.safeParse(json)
  if (!parsed.success) throw new InviteError(`the invite is not valid: ${z.prettifyError(parsed.error)}`)
  const invite = parsed.data
  const { sig, ...unsigned } = invite
  let ok = false
  try {
    const publicKey = peerIdFromString(invite.by).publicKey
    ok = publicKey !== undefined && await publicKey.verify(signingBytes(unsigned), fromBase64Url(sig))
  } catch {
    ok = false
  }
  if (!ok) throw new InviteError('the invite signature does not verify: it was altered or not made by clawmesh')
  if (invite.exp !== undefined && invite.exp <= now) {
    throw new InviteError(`the invite expired at ${new Date(invite.exp).toISOString()}; ask for a new one`)
  }
  return invite
}

/** The id the inviting node redeems for this invite, if it must be redeemed at all. */
export function redemptionId (invite: Invite): string | undefined {
  return invite.once ?? invite.ticket
}
