import { z } from 'zod'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { canonicalBytes, concatBytes, fromBase64Url, toBase64Url, utf8 } from './encoding.ts'
import { SHA256_HEX } from './market.ts'

/**
 * The chain engine's route ticket. A head that hired stages for every layer range signs one ticket
 * per chain: which peers, in which order, under which contracts. Each stage checks the ticket before
 * it computes anything: the head's signature, that the peer handing it hidden states is the hop
 * before it on the route (libp2p authenticates that peer), and that its own contract with this head
 * covers exactly its hop's layers. So a stage talks to another stage only on a route the head paid
 * for, and no stage can put itself into someone else's chain.
 */

export const CHAIN_TICKET_VERSION = 1
/** Stages per chain: a bound on what one ticket can ask of the mesh. */
export const MAX_CHAIN_HOPS = 64

const peerId = z.string().min(40).max(80)

export const ChainHopSchema = z.object({
  peer: peerId,
  contract: z.string().regex(/^[0-9a-f]{32}$/),
  start: z.number().int().nonnegative().max(4096),
  end: z.number().int().positive().max(4096),
  /** SHA-256 of the stage file (runtime/engine/stage-gguf.ts) the head serves for this range: what the stage must run. */
  weights: z.string().regex(SHA256_HEX).optional()
}).strict()

export const ChainTicketSchema = z.object({
  v: z.literal(CHAIN_TICKET_VERSION),
  session: z.string().regex(/^[A-Za-z0-9_-]{8,64}$/),
  head: peerId,
  model: z.string().regex(SHA256_HEX),
  route: z.array(ChainHopSchema).min(1).max(MAX_CHAIN_HOPS),
  /** The ticket is refused after this time (ms since epoch): a leaked ticket does not live long. */
  expires: z.number().int().nonnegative()
}).strict()

export type ChainHop = z.infer<typeof ChainHopSchema>
export type ChainTicket = z.infer<typeof ChainTicketSchema>
export interface SignedChainTicket { ticket: ChainTicket, sig: string }

function signingBytes (t: ChainTicket): Uint8Array {
  return concatBytes(utf8('clawmesh/chain-ticket/1\n'), canonicalBytes(t))
}

export async function signChainTicket (key: PrivateKey, ticket: ChainTicket): Promise<SignedChainTicket> {
  const me = peerIdFromPrivateKey(key).toString()
  if (me !== ticket.head) throw new Error(`peer ${me} cannot sign a ticket for head ${ticket.head}`)
  return { ticket, sig: toBase64Url(await key.sign(signingBytes(ticket))) }
}

/**
 * Checks a ticket as hop `index` sees it: schema, head signature, expiry, the hops tile a contiguous
 * range, and (when given) that `from` is the peer before this hop (the head itself for hop 0).
 */
export async function verifyChainTicket (signed: unknown, q: { index: number, from?: string, now?: number }): Promise<{ ok: true, ticket: ChainTicket } | { ok: false, reason: string }> {
  const parsed = z.object({ ticket: ChainTicketSchema, sig: z.string().max(200) }).strict().safeParse(signed)
  if (!parsed.success) return { ok: false, reason: `malformed ticket: ${z.prettifyError(parsed.error)}` }
  const { ticket, sig } = parsed.data
  if (ticket.expires <= (q.now ?? Date.now())) return { ok: false, reason: `ticket ${ticket.session} expired at ${new Date(ticket.expires).toISOString()}` }
  for (let i = 0; i < ticket.route.length; i++) {
    const h = ticket.route[i]
    if (h.end <= h.start) return { ok: false, reason: `hop ${i} has an empty range [${h.start}, ${h.end})` }
    if (i > 0 && ticket.route[i - 1].end !== h.start) return { ok: false, reason: `hop ${i} starts at ${h.start}, not where hop ${i - 1} ends` }
  }
  if (!Number.isInteger(q.index) || q.index < 0 || q.index > ticket.route.length) return { ok: false, reason: `no hop ${q.index} on this route` }
  if (q.from !== undefined) {
    const expected = q.index === 0 ? ticket.head : ticket.route[q.index - 1].peer
    if (q.from !== expected) return { ok: false, reason: `hop ${q.index} takes hidden states from ${expected}, not from ${q.from}` }
  }
  let ok = false
  try {
    const pub = peerIdFromString(ticket.head).publicKey
    ok = pub !== undefined && await pub.verify(signingBytes(ticket), fromBase64Url(sig))
  } catch { ok = false }
  if (!ok) return { ok: false, reason: 'ticket signature does not verify against its head' }
  return { ok: true, ticket }
}
