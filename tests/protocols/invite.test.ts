import { describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { createInvite, parseInvite } from '../../protocols/index.ts'

const boot = ['/ip4/127.0.0.1/tcp/4011/p2p/12D3KooWJ58BThDxfrcg61xYd9y34GXr7yFeVmq8UBMMFf6qwMvn']

describe('invites', () => {
  it('round-trips network, bootstrap addresses and the private-mesh key', async () => {
    const key = await generateKeyPair('Ed25519')
    const psk = 'ab'.repeat(32)
    const line = await createInvite(key, { net: 'home-lab', boot, psk })
    expect(line).toMatch(/^clawmesh-invite:[A-Za-z0-9_-]+$/)
    const invite = await parseInvite(line)
    expect(invite).toMatchObject({ net: 'home-lab', boot, psk })
  })

  it('refuses altered, truncated, foreign and expired invites with a clear message', async () => {
    const key = await generateKeyPair('Ed25519')
    const line = await createInvite(key, { net: 'home-lab', boot })
    const json = JSON.parse(Buffer.from(line.slice('clawmesh-invite:'.length), 'base64url').toString())
    const altered = 'clawmesh-invite:' + Buffer.from(JSON.stringify({ ...json, net: 'evil' })).toString('base64url')
    await expect(parseInvite(altered)).rejects.toThrow(/signature does not verify/)
    await expect(parseInvite(line.slice(0, 40))).rejects.toThrow(/damaged|not valid/)
    await expect(parseInvite('hello')).rejects.toThrow(/starts with/)
    const expiring = await createInvite(key, { net: 'home-lab', boot, exp: Date.now() + 1000 })
    await expect(parseInvite(expiring, Date.now() + 2000)).rejects.toThrow(/expired/)
    expect((await parseInvite(expiring)).exp).toBeGreaterThan(Date.now())
  })
})
