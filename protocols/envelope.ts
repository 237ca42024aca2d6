import { z } from 'zod'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { canonicalBytes, concatBytes, fromBase64Url, fromUtf8, toBase64Url, utf8 } from './encoding.ts'
import { ENVELOPE_SIGNING_DOMAIN, MAX_CLOCK_SKEW_MS, MAX_ENVELOPE_BYTES, MAX_TTL_MS, PROTOCOL_VERSION } from './version.ts'
import { NETWORK_ID_PATTERN } from './topics.ts'

/**
 * Every gossip message is an envelope signed by its author's peer key, on top of gossipsub's own
 * signature: gossipsub proves who relayed the bytes into the mesh, the envelope proves who wrote the
 * terms, and it still verifies when the envelope is stored, quoted in a contract or re-gossiped.
 */
export const EnvelopeSchema = z.object({
  v: z.literal(PROTOCOL_VERSION),
  net: z.string().regex(NETWORK_ID_PATTERN),
  kind: z.string().regex(/^[a-z][a-z0-9-]{0,31}$/),
  from: z.string().min(40).max(80),
  id: z.string().regex(/^[A-Za-z0-9_-]{16,43}$/),
  ts: z.number().int().nonnegative(),
  exp: z.number().int().nonnegative(),
  body: z.unknown(),
  sig: z.string().regex(/^[A-Za-z0-9_-]{80,100}$/)
}).strict()

export type Envelope<B = unknown> = Omit<z.infer<typeof EnvelopeSchema>, 'body'> & { body: B }
export type UnsignedEnvelope<B = unknown> = Omit<Envelope<B>, 'sig'>

/** A message kind: its name on the wire, the schema its body must satisfy, and how long it lives. */
export interface MessageKind<B = unknown> {
  kind: string
  body: z.ZodType<B>
  ttlMs: number
}

export function defineKind<B> (kind: string, body: z.ZodType<B>, ttlMs: number): MessageKind<B> {
  if (ttlMs <= 0 || ttlMs > MAX_TTL_MS) throw new RangeError(`ttl of ${kind} must be in (0, ${MAX_TTL_MS}] ms`)
  return { kind, body, ttlMs }
}

export type RejectReason =
  | 'oversized' | 'malformed' | 'wrong-version' | 'wrong-network' | 'unknown-kind' | 'bad-body'
  | 'bad-signature' | 'signer-mismatch' | 'expired' | 'from-future' | 'ttl-too-long' | 'replayed'

export const REJECT_REASONS: readonly RejectReason[] = [
  'oversized', 'malformed', 'wrong-version', 'wrong-network', 'unknown-kind', 'bad-body',
  'bad-signature', 'signer-mismatch', 'expired', 'from-future', 'ttl-too-long', 'replayed'
]

export class EnvelopeRejected extends Error {
  constructor (readonly reason: RejectReason, detail: string) {
    super(`${reason}: ${detail}`)
    this.name = 'EnvelopeRejected'
  }
}

function signingBytes (unsigned: UnsignedEnvelope): Uint8Array {
  return concatBytes(utf8(ENVELOPE_SIGNING_DOMAIN), canonicalBytes(unsigned))
}

function randomId (): string {
  return toBase64Url(crypto.getRandomValues(new Uint8Array(16)))
}

export interface SealOptions {
  networkId: string
  now?: number
  ttlMs?: number
  id?: string
}

/** Builds and signs an envelope. The body is validated first: we never send what peers would reject. */
export async function sealEnvelope<B> (key: PrivateKey, kind: MessageKind<B>, body: B, opts: SealOptions): Promise<Envelope<B>> {
  const checked = kind.body.parse(body)
  const ts = opts.now ?? Date.now()
  const unsigned: UnsignedEnvelope<B> = {
    v: PROTOCOL_VERSION,
    net: opts.networkId,
    kind: kind.kind,
    from: authorOf(key),
    id: opts.id ?? randomId(),
    ts,
    exp: ts + (opts.ttlMs ?? kind.ttlMs),
    body: checked
  }
  const sig = await key.sign(signingBytes(unsigned))
  return { ...unsigned, sig: toBase64Url(sig) }
}

