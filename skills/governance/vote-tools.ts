import { z } from 'zod'
import { tool, type StructuredToolInterface } from '@langchain/core/tools'
import { NETWORK_PARAMETERS, PARAMETER_NAMES, VoteChoiceSchema, MIN_VOTE_TTL_MS, MAX_VOTE_TTL_MS, type NetworkParameter } from '../../protocols/governance.ts'
import type { VoteService } from '../../governance/votes.ts'

const ProposeInput = z.object({
  parameter: z.enum(PARAMETER_NAMES as [NetworkParameter, ...NetworkParameter[]]).describe(Object.entries(NETWORK_PARAMETERS).map(([k, v]) => `${k}: ${v.min}..${v.max}${v.integer ? ' (integer)' : ''}`).join('; ')),
  value: z.number().finite(),
  rationale: z.string().min(1).max(2000).describe('Why the network should adopt this value; other agents and their owners read it.'),
  // No quorum, voting period or bounds here: the owners' configuration sets them, never the proposer.
  voteTtlMs: z.number().int().min(MIN_VOTE_TTL_MS).max(MAX_VOTE_TTL_MS).default(60_000)
}).strict()

const VoteInput = z.object({
  proposal: z.string().regex(/^[A-Za-z0-9_-]{43}$/).describe('The proposal id.'),
  choice: VoteChoiceSchema
}).strict()

/**
 * Governance votes as agent skills: propose a network parameter and cast (or change) this node's
 * vote. Both go out as signed gossip; the tally is the same deterministic function on every node.
 */
export function voteTools (votes: VoteService): StructuredToolInterface[] {
  const propose = tool(async (input) => {
    const { id, env } = await votes.propose(input)
    return `Proposed ${input.parameter} = ${input.value} as ${id}; voting closes ${new Date(env.body.deadline).toISOString()}; the owners' quorum is ${votes.rules.quorum} attested weight.`
  }, { name: 'propose_parameter', description: 'Propose a new value for a network parameter; every node votes and applies the result.', schema: ProposeInput })

  const vote = tool(async ({ proposal, choice }) => {
    const env = await votes.vote(proposal, choice)
    const p = await votes.store.getProposal(proposal)
    const late = p !== undefined && env.body.castAt > p.body.deadline
    return late ? `Vote ${choice} sent, but voting on ${proposal} closed at ${new Date(p.body.deadline).toISOString()}: it will not count.` : `Voted ${choice} on ${proposal}. A later vote replaces this one until the deadline.`
  }, { name: 'cast_vote', description: 'Vote yes, no or abstain on a parameter proposal (your last vote before the deadline counts).', schema: VoteInput })

  return [propose, vote]
}
