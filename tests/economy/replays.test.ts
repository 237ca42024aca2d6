// Issue #15, finding 7: spot checks run by default under `clawmesh start`, replaying on a randomly
// chosen other provider of the same range; a range nobody else serves is named unchecked.
import { generateKeyPair } from '@libp2p/crypto/keys'
import { describe, expect, it } from 'vitest'
import { contractId, type SignedContract } from '../../protocols/market.ts'
import { ConfigSchema } from '../../runtime/config.ts'
import { replaysFor } from '../../runtime/gateway/replays.ts'
import { peerOf, signedContract } from '../helpers/receipts.ts'

const SHA = 'e'.repeat(64)

describe('spot-check replays', () => {
  it('are on by default and use another provider of the same range, started once, at random', async () => {
    expect(ConfigSchema.parse({ name: 'h', gateway: {} }).gateway?.spotCheckProbability).toBeGreaterThan(0)
    const [head, a, b, c, d] = await Promise.all([0, 1, 2, 3, 4].map(async () => await generateKeyPair('Ed25519')))
    const until = Date.now() + 3_600_000
    const first = await signedContract(head, a, { model: SHA, start: 0, end: 2, price: 1, serveUntil: until })
    const second = await signedContract(head, b, { model: SHA, start: 2, end: 4, price: 1, serveUntil: until })
    const altC = await signedContract(head, c, { model: SHA, start: 2, end: 4, price: 1, serveUntil: until })
    const altD = await signedContract(head, d, { model: SHA, start: 2, end: 4, price: 1, serveUntil: until })
    const wider = await signedContract(head, d, { model: SHA, start: 0, end: 4, price: 1, serveUntil: until }) // not the same range
    const started: SignedContract[][] = []
    const pick = (r: number) => replaysFor([first, second], [first, second, altC, altD, wider], async (cs) => { started.push(cs); return 'http://127.0.0.1:1' }, () => r)
    const low = pick(0.1)
    expect(low.unchecked).toEqual([contractId(first.doc)])
    expect(low.replays.map((r) => [r.contract, r.provider])).toEqual([[contractId(second.doc), peerOf(c)]])
    expect(pick(0.9).replays[0].provider).toBe(peerOf(d))
    expect(await low.replays[0].start!()).toBe('http://127.0.0.1:1')
    await low.replays[0].start!()
    expect(started).toEqual([[first, altC]]) // the running pipeline with one range swapped, started once
  })
})
