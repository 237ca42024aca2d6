import type { Envelope } from '../protocols/envelope.ts'
import { NETWORK_PARAMETERS, VOTE_MAX_LAG_MS, type NetworkParameter, type ParameterProposal } from '../protocols/governance.ts'
import type { Config } from '../runtime/config.ts'

/**
 * The owners' rules for a vote, from their configuration: who votes and with what weight, how much
 * weight must take part, how long a vote stays open and which values each parameter may take. A
 * proposer chose all of these before (one peer passed review-quorum = 20 alone: quorum 1, a 1 s vote),
 * and one peer id was one vote (a thousand fresh keys, a thousand votes). Now a proposer chooses only
 * the parameter, the value and the vote envelopes' lifetime.
 */
export interface VotingRules {
  /** Owner-attested voters and their weights; everyone else weighs nothing. */
  voters: Readonly<Record<string, number>>
  /** Attested weight that must take part for a result to bind. */
  quorum: number
  votingPeriodMs: number
  bounds: Partial<Record<NetworkParameter, { min: number, max: number }>>
}

export function rulesFromConfig (voting: Config['voting']): VotingRules {
  return { voters: voting.voters, quorum: voting.quorum, votingPeriodMs: voting.votingPeriodMs, bounds: voting.bounds }
}

export function weightOf (rules: VotingRules, voter: string): number {
  return Object.hasOwn(rules.voters, voter) ? rules.voters[voter] : 0
}

/** The bounds of a parameter under these rules: the owners' where set, always within the protocol's. */
export function boundsOf (rules: VotingRules, parameter: NetworkParameter): { min: number, max: number } {
  const spec = NETWORK_PARAMETERS[parameter]
  const own = rules.bounds[parameter]
  return { min: Math.max(spec.min, own?.min ?? spec.min), max: Math.min(spec.max, own?.max ?? spec.max) }
}

/**
 * Why a proposal breaks the owners' rules, or undefined. The period is measured from the proposal's own
 * signed time, less the lag allowed between deciding on a deadline and sealing the envelope.
 */
export function ruleBreach (rules: VotingRules, proposal: Envelope<ParameterProposal>): string | undefined {
  const p = proposal.body
  const { min, max } = boundsOf(rules, p.parameter)
  if (p.value < min || p.value > max) return `${p.parameter} = ${p.value} is outside the owners' bounds [${min}, ${max}]`
  const period = p.deadline - proposal.ts
  if (period < rules.votingPeriodMs - VOTE_MAX_LAG_MS) return `the vote lasts ${period} ms; the owners' voting period is ${rules.votingPeriodMs} ms`
  return undefined
}