export function encodeEnvelope (env: Envelope): Uint8Array {
  const bytes = utf8(JSON.stringify(env))
  if (bytes.byteLength > MAX_ENVELOPE_BYTES) {
    throw new EnvelopeRejected('oversized', `${env.kind} envelope is ${bytes.byteLength} bytes, the cap is ${MAX_ENVELOPE_BYTES}`)
  }
  return bytes
}

export interface OpenContext {
  networkId: string
  kinds: ReadonlyMap<string, MessageKind>
  now?: number
  /** The peer that gossipsub says authored the message; the envelope must be signed by the same peer. */
  signer?: string
}

/**
 * Decodes and checks an envelope from untrusted bytes. Throws EnvelopeRejected with the first failing
 * check; cheap checks run before the signature so that junk costs little. Replays are the caller's
 * concern (ReplayGuard), since they need memory.
 */
export async function openEnvelope (bytes: Uint8Array, ctx: OpenContext): Promise<Envelope> {
  if (bytes.byteLength > MAX_ENVELOPE_BYTES) {
    throw new EnvelopeRejected('oversized', `${bytes.byteLength} bytes, the cap is ${MAX_ENVELOPE_BYTES}`)
  }
  let json: unknown
  try {
    json = JSON.parse(fromUtf8(bytes))
  } catch (err) {
    throw new EnvelopeRejected('malformed', `not UTF-8 JSON (${(err as Error).message})`)
  }
  if (typeof json === 'object' && json !== null && 'v' in json && json.v !== PROTOCOL_VERSION) {
    throw new EnvelopeRejected('wrong-version', `version ${String(json.v)}, we speak ${PROTOCOL_VERSION}`)
  }
  const parsed = EnvelopeSchema.safeParse(json)
  if (!parsed.success) throw new EnvelopeRejected('malformed', z.prettifyError(parsed.error))
  const env = parsed.data
  if (env.net !== ctx.networkId) throw new EnvelopeRejected('wrong-network', `network ${env.net}, we are on ${ctx.networkId}`)
  const kind = ctx.kinds.get(env.kind)
  if (kind === undefined) throw new EnvelopeRejected('unknown-kind', `kind ${env.kind}`)
  if (ctx.signer !== undefined && ctx.signer !== env.from) {
    throw new EnvelopeRejected('signer-mismatch', `envelope claims ${env.from} but was published by ${ctx.signer}`)
  }

  const now = ctx.now ?? Date.now()
  if (env.ts > now + MAX_CLOCK_SKEW_MS) throw new EnvelopeRejected('from-future', `timestamp ${env.ts - now} ms ahead`)
  if (env.exp - env.ts > MAX_TTL_MS || env.exp < env.ts) throw new EnvelopeRejected('ttl-too-long', `lifetime ${env.exp - env.ts} ms`)
  if (env.exp <= now) throw new EnvelopeRejected('expired', `expired ${now - env.exp} ms ago`)

  let publicKey
  try {
    publicKey = peerIdFromString(env.from).publicKey
  } catch (err) {
    throw new EnvelopeRejected('malformed', `from is not a peer id (${(err as Error).message})`)
  }
  if (publicKey === undefined) throw new EnvelopeRejected('malformed', 'from does not embed a public key (Ed25519 peer ids only)')
  const { sig, ...unsigned } = env
  const ok = await publicKey.verify(signingBytes(unsigned), fromBase64Url(sig))
  if (!ok) throw new EnvelopeRejected('bad-signature', `signature does not verify for ${env.from}`)

  const body = kind.body.safeParse(env.body)
  if (!body.success) throw new EnvelopeRejected('bad-body', `${env.kind}: ${z.prettifyError(body.error)}`)
  return { ...env, body: body.data }
}

const peerIdCache = new WeakMap<PrivateKey, string>()

/** The Ed25519 public key is inlined in the peer id, so verifiers need nothing but the envelope. */
function authorOf (key: PrivateKey): string {
  let id = peerIdCache.get(key)
  if (id === undefined) {
    id = peerIdFromPrivateKey(key).toString()
    peerIdCache.set(key, id)
  }
  return id
}
