import { describe, expect, it } from 'vitest'
import { decide } from '../../agents/brains/strategy.ts'
import type { Observation } from '../../agents/observation.ts'

const HEAD = '12D3KooWHeadHeadHeadHeadHeadHeadHeadHeadHeadHeadHead'
const LAYER = 1_000_000

function acceptedAsWorker (committedLayers: number, deals: number, lendableLayers = 10, maxDeals = 2): Observation {
  return {
    event: { type: 'accepted', cfpId: 'cfp-00000001', peer: HEAD },
    me: { name: 'w', peerId: 'me' },
    role: 'worker',
    bounds: { floor: 1, ceiling: 50, budget: 1000, maxDeals, lendableBytes: lendableLayers * LAYER, idleOnly: false },
    committedBytes: committedLayers * LAYER,
    deals,
    threads: [],
    heldRanges: [],
    spent: 0,
    now: Date.now()
  }
}

describe('the offline negotiator, answering an acceptance', () => {
  it('countersigns a deal that still fits (the acceptance itself is among the commitments)', () => {
    const { moves } = decide(acceptedAsWorker(10, 2))
    expect(moves).toEqual([expect.objectContaining({ tool: 'sign_contract', args: expect.objectContaining({ peer: HEAD }) })])
  })

  it('declines at once when another head\'s deal took the memory meanwhile', () => {
    const { moves } = decide(acceptedAsWorker(14, 2))
    expect(moves).toHaveLength(1)
    expect(moves[0].tool).toBe('reject')
    expect(moves[0].args).toMatchObject({ peer: HEAD, reason: expect.stringMatching(/memory/) })
  })

  it('declines when the owner\'s deal limit was reached meanwhile', () => {
    const { moves } = decide(acceptedAsWorker(4, 3))
    expect(moves[0]).toMatchObject({ tool: 'reject', args: { reason: expect.stringMatching(/limit/) } })
  })
})

describe('the offline negotiator, answering a counter', () => {
  const PEER = '12D3KooWPeerPeerPeerPeerPeerPeerPeerPeerPeerPeerPeer'
  function countered (role: 'head' | 'worker', terms: { start: number, end: number, price: number }): Observation {
    return {
      event: { type: 'counter', cfpId: 'cfp-00000002', peer: role === 'worker' ? HEAD : PEER },
      me: { name: 'me', peerId: 'me' },
      role,
      bounds: { floor: 1, ceiling: 50, budget: 1000, maxDeals: 4, lendableBytes: 100 * LAYER, idleOnly: false },
      committedBytes: 0,
      deals: 0,
      cfp: { cfpId: 'cfp-00000002', model: 'a'.repeat(64), modelRef: { sha256: 'a'.repeat(64), name: 'm', nLayer: 12, layerBytes: LAYER }, want: { start: 4, end: 8 }, budget: 400, deadline: 0, serveUntil: 0, maxRounds: 2 },
      threads: [{ peer: role === 'worker' ? HEAD : PEER, name: 'x', status: 'countered', terms: { ...terms, expiresAt: Date.now() + 60_000 }, from: 'them', rounds: 1, said: '' }],
      heldRanges: [],
      spent: 0,
      callBudgetLeft: 400,
      now: Date.now()
    }
  }

  it('never accepts, as a worker, a counter for layers outside the call', () => {
    expect(decide(countered('worker', { start: 4, end: 8, price: 20 })).moves[0].tool).toBe('accept')
    const { moves } = decide(countered('worker', { start: 0, end: 8, price: 20 }))
    expect(moves).toEqual([expect.objectContaining({ tool: 'reject', args: expect.objectContaining({ reason: expect.stringMatching(/outside the called range/) }) })])
  })

  it('never accepts, as a head, a counter for layers outside its call', () => {
    expect(decide(countered('head', { start: 4, end: 8, price: 20 })).moves[0].tool).toBe('accept')
    const { moves } = decide(countered('head', { start: 6, end: 10, price: 20 }))
    expect(moves).toEqual([expect.objectContaining({ tool: 'reject', args: expect.objectContaining({ peer: PEER, reason: expect.stringMatching(/outside the called range/) }) })])
  })
})
