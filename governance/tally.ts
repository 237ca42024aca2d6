import { createHash } from 'node:crypto'
import { canonicalBytes, toBase64Url } from '../protocols/encoding.ts'
import type { Envelope } from '../protocols/envelope.ts'
import { MAX_CLOCK_SKEW_MS } from '../protocols/version.ts'
import {
  VOTE_MAX_LAG_MS, proposalId, type NetworkParameter, type ParameterProposal, type Vote, type VoteChoice
} from '../protocols/governance.ts'
import { ruleBreach, weightOf, type VotingRules } from './rules.ts'

/**
 * The vote-counting rules. Every input here is signed data, never a node's receipt time or arrival
 * order, so any node holding the same set of envelopes computes the same result byte for byte:
 *
 * - the owners' rules (rules.ts), never the proposer, decide who votes, the quorum, the voting period
 *   and each parameter's bounds: a proposal that breaks them is 'invalid' and changes nothing;
 * - a voter is a peer id (the envelope's verified author) weighing what the owners attested for it; an
 *   unattested key weighs nothing (its votes are listed as 'not-attested'), so fresh keys add nothing;
 * - a vote counts only if cast at or before the deadline and not before the proposal was made (less
 *   the allowed clock skew), by the
 *   vote's own castAt, which must lie within [env.ts - VOTE_MAX_LAG_MS, env.ts]: a voter cannot claim a
 *   castAt later than the moment it signed the envelope, nor backdate it by more than the lag;
 * - its envelope may live at most the proposal's voteTtlMs, so after deadline + lag + voteTtlMs no node
 *   can accept a countable vote any more and each can finalize on its own clock;
 * - a voter may change their mind: their last countable vote (highest castAt; ties broken by the
 *   larger envelope id) is the one that counts; exact duplicates are the same envelope and count once;
 * - quorum: attested weight taking part (abstentions included) of at least the owners' quorum, or the
 *   proposal's if higher; passed: quorum met and strictly more yes weight than no weight.
 */
export type Outcome = 'passed' | 'rejected' | 'no-quorum' | 'invalid'

export interface Tally {
  proposal: string
  parameter: NetworkParameter
  value: number
  deadline: number
  /** The attested weight needed: the owners' quorum, or the proposal's if higher. */
  quorum: number
  /** Attested weight of yes, no and abstain votes. */
  yes: number
  no: number
  abstain: number
  /** Attested voters whose vote counted. */
  voters: number
  outcome: Outcome
  /** Why the proposal is invalid under the owners' rules (outcome 'invalid'). */
  breach?: string
  /** The vote that counted for each voter (peer id → envelope id), sorted by peer id. */
  counted: Array<{ voter: string, vote: string, choice: VoteChoice, weight: number }>
  /** Envelopes that did not count and why, sorted; duplicates of a counted envelope are not listed. */
  ignored: Array<{ voter: string, vote: string, reason: 'late' | 'before-proposal' | 'bad-timestamp' | 'ttl-too-long' | 'superseded' | 'not-attested' }>
  /** SHA-256 of the canonical JSON of everything above: equal digests, equal tallies. */
  digest: string
}

/** The moment (on the local clock) after which this proposal's tally can no longer change. */
export function finalizeAt (proposal: ParameterProposal): number {
  return proposal.deadline + VOTE_MAX_LAG_MS + proposal.voteTtlMs
}

export function tallyVotes (proposalEnv: Envelope<ParameterProposal>, votes: Iterable<Envelope<Vote>>, rules: VotingRules): Tally {
  const id = proposalId(proposalEnv)
  const p = proposalEnv.body
  // Deduplicate exact copies first (same author, same envelope id), then work in a canonical order so
  // that nothing below can depend on the order votes arrived in.
  const unique = new Map<string, Envelope<Vote>>()
  for (const v of votes) if (v.body.proposal === id) unique.set(`${v.from}\u0000${v.id}`, v)
  const sorted = [...unique.values()].sort((a, b) => cmp(a.from, b.from) || cmp(a.id, b.id))

  const ignored: Tally['ignored'] = []
  const latest = new Map<string, Envelope<Vote>>()
  for (const v of sorted) {
    const reason = disqualify(p, proposalEnv.ts, v)
    if (reason !== undefined) { ignored.push({ voter: v.from, vote: v.id, reason }); continue }
    const held = latest.get(v.from)
    if (held === undefined) { latest.set(v.from, v); continue }
    const newer = v.body.castAt > held.body.castAt || (v.body.castAt === held.body.castAt && v.id > held.id)
    const loser = newer ? held : v
    ignored.push({ voter: loser.from, vote: loser.id, reason: 'superseded' })
    if (newer) latest.set(v.from, v)
  }

  const counted: Tally['counted'] = []
  for (const v of latest.values()) {
    const weight = weightOf(rules, v.from)
    if (weight > 0) counted.push({ voter: v.from, vote: v.id, choice: v.body.choice, weight })
    else ignored.push({ voter: v.from, vote: v.id, reason: 'not-attested' })
  }
  counted.sort((a, b) => cmp(a.voter, b.voter))
  ignored.sort((a, b) => cmp(a.voter, b.voter) || cmp(a.vote, b.vote))
  const sum = (choice: VoteChoice): number => counted.filter((c) => c.choice === choice).reduce((n, c) => n + c.weight, 0)
  const yes = sum('yes')
  const no = sum('no')
  const abstain = sum('abstain')
  const quorum = Math.max(rules.quorum, p.quorum)
  const breach = ruleBreach(rules, proposalEnv)
  const outcome: Outcome = breach !== undefined ? 'invalid' : yes + no + abstain < quorum ? 'no-quorum' : yes > no ? 'passed' : 'rejected'
  const result = { proposal: id, parameter: p.parameter, value: p.value, deadline: p.deadline, quorum, yes, no, abstain, voters: counted.length, outcome, ...(breach !== undefined ? { breach } : {}), counted, ignored }
  return { ...result, digest: toBase64Url(createHash('sha256').update(canonicalBytes(result)).digest()) }
}

function disqualify (p: ParameterProposal, proposedAt: number, v: Envelope<Vote>): Tally['ignored'][number]['reason'] | undefined {
  const castAt = v.body.castAt
  if (castAt > v.ts || v.ts - castAt > VOTE_MAX_LAG_MS) return 'bad-timestamp'
  if (v.exp - v.ts > p.voteTtlMs) return 'ttl-too-long'
  if (castAt > p.deadline) return 'late'
  // Clocks differ: a vote cast right after the proposal arrived may carry a slightly earlier time.
  if (castAt < proposedAt - MAX_CLOCK_SKEW_MS) return 'before-proposal'
  return undefined
}

/** Plain code-unit order: locale-independent, so every node sorts alike. */
function cmp (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

export interface Decision { parameter: NetworkParameter, value: number, proposal: string, deadline: number }

/**
 * The parameter values that passed tallies set. When several passed proposals touch one parameter, the
 * one with the later deadline wins (ties: the larger proposal id), so the result does not depend on
 * the order in which nodes finalized them.
 */
export function resolveParameters (tallies: Iterable<Tally>): Map<NetworkParameter, Decision> {
  const out = new Map<NetworkParameter, Decision>()
  for (const t of tallies) {
    if (t.outcome !== 'passed') continue
    const held = out.get(t.parameter)
    if (held === undefined || t.deadline > held.deadline || (t.deadline === held.deadline && t.proposal > held.proposal)) {
      out.set(t.parameter, { parameter: t.parameter, value: t.value, proposal: t.proposal, deadline: t.deadline })
    }
  }
  return out
}
