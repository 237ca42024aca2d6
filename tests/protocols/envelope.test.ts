import { describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { z } from 'zod'
import {
  EnvelopeRejected, MAX_ENVELOPE_BYTES, MAX_TTL_MS, PresenceKind, ReplayGuard, defineKind, encodeEnvelope,
  openEnvelope, sealEnvelope, utf8, type MessageKind, type Presence, type RejectReason
} from '../../protocols/index.ts'

const Note = defineKind('note', z.object({ text: z.string().max(100_000) }).strict(), 60_000)
const kinds = new Map<string, MessageKind>([[Note.kind, Note as MessageKind], [PresenceKind.kind, PresenceKind as MessageKind]])
const ctx = { networkId: 'test', kinds }

async function rejection (p: Promise<unknown>): Promise<RejectReason> {
  try {
    await p
  } catch (err) {
    if (err instanceof EnvelopeRejected) return err.reason
    throw err
  }
  throw new Error('expected the envelope to be rejected, but it was accepted')
}

describe('signed envelopes', () => {
  it('round-trips a sealed envelope and binds it to its author', async () => {
    const key = await generateKeyPair('Ed25519')
    const env = await sealEnvelope(key, Note, { text: 'hello' }, { networkId: 'test' })
    const opened = await openEnvelope(encodeEnvelope(env), { ...ctx, signer: env.from })
    expect(opened.body).toEqual({ text: 'hello' })
    expect(opened.from).toBe(env.from)
    expect(opened.exp - opened.ts).toBe(60_000)
  })

  it('rejects a body changed after signing', async () => {
    const key = await generateKeyPair('Ed25519')
    const env = await sealEnvelope(key, Note, { text: 'price 10' }, { networkId: 'test' })
    const tampered = { ...env, body: { text: 'price 1' } }
    expect(await rejection(openEnvelope(utf8(JSON.stringify(tampered)), ctx))).toBe('bad-signature')
  })

  it('rejects an envelope that claims another author', async () => {
    const mallory = await generateKeyPair('Ed25519')
    const alice = await generateKeyPair('Ed25519')
    const real = await sealEnvelope(alice, Note, { text: 'x' }, { networkId: 'test' })
    const forged = await sealEnvelope(mallory, Note, { text: 'x' }, { networkId: 'test' })
    // Mallory's signature under Alice's name does not verify.
    expect(await rejection(openEnvelope(utf8(JSON.stringify({ ...forged, from: real.from })), ctx))).toBe('bad-signature')
    // Alice's genuine envelope re-published by Mallory: gossipsub names Mallory as the author.
    expect(await rejection(openEnvelope(encodeEnvelope(real), { ...ctx, signer: forged.from }))).toBe('signer-mismatch')
  })

  it('rejects expired, future-dated and over-long-lived envelopes', async () => {
    const key = await generateKeyPair('Ed25519')
    const now = Date.now()
    const old = await sealEnvelope(key, Note, { text: 'x' }, { networkId: 'test', now: now - 120_000 })
    expect(await rejection(openEnvelope(encodeEnvelope(old), { ...ctx, now }))).toBe('expired')
    const future = await sealEnvelope(key, Note, { text: 'x' }, { networkId: 'test', now: now + 300_000 })
    expect(await rejection(openEnvelope(encodeEnvelope(future), { ...ctx, now }))).toBe('from-future')
    const forever = await sealEnvelope(key, Note, { text: 'x' }, { networkId: 'test', now, ttlMs: MAX_TTL_MS + 1 })
    expect(await rejection(openEnvelope(encodeEnvelope(forever), { ...ctx, now }))).toBe('ttl-too-long')
  })

  it('rejects malformed, oversized, foreign and unknown input with a reason', async () => {
    const key = await generateKeyPair('Ed25519')
    expect(await rejection(openEnvelope(utf8('not json'), ctx))).toBe('malformed')
    expect(await rejection(openEnvelope(new Uint8Array([0xff, 0xfe, 0x7b]), ctx))).toBe('malformed')
    expect(await rejection(openEnvelope(utf8('{"v":1}'), ctx))).toBe('malformed')
    expect(await rejection(openEnvelope(utf8('{"v":2}'), ctx))).toBe('wrong-version')
    expect(await rejection(openEnvelope(new Uint8Array(MAX_ENVELOPE_BYTES + 1), ctx))).toBe('oversized')
    const env = await sealEnvelope(key, Note, { text: 'x' }, { networkId: 'test' })
    expect(await rejection(openEnvelope(utf8(JSON.stringify({ ...env, extra: 1 })), ctx))).toBe('malformed')
    expect(await rejection(openEnvelope(encodeEnvelope(env), { ...ctx, networkId: 'other' }))).toBe('wrong-network')
    expect(await rejection(openEnvelope(encodeEnvelope(env), { ...ctx, kinds: new Map() }))).toBe('unknown-kind')
    // A correctly signed envelope whose body breaks the schema: the author is buggy or hostile.
    const loose = defineKind('note', z.any(), 60_000)
    const bad = await sealEnvelope(key, loose, { text: 42 }, { networkId: 'test' })
    expect(await rejection(openEnvelope(encodeEnvelope(bad), ctx))).toBe('bad-body')
  })

  it('refuses to seal what peers would reject', async () => {
    const key = await generateKeyPair('Ed25519')
    await expect(sealEnvelope(key, Note, { text: 1 } as unknown as { text: string }, { networkId: 'test' })).rejects.toThrow()
    const big = await sealEnvelope(key, Note, { text: 'x'.repeat(MAX_ENVELOPE_BYTES) }, { networkId: 'test' })
    expect(() => encodeEnvelope(big)).toThrow(/oversized/)
  })

  it('validates presence bodies strictly', async () => {
    const key = await generateKeyPair('Ed25519')
    const presence: Presence = {
      name: 'a', software: '0.1.0', priceFloor: 1, uptimeS: 3, state: 'idle', addrs: [], models: [],
      hardware: { cpu: { model: 'x', cores: 2 }, memory: { total: 10, free: 5 }, backend: false, gpus: [] }
    }
    const env = await sealEnvelope(key, PresenceKind, presence, { networkId: 'test' })
    expect((await openEnvelope(encodeEnvelope(env), ctx)).body).toEqual(presence)
    await expect(sealEnvelope(key, PresenceKind, { ...presence, priceFloor: -1 }, { networkId: 'test' })).rejects.toThrow()
  })
})

describe('replay guard', () => {
  it('admits an id once until it expires, then forgets it', () => {
    const guard = new ReplayGuard()
    const now = 1_000_000
    expect(guard.admit('peer', 'id1', now + 1000, now)).toBe(true)
    expect(guard.admit('peer', 'id1', now + 1000, now + 10)).toBe(false)
    expect(guard.admit('other', 'id1', now + 1000, now + 10)).toBe(true)
    expect(guard.admit('peer', 'id1', now + 50_000, now + 20_000)).toBe(true)
    // Expired entries are swept, so memory stays bounded by the live window.
    guard.admit('peer', 'id2', now + 100_000, now + 90_000)
    expect(guard.size).toBeLessThanOrEqual(2)
  })
})
