/**
 * Sybil scenario for network-parameter votes (issue #15, finding 14). Three owners attest their agents
 * (weight 1 each, quorum 2, votes open 24 h, review-quorum bounded to [1, 3]: the owners' config). An
 * attacker makes 1,000 fresh Ed25519 keys and tries two things with the real envelope and tally code:
 *   1. its own proposal, review-quorum = 20 with quorum 1 and a 1 s vote, voted yes by all its keys;
 *   2. an owner's proposal inside the rules (review-quorum = 3), flooded with 1,000 yes votes while two
 *      owners vote no.
 * For each it prints the tally under the owners' rules, and what one-key-one-vote would have decided.
 * Then the quorum keeper's required approvals with a voted review-quorum of 20 and 3 reviewers.
 * Usage: npx tsx sims/sybil-vote.ts [--keys 1000]
 */
import '../runtime/polyfill.ts'
import { parseArgs } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { sealEnvelope, type Envelope } from '../protocols/envelope.ts'
import { ParameterProposalKind, VoteKind, proposalId, type ParameterProposal, type Vote, type VoteChoice } from '../protocols/governance.ts'
import { tallyVotes, type Tally } from '../governance/tally.ts'
import type { VotingRules } from '../governance/rules.ts'
import { QuorumKeeper } from '../governance/keeper.ts'
import type { KeeperForge } from '../governance/forge.ts'

const { values } = parseArgs({ options: { keys: { type: 'string', default: '1000' } } })
const KEYS = Number(values.keys)
const NET = 'sim'
const T0 = Date.now()
const HOUR = 3600_000

const idOf = (key: PrivateKey): string => peerIdFromPrivateKey(key).toString()

async function propose (key: PrivateKey, body: Pick<ParameterProposal, 'value' | 'deadline' | 'quorum'>): Promise<Envelope<ParameterProposal>> {
  return await sealEnvelope(key, ParameterProposalKind, { parameter: 'review-quorum', rationale: 'sim', voteTtlMs: 1000, ...body }, { networkId: NET, now: T0 })
}

async function vote (key: PrivateKey, p: Envelope<ParameterProposal>, choice: VoteChoice): Promise<Envelope<Vote>> {
  return await sealEnvelope(key, VoteKind, { proposal: proposalId(p), choice, castAt: T0 + 500 }, { networkId: NET, now: T0 + 500, ttlMs: 1000 })
}

/** What the pre-fix rules decided: one peer id, one vote; the proposer's quorum; no bounds, no period. */
function oneKeyOneVote (p: Envelope<ParameterProposal>, votes: Array<Envelope<Vote>>): string {
  const last = new Map(votes.map((v) => [v.from, v.body.choice]))
  const yes = [...last.values()].filter((c) => c === 'yes').length
  const no = [...last.values()].filter((c) => c === 'no').length
  return last.size < p.body.quorum ? 'no-quorum' : yes > no ? `passed (${yes} yes, ${no} no)` : `rejected (${yes} yes, ${no} no)`
}

function show (t: Tally): string {
  return `${t.outcome}${t.breach !== undefined ? ` (${t.breach})` : ''}; attested weight yes ${t.yes}, no ${t.no}, quorum ${t.quorum}; ${t.ignored.filter((i) => i.reason === 'not-attested').length} votes from unattested keys ignored`
}

const t0 = performance.now()
const owners = await Promise.all([1, 2, 3].map(async () => await generateKeyPair('Ed25519')))
const sybils = await Promise.all(Array.from({ length: KEYS }, async () => await generateKeyPair('Ed25519')))
const rules: VotingRules = { voters: Object.fromEntries(owners.map((k) => [idOf(k), 1])), quorum: 2, votingPeriodMs: 24 * HOUR, bounds: { 'review-quorum': { min: 1, max: 3 } } }
console.log(`owners' rules: ${owners.length} attested voters (weight 1), quorum ${rules.quorum}, voting period ${rules.votingPeriodMs / HOUR} h, review-quorum in [1, 3]; attacker: ${KEYS} fresh keys`)

const capture = await propose(sybils[0], { value: 20, deadline: T0 + 1000, quorum: 1 })
const captureVotes = await Promise.all(sybils.map(async (k) => await vote(k, capture, 'yes')))
console.log('\n1. attacker proposes review-quorum = 20, quorum 1, a 1 s vote; all its keys vote yes')
console.log(`   one key, one vote (before): ${oneKeyOneVote(capture, captureVotes)}`)
console.log(`   owners' rules (now):        ${show(tallyVotes(capture, captureVotes, rules))}`)

const honest = await propose(owners[0], { value: 3, deadline: T0 + 24 * HOUR, quorum: 2 })
const flood = [...await Promise.all(sybils.map(async (k) => await vote(k, honest, 'yes'))), await vote(owners[1], honest, 'no'), await vote(owners[2], honest, 'no')]
console.log(`\n2. an owner proposes review-quorum = 3 within the rules; ${KEYS} fresh keys vote yes, two owners vote no`)
console.log(`   one key, one vote (before): ${oneKeyOneVote(honest, flood)}`)
console.log(`   owners' rules (now):        ${show(tallyVotes(honest, flood, rules))}`)

const keeper = new QuorumKeeper({ forge: {} as KeeperForge, allowList: ['ana', 'ben', 'cy'], requiredApprovals: 2, agentLogins: [], votedQuorum: async () => 20 })
console.log(`\n3. a voted review-quorum of 20 with 3 allow-listed reviewers: the keeper requires ${await keeper.required()} approvals (before: 20, so nothing could merge)`)
console.log(`\n${KEYS + 3} keys, ${2 * KEYS + 3} signed votes tallied in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
