import type { Envelope } from '../protocols/envelope.ts'
import {
  ParameterProposalKind, ParameterProposalSchema, VoteKind, proposalId, type ParameterProposal, type Vote, type VoteChoice
} from '../protocols/governance.ts'
import { boundsOf, type VotingRules } from './rules.ts'
import type { GossipBus } from '../runtime/node/gossip.ts'
import type { Logger } from '../runtime/log.ts'
import { GovernanceStore, migrateGovernance, type GovernanceDb } from './store.ts'
import { finalizeAt, resolveParameters, tallyVotes, type Tally } from './tally.ts'

/** What the vote service needs from a started MeshNode (kept narrow so tests can see the seam). */
export interface VoteNode {
  bus: GossipBus | undefined
  store: { db: GovernanceDb }
  log: Logger
}

/** What a proposer chooses: the parameter, its value, why, and how long vote envelopes may live. */
export type ProposalInput = Pick<ParameterProposal, 'parameter' | 'value' | 'rationale' | 'voteTtlMs'>

/**
 * Parameter votes over gossip. Proposals and votes are stored as signed envelopes the moment they are
 * accepted (in any order); each node finalizes a proposal on its own clock once no countable vote can
 * arrive any more (see finalizeAt), tallies what it holds with the pure tallyVotes, stores the result
 * and applies it to network_params. Nodes never exchange results: they agree because the rules and the
 * inputs are the same.
 */
export class VoteService {
  readonly store: GovernanceStore
  private readonly timers = new Map<string, NodeJS.Timeout>()
  private readonly finalizing = new Map<string, Promise<Tally | undefined>>()
  private readonly listeners: Array<(t: Tally) => void> = []
  private stopped = false

  constructor (private readonly node: VoteNode, readonly rules: VotingRules, private readonly now: () => number = Date.now) {
    this.store = new GovernanceStore(node.store.db)
  }

  private get bus (): GossipBus {
    if (this.node.bus === undefined) throw new Error('the vote service needs a started node (node.bus is undefined)')
    return this.node.bus
  }

  async start (): Promise<void> {
    await migrateGovernance(this.node.store.db)
    this.bus.subscribe(ParameterProposalKind, async (env) => { await this.acceptProposal(env) })
    this.bus.subscribe(VoteKind, async (env) => { await this.acceptVote(env) })
    // Proposals heard before a restart still need their result.
    for (const p of await this.store.unfinalized()) this.schedule(p.id, p.env.body)
  }

  stop (): void {
    this.stopped = true
    for (const t of this.timers.values()) clearTimeout(t)
    this.timers.clear()
  }

  onResult (fn: (t: Tally) => void): void {
    this.listeners.push(fn)
  }

  /**
   * Proposes a value under the owners' rules: their voting period and quorum go into the proposal, and
   * a value outside their bounds is refused here rather than published to be voted invalid everywhere.
   */
  async propose (input: ProposalInput): Promise<{ id: string, env: Envelope<ParameterProposal> }> {
    const { min, max } = boundsOf(this.rules, input.parameter)
    if (input.value < min || input.value > max) throw new RangeError(`${input.parameter} = ${input.value} is outside the owners' bounds [${min}, ${max}] (voting.bounds in config.json)`)
    const body = ParameterProposalSchema.parse({ ...input, deadline: this.now() + this.rules.votingPeriodMs, quorum: Math.min(this.rules.quorum, 10_000) })
    const env = await this.bus.publish(ParameterProposalKind, body)
    const id = proposalId(env)
    await this.acceptProposal(env)
    return { id, env }
  }

  /** Casts (or changes) this node's vote; the envelope lives exactly as long as the proposal allows. */
  async vote (proposal: string, choice: VoteChoice): Promise<Envelope<Vote>> {
    const p = await this.store.getProposal(proposal)
    if (p === undefined) throw new Error(`unknown proposal ${proposal}: it has not reached this node (yet)`)
    const env = await this.bus.publish(VoteKind, { proposal, choice, castAt: Date.now() }, { ttlMs: p.body.voteTtlMs })
    await this.store.saveVote(env)
    return env
  }

  /** The tally as it stands (final once the proposal is finalized). */
  async tally (proposal: string): Promise<Tally> {
    const p = await this.store.getProposal(proposal)
    if (p === undefined) throw new Error(`unknown proposal ${proposal}`)
    return tallyVotes(p, await this.store.votesFor(proposal), this.rules)
  }

  /** Finalizes now if the proposal's time has come; returns the stored result, if any. */
  async finalize (id: string): Promise<Tally | undefined> {
    const running = this.finalizing.get(id)
    if (running !== undefined) return await running
    const job = this.doFinalize(id).finally(() => this.finalizing.delete(id))
    this.finalizing.set(id, job)
    return await job
  }

  private async doFinalize (id: string): Promise<Tally | undefined> {
    const done = await this.store.getResult(id)
    if (done !== undefined) return done
    const p = await this.store.getProposal(id)
    if (p === undefined) return undefined
    if (this.now() < finalizeAt(p.body)) { this.schedule(id, p.body); return undefined }
    const tally = tallyVotes(p, await this.store.votesFor(id), this.rules)
    if (await this.store.finalize(tally, resolveParameters, this.now())) {
      this.node.log.info('proposal finalized', { proposal: id, parameter: tally.parameter, value: tally.value, outcome: tally.outcome, yes: tally.yes, no: tally.no, voters: tally.voters })
      for (const fn of this.listeners) fn(tally)
    }
    return await this.store.getResult(id)
  }

  private async acceptProposal (env: Envelope<ParameterProposal>): Promise<void> {
    const id = proposalId(env)
    if (await this.store.saveProposal(id, env)) this.schedule(id, env.body)
  }

  private async acceptVote (env: Envelope<Vote>): Promise<void> {
    await this.store.saveVote(env)
  }

  private schedule (id: string, p: ParameterProposal): void {
    if (this.stopped) return
    clearTimeout(this.timers.get(id))
    // +1 ms: finalizeAt is the last instant a countable vote may still be accepted.
    const delay = Math.max(0, finalizeAt(p) - this.now() + 1)
    // setTimeout caps at about 24.8 days; a longer wait simply re-schedules when it fires.
    this.timers.set(id, setTimeout(() => {
      this.timers.delete(id)
      this.finalize(id).catch((err: unknown) => this.node.log.error('could not finalize a proposal', { proposal: id, error: (err as Error).message }))
    }, Math.min(delay, 2 ** 31 - 1)))
  }
}
