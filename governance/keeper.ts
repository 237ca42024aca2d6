import type { Logger } from '../runtime/log.ts'
import type { QuorumRow } from './store.ts'
import { ForgeError, type KeeperForge, type PullRequest } from './forge.ts'
import { parseMarker } from './proposal.ts'
import { QUORUM_CONTEXT, evaluateQuorum, quorumStatus, type QuorumResult } from './quorum.ts'

export interface KeeperOptions {
  forge: KeeperForge
  allowList: readonly string[]
  /** The owners' floor; a voted `review-quorum` parameter may raise it (never lower it, nor past allowList.length). */
  requiredApprovals: number
  /** The network's voted review-quorum, if any (read on every pass, so a vote applies at once). */
  votedQuorum?: () => Promise<number | undefined>
  agentLogins: readonly string[]
  requireChecks?: boolean
  mergeMethod?: 'merge' | 'squash' | 'rebase'
  /** Keeps each decision (e.g. in the node's gov_quorum table, for the board). */
  record?: (pr: PullRequest, decision: KeeperDecision) => Promise<void>
  log?: Logger
}

export interface KeeperDecision {
  pr: number
  headSha: string
  result: QuorumResult
  required: number
  merged: boolean
  /** Why an approved PR was not merged (the head moved, GitHub refused…). */
  mergeError?: string
}

/**
 * The quorum keeper: for each open agent pull request it evaluates the review quorum on the current
 * head, publishes it as the `clawmesh/quorum` commit status, and merges when (and only when) the
 * quorum is met. It runs under its own GitHub identity, which must not be an agent's: the proposing
 * agent never merges, and a keeper that would be merging its own PR refuses.
 */
export class QuorumKeeper {
  private readonly posted = new Map<string, string>()
  private timer: NodeJS.Timeout | undefined
  private running: Promise<KeeperDecision[]> | undefined

  constructor (private readonly o: KeeperOptions) {
    const agents = new Set(o.agentLogins.map((l) => l.toLowerCase()))
    const overlap = o.allowList.filter((l) => agents.has(l.toLowerCase()))
    if (overlap.length > 0) throw new Error(`reviewers ${overlap.join(', ')} are configured both as humans (allowList) and as agents (agentLogins); an agent's approval never counts, so fix the configuration`)
    if (o.allowList.length < o.requiredApprovals) throw new Error(`${o.requiredApprovals} approvals are required but only ${o.allowList.length} reviewers are allow-listed: nothing could ever merge`)
  }

  /** Agent pull requests: opened by an agent account, or carrying a clawmesh proposal marker. */
  isAgentPr (pr: PullRequest): boolean {
    return this.o.agentLogins.some((l) => l.toLowerCase() === pr.author.toLowerCase()) || parseMarker(pr.body) !== undefined
  }

  /**
   * The owners' floor, raised by a voted review-quorum, but never past the number of allow-listed
   * reviewers: nothing voted may leave the humans unable to merge (a vote for 20 approvals with 3
   * reviewers left every PR "pending 3 of 20").
   */
  async required (): Promise<number> {
    const voted = await this.o.votedQuorum?.()
    return Math.min(Math.max(this.o.requiredApprovals, voted ?? 0), this.o.allowList.length)
  }

  /** One pass over the open agent pull requests; passes never overlap. */
  async tick (): Promise<KeeperDecision[]> {
    this.running ??= this.pass().finally(() => { this.running = undefined })
    return await this.running
  }

  start (intervalMs = 60_000): void {
    const loop = (): void => {
      this.tick().catch((err: unknown) => this.o.log?.error('quorum keeper pass failed', { error: (err as Error).message }))
        .finally(() => { if (this.timer !== undefined) this.timer = setTimeout(loop, intervalMs) })
    }
    this.timer = setTimeout(loop, 0)
  }

  stop (): void {
    clearTimeout(this.timer)
    this.timer = undefined
  }

  private async pass (): Promise<KeeperDecision[]> {
    const me = (await this.o.forge.whoami()).toLowerCase()
    if (this.o.agentLogins.some((l) => l.toLowerCase() === me)) throw new Error(`the quorum keeper runs as ${me}, an agent account; it must run under a separate identity`)
    const prs = (await this.o.forge.listOpenPullRequests()).filter((pr) => this.isAgentPr(pr))
    const out: KeeperDecision[] = []
    for (const pr of prs) {
      try {
        const decision = await this.decide(pr, me)
        out.push(decision)
        await this.o.record?.(pr, decision)
      } catch (err) {
        this.o.log?.warn('could not evaluate a pull request', { pr: pr.number, error: (err as Error).message })
      }
    }
    return out
  }

  /** The quorum of one pull request as it stands, without publishing or merging anything. */
  async assess (pr: PullRequest): Promise<{ result: QuorumResult, required: number }> {
    const required = await this.required()
    const [reviews, checks] = await Promise.all([this.o.forge.listReviews(pr.number), this.o.forge.listChecks(pr.headSha)])
    let result = evaluateQuorum({ headSha: pr.headSha, prAuthor: pr.author, reviews, allowList: this.o.allowList, required, agentLogins: this.o.agentLogins, checks, requireChecks: this.o.requireChecks })
    if (pr.draft && result.state === 'approved') result = { ...result, state: 'pending', reason: 'draft pull request' }
    return { result, required }
  }

  async decide (pr: PullRequest, me: string): Promise<KeeperDecision> {
    const assessed = await this.assess(pr)
    const required = assessed.required
    let result = assessed.result
    if (pr.author.toLowerCase() === me && result.state === 'approved') result = { ...result, state: 'pending', reason: `the keeper (${me}) opened this pull request and will not merge its own` }
    await this.publish(pr.headSha, result)
    const decision: KeeperDecision = { pr: pr.number, headSha: pr.headSha, result, required, merged: false }
    if (result.state !== 'approved') return decision
    try {
      // Passing the evaluated head makes GitHub refuse (409) if anyone pushed since we looked.
      const merged = await this.o.forge.mergePullRequest(pr.number, { sha: pr.headSha, method: this.o.mergeMethod ?? 'merge', title: `${pr.title} (#${pr.number})` })
      decision.merged = merged.merged
      this.o.log?.info('merged a pull request after human quorum', { pr: pr.number, head: pr.headSha, approvers: result.approvers.join(',') })
    } catch (err) {
      decision.mergeError = err instanceof ForgeError ? err.message : String(err)
      this.o.log?.warn('could not merge an approved pull request', { pr: pr.number, error: decision.mergeError })
    }
    return decision
  }

  private async publish (sha: string, result: QuorumResult): Promise<void> {
    const status = quorumStatus(result)
    const key = `${status.state}\u0000${status.description}`
    if (this.posted.get(sha) === key) return
    await this.o.forge.createCommitStatus(sha, { state: status.state, context: QUORUM_CONTEXT, description: status.description })
    this.posted.set(sha, key)
  }
}

/** A decision as a row of gov_quorum. */
export function quorumRow (repo: string, pr: PullRequest, d: Pick<KeeperDecision, 'result' | 'required' | 'merged'>): QuorumRow {
  return { repo, number: pr.number, title: pr.title, url: pr.url, author: pr.author, headSha: pr.headSha, state: d.merged ? 'merged' : d.result.state, approvals: d.result.approvers.length, required: d.required, reason: d.result.reason, merged: d.merged }
}
