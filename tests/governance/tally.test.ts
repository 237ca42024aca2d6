import { describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { sealEnvelope, type Envelope } from '../../protocols/envelope.ts'
import { ParameterProposalKind, VoteKind, proposalId, ParameterProposalSchema, type ParameterProposal, type Vote, type VoteChoice } from '../../protocols/governance.ts'
import { finalizeAt, resolveParameters, tallyVotes } from '../../governance/tally.ts'
import type { VotingRules } from '../../governance/rules.ts'

const NET = 'test'
const T0 = 1_700_000_000_000

/** Owners' rules under which every key these cases make weighs 1 and the proposal's own quorum binds. */
const RULES: VotingRules = { voters: {}, quorum: 1, votingPeriodMs: 1000, bounds: {} }
async function attestedKey (): Promise<PrivateKey> {
  const key = await generateKeyPair('Ed25519')
  ;(RULES.voters as Record<string, number>)[peerIdFromPrivateKey(key).toString()] = 1
  return key
}

async function proposal (key: PrivateKey, body: Partial<ParameterProposal> = {}, ts = T0): Promise<Envelope<ParameterProposal>> {
  return await sealEnvelope(key, ParameterProposalKind, {
    parameter: 'network-fee', value: 0.02, rationale: 'fund the pool', deadline: T0 + 10_000, quorum: 3, voteTtlMs: 2000, ...body
  }, { networkId: NET, now: ts })
}

async function vote (key: PrivateKey, p: Envelope<ParameterProposal>, choice: VoteChoice, castAt: number, opts: { ts?: number, ttlMs?: number } = {}): Promise<Envelope<Vote>> {
  return await sealEnvelope(key, VoteKind, { proposal: proposalId(p), choice, castAt }, { networkId: NET, now: opts.ts ?? castAt, ttlMs: opts.ttlMs ?? 1000 })
}

function shuffled<T> (items: T[], seed: number): T[] {
  const out = [...items]
  let s = seed
  for (let i = out.length - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) % 2 ** 31
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j], out[i]]
  }
  return out
}

describe('the vote tally', () => {
  it('passes with quorum and a yes majority, and is identical for every arrival order and with duplicates', async () => {
    const keys = await Promise.all(Array.from({ length: 5 }, async () => await attestedKey()))
    const p = await proposal(keys[0])
    const votes = [
      await vote(keys[0], p, 'yes', T0 + 100),
      await vote(keys[1], p, 'yes', T0 + 200),
      await vote(keys[2], p, 'no', T0 + 300),
      await vote(keys[3], p, 'abstain', T0 + 400)
    ]
    const reference = tallyVotes(p, votes, RULES)
    expect(reference).toMatchObject({ yes: 2, no: 1, abstain: 1, voters: 4, outcome: 'passed' })
    for (let seed = 1; seed < 30; seed++) {
      const input = shuffled([...votes, ...votes.slice(0, seed % 4)], seed)
      expect(tallyVotes(p, input, RULES).digest).toBe(reference.digest)
    }
  })

  it('counts the last vote before the deadline per voter; a vote after it is late, even from a voter who voted in time', async () => {
    const [a, b, c] = await Promise.all([1, 2, 3].map(async () => await attestedKey()))
    const p = await proposal(a, { quorum: 2 })
    const changed = [await vote(b, p, 'no', T0 + 1000), await vote(b, p, 'yes', T0 + 2000)]
    const inTime = await vote(c, p, 'no', T0 + 3000)
    const late = await vote(c, p, 'yes', T0 + 10_001)
    const t = tallyVotes(p, [late, ...[...changed].reverse(), inTime], RULES)
    expect(t).toMatchObject({ yes: 1, no: 1, voters: 2, outcome: 'rejected' })
    expect(t.counted.find((x) => x.voter === peerIdFromPrivateKey(b).toString())).toMatchObject({ vote: changed[1].id, choice: 'yes' })
    expect(t.ignored.map((i) => i.reason).sort()).toEqual(['late', 'superseded'])
    // A vote exactly at the deadline still counts.
    const atDeadline = await vote(a, p, 'yes', T0 + 10_000)
    expect(tallyVotes(p, [atDeadline, ...changed, inTime], RULES).outcome).toBe('passed')
  })

  it('refuses backdated votes, votes from before the proposal, and envelopes that outlive the proposal\'s vote lifetime', async () => {
    const [a, b] = await Promise.all([1, 2].map(async () => await attestedKey()))
    const p = await proposal(a, { quorum: 1 })
    const backdated = await vote(b, p, 'yes', T0 + 1000, { ts: T0 + 12_000 })
    const fromTheFuture = await vote(b, p, 'yes', T0 + 1000, { ts: T0 + 900 })
    const early = await vote(b, p, 'yes', T0 - 60_001)
    const longLived = await vote(b, p, 'yes', T0 + 1000, { ttlMs: 5000 })
    const t = tallyVotes(p, [backdated, fromTheFuture, early, longLived], RULES)
    expect(t.outcome).toBe('no-quorum')
    expect(t.ignored.map((i) => i.reason).sort()).toEqual(['bad-timestamp', 'bad-timestamp', 'before-proposal', 'ttl-too-long'])
    expect(finalizeAt(p.body)).toBe(T0 + 10_000 + 1000 + 2000)
  })

  it('ignores votes on another proposal and ties go to no', async () => {
    const [a, b] = await Promise.all([1, 2].map(async () => await attestedKey()))
    const p = await proposal(a, { quorum: 2 })
    const other = await proposal(a, { value: 0.03 })
    const t = tallyVotes(p, [await vote(a, p, 'yes', T0 + 1), await vote(b, p, 'no', T0 + 2), await vote(b, other, 'yes', T0 + 3)], RULES)
    expect(t).toMatchObject({ yes: 1, no: 1, voters: 2, outcome: 'rejected' })
  })

  it('resolves parameters from passed tallies by deadline, not by the order they were finalized', async () => {
    const [a] = await Promise.all([1].map(async () => await attestedKey()))
    const early = await proposal(a, { value: 0.1, deadline: T0 + 5000, quorum: 1 })
    const later = await proposal(a, { value: 0.2, deadline: T0 + 6000, quorum: 1 })
    const t1 = tallyVotes(early, [await vote(a, early, 'yes', T0 + 10)], RULES)
    const t2 = tallyVotes(later, [await vote(a, later, 'yes', T0 + 10)], RULES)
    expect(resolveParameters([t1, t2]).get('network-fee')?.value).toBe(0.2)
    expect(resolveParameters([t2, t1]).get('network-fee')?.value).toBe(0.2)
  })

  it('validates parameter bounds in the wire format', () => {
    const base = { rationale: '', deadline: T0, quorum: 1, voteTtlMs: 1000 }
    expect(ParameterProposalSchema.safeParse({ ...base, parameter: 'review-quorum', value: 2 }).success).toBe(true)
    expect(ParameterProposalSchema.safeParse({ ...base, parameter: 'review-quorum', value: 0 }).success).toBe(false)
    expect(ParameterProposalSchema.safeParse({ ...base, parameter: 'review-quorum', value: 2.5 }).success).toBe(false)
    expect(ParameterProposalSchema.safeParse({ ...base, parameter: 'network-fee', value: 0.9 }).success).toBe(false)
    expect(ParameterProposalSchema.safeParse({ ...base, parameter: 'free-lunch', value: 1 }).success).toBe(false)
  })
})
