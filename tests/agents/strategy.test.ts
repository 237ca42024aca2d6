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
