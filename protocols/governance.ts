import { createHash } from 'node:crypto'
import { z } from 'zod'
import { defineKind, type Envelope } from './envelope.ts'
import { canonicalBytes, toBase64Url } from './encoding.ts'
import { MAX_TTL_MS } from './version.ts'

/**
 * Network parameters that the mesh decides by vote. Each has bounds so that a passed proposal can
 * never put the network into a state the software cannot run in (a zero quorum, a negative price).
 */
export const NETWORK_PARAMETERS = {
  /** Fraction of every payment that goes to the network's common pool. */
  'network-fee': { min: 0, max: 0.5, integer: false },
  /** Credits per million layer-tokens below which no offer is valid on the network. */
  'min-price': { min: 0, max: 1_000_000, integer: false },
  /** Distinct human approvals a pull request needs before the quorum keeper merges it. */
  'review-quorum': { min: 1, max: 20, integer: true }
} as const satisfies Record<string, { min: number, max: number, integer: boolean }>

export type NetworkParameter = keyof typeof NETWORK_PARAMETERS
export const PARAMETER_NAMES = Object.keys(NETWORK_PARAMETERS) as NetworkParameter[]

/** A vote's own timestamp may precede its envelope's by at most this much (sign, then seal). */
export const VOTE_MAX_LAG_MS = 1000
/** Bounds on how long a vote envelope may live; the proposal picks a value in this range. */
export const MIN_VOTE_TTL_MS = 500
export const MAX_VOTE_TTL_MS = MAX_TTL_MS
/** Voting periods shorter than this leave no time for gossip; longer ones are not a heartbeat's business. */
export const MIN_VOTING_PERIOD_MS = 1000
export const MAX_VOTING_PERIOD_MS = 30 * 24 * 3600_000

export const ParameterProposalSchema = z.object({
  parameter: z.enum(PARAMETER_NAMES as [NetworkParameter, ...NetworkParameter[]]),
  value: z.number().finite(),
  rationale: z.string().max(2000),
  /** Milliseconds since the epoch; votes cast after it do not count. */
  deadline: z.number().int().positive(),
  /** Distinct voters needed for the result to bind. */
  quorum: z.number().int().min(1).max(10_000),
  /**
   * Longest lifetime a vote envelope may have to count. Once the deadline plus this (plus the lag) has
   * passed on a node's clock, no countable vote can still be accepted there, so the node can finalize
   * without waiting for anyone: that is what makes the tally the same everywhere.
   */
  voteTtlMs: z.number().int().min(MIN_VOTE_TTL_MS).max(MAX_VOTE_TTL_MS)
}).strict().superRefine((p, ctx) => {
  const spec = NETWORK_PARAMETERS[p.parameter]
  if (p.value < spec.min || p.value > spec.max) ctx.addIssue({ code: 'custom', path: ['value'], message: `${p.parameter} must be within [${spec.min}, ${spec.max}]` })
  if (spec.integer && !Number.isInteger(p.value)) ctx.addIssue({ code: 'custom', path: ['value'], message: `${p.parameter} must be an integer` })
})

export const VoteChoiceSchema = z.enum(['yes', 'no', 'abstain'])

export const VoteSchema = z.object({
  /** The proposal's id: see proposalId(). */
  proposal: z.string().regex(/^[A-Za-z0-9_-]{43}$/),
  choice: VoteChoiceSchema,
  /** When the voter cast it (ms since the epoch), signed with the rest of the envelope. */
  castAt: z.number().int().positive()
}).strict()

export type ParameterProposal = z.infer<typeof ParameterProposalSchema>
export type Vote = z.infer<typeof VoteSchema>
export type VoteChoice = z.infer<typeof VoteChoiceSchema>

export const ParameterProposalKind = defineKind('gov-proposal', ParameterProposalSchema, MAX_TTL_MS)
/** The default lifetime only; a vote counts when its lifetime fits the proposal's voteTtlMs. */
export const VoteKind = defineKind('gov-vote', VoteSchema, 10_000)

/**
 * A proposal is named by the hash of its signed envelope: a vote then refers to exactly one set of
 * terms by one author, and nobody can publish different terms under the same id.
 */
export function proposalId (env: Envelope<ParameterProposal>): string {
  return toBase64Url(createHash('sha256').update(canonicalBytes(env)).digest())
}
