import { createHash } from 'node:crypto'
import { canonicalBytes, toBase64Url } from '../protocols/encoding.ts'
import type { Envelope } from '../protocols/envelope.ts'
import { MAX_CLOCK_SKEW_MS } from '../protocols/version.ts'
import {
  VOTE_MAX_LAG_MS, proposalId, type NetworkParameter, type ParameterProposal, type Vote, type VoteChoice
} from '../protocols/governance.ts'

/**
 * The vote-counting rules. Every input here is signed data, never a node's receipt time or arrival
 * order, so any node holding the same set of envelopes computes the same result byte for byte:
 *
 * - one voter = one peer id (the envelope's verified author);
 * - a vote counts only if cast at or before the deadline and not before the proposal was made (less
 *   the allowed clock skew), by the
 *   vote's own castAt, which must lie within [env.ts - VOTE_MAX_LAG_MS, env.ts]: a voter cannot claim a
 *   castAt later than the moment it signed the envelope, nor backdate it by more than the lag;
 * - its envelope may live at most the proposal's voteTtlMs, so after deadline + lag + voteTtlMs no node
 *   can accept a countable vote any more and each can finalize on its own clock;
 * - a voter may change their mind: their last countable vote (highest castAt; ties broken by the
 *   larger envelope id) is the one that counts; exact duplicates are the same envelope and count once;
 * - quorum: at least `quorum` distinct voters, abstentions included; passed: quorum met and strictly
 *   more yes than no.
 */
export type Outcome = 'passed' | 'rejected' | 'no-quorum'

export interface Tally {
  proposal: string
  parameter: NetworkParameter
  value: number
  deadline: number
  quorum: number
  yes: number
  no: number
  abstain: number
  voters: number
  outcome: Outcome
  /** The vote that counted for each voter (peer id → envelope id), sorted by peer id. */
  counted: Array<{ voter: string, vote: string, choice: VoteChoice }>
  /** Envelopes that did not count and why, sorted; duplicates of a counted envelope are not listed. */
  ignored: Array<{ voter: string, vote: string, reason: 'late' | 'before-proposal' | 'bad-timestamp' | 'ttl-too-long' | 'superseded' }>
  /** SHA-256 of the canonical JSON of everything above: equal digests, equal tallies. */
  digest: string
}

/** The moment (on the local clock) after which this proposal's tally can no longer change. */
export function finalizeAt (proposal: ParameterProposal): number {
  return proposal.deadline + VOTE_MAX_LAG_MS + proposal.voteTtlMs
}

export function tallyVotes (proposalEnv: Envelope<ParameterProposal>, votes: Iterable<Envelope<Vote>>): Tally {
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

  const counted = [...latest.values()].map((v) => ({ voter: v.from, vote: v.id, choice: v.body.choice }))
  counted.sort((a, b) => cmp(a.voter, b.voter))
  ignored.sort((a, b) => cmp(a.voter, b.voter) || cmp(a.vote, b.vote))
  const yes = counted.filter((c) => c.choice === 'yes').length
  const no = counted.filter((c) => c.choice === 'no').length
  const abstain = counted.length - yes - no
  const outcome: Outcome = counted.length < p.quorum ? 'no-quorum' : yes > no ? 'passed' : 'rejected'
  const result = { proposal: id, parameter: p.parameter, value: p.value, deadline: p.deadline, quorum: p.quorum, yes, no, abstain, voters: counted.length, outcome, counted, ignored }
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
