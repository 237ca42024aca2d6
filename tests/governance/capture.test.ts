import { describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { sealEnvelope, type Envelope } from '../../protocols/envelope.ts'
import { ParameterProposalKind, VoteKind, proposalId, type ParameterProposal, type Vote, type VoteChoice } from '../../protocols/governance.ts'
import { tallyVotes } from '../../governance/tally.ts'
import type { VotingRules } from '../../governance/rules.ts'
import { QuorumKeeper } from '../../governance/keeper.ts'
import { evaluateQuorum } from '../../governance/quorum.ts'
import type { KeeperForge } from '../../governance/forge.ts'

const NET = 'test'
const T0 = 1_700_000_000_000
const HOUR = 3600_000

const idOf = (key: PrivateKey): string => peerIdFromPrivateKey(key).toString()

async function propose (key: PrivateKey, body: Partial<ParameterProposal>): Promise<Envelope<ParameterProposal>> {
  return await sealEnvelope(key, ParameterProposalKind, {
    parameter: 'review-quorum', value: 20, rationale: 'more eyes', deadline: T0 + 1000, quorum: 1, voteTtlMs: 1000, ...body
  }, { networkId: NET, now: T0 })
}

async function vote (key: PrivateKey, p: Envelope<ParameterProposal>, choice: VoteChoice, castAt = T0 + 500): Promise<Envelope<Vote>> {
  return await sealEnvelope(key, VoteKind, { proposal: proposalId(p), choice, castAt }, { networkId: NET, now: castAt, ttlMs: 1000 })
}

/**
 * Issue #15, finding 14: one peer passed a vote alone (quorum 1, a 1 s voting period, both chosen by
 * the proposer) that raised the required PR approvals to 20, so a PR approved by all three reviewers
 * stayed "pending 3 of 20"; and one peer id was one vote, so a thousand fresh keys were a thousand votes.
 */
describe('governance that a few keys cannot capture', async () => {
  const owners = await Promise.all([1, 2, 3].map(async () => await generateKeyPair('Ed25519')))
  const rules: VotingRules = {
    voters: Object.fromEntries(owners.map((k) => [idOf(k), 1])),
    quorum: 2,
    votingPeriodMs: 24 * HOUR,
    bounds: { 'review-quorum': { min: 1, max: 3 } }
  }

  it('ignores the quorum and voting period a proposer picks: one peer alone cannot raise review-quorum to 20', async () => {
    const attacker = await generateKeyPair('Ed25519')
    const p = await propose(attacker, { quorum: 1, deadline: T0 + 1000 })
    const t = tallyVotes(p, [await vote(attacker, p, 'yes')], rules)
    expect(t.outcome).not.toBe('passed')
    expect(t.outcome).toBe('invalid')
    expect(t.breach).toMatch(/outside the owners' bounds/)
    // Even one of the owners' own agents, inside the bounds, needs the owners' quorum and period.
    const alone = await propose(owners[0], { value: 3, deadline: T0 + 1000 })
    expect(tallyVotes(alone, [await vote(owners[0], alone, 'yes')], rules)).toMatchObject({ outcome: 'invalid', breach: expect.stringMatching(/voting period/) })
    const proper = await propose(owners[0], { value: 3, deadline: T0 + 24 * HOUR })
    expect(tallyVotes(proper, [await vote(owners[0], proper, 'yes')], rules)).toMatchObject({ outcome: 'no-quorum', quorum: 2, yes: 1 })
    expect(tallyVotes(proper, [await vote(owners[0], proper, 'yes'), await vote(owners[1], proper, 'yes')], rules)).toMatchObject({ outcome: 'passed', yes: 2 })
  })

  it('gives fresh keys no weight: a thousand of them cannot pass a vote', async () => {
    const p = await propose(owners[0], { value: 3, deadline: T0 + 24 * HOUR })
    const sybils = await Promise.all(Array.from({ length: 1000 }, async () => await generateKeyPair('Ed25519')))
    const flood = await Promise.all(sybils.map(async (k) => await vote(k, p, 'yes')))
    const t = tallyVotes(p, [...flood, await vote(owners[1], p, 'no'), await vote(owners[2], p, 'no')], rules)
    expect(t).toMatchObject({ outcome: 'rejected', yes: 0, no: 2, voters: 2 })
    expect(t.ignored.filter((i) => i.reason === 'not-attested')).toHaveLength(1000)
    expect(tallyVotes(p, flood, rules).outcome).toBe('no-quorum')
  }, 30_000)

  it('never requires more approvals than there are allow-listed reviewers', async () => {
    const reviewers = ['ana', 'ben', 'cy']
    const keeper = new QuorumKeeper({ forge: {} as KeeperForge, allowList: reviewers, requiredApprovals: 2, agentLogins: [], votedQuorum: async () => 20 })
    const required = await keeper.required()
    expect(required).toBe(3)
    const head = 'a'.repeat(40)
    const result = evaluateQuorum({
      headSha: head,
      reviews: reviewers.map((login, i) => ({ id: i + 1, login, state: 'APPROVED', commitId: head, submittedAt: `2024-01-01T00:00:0${i}Z` })),
      allowList: reviewers,
      required,
      agentLogins: [],
      checks: [{ name: 'ci', source: 'check-run', state: 'success' }]
    })
    expect(result.state).toBe('approved')
  })
})
