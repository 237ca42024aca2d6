import type { MeshNode } from '../runtime/node/node.ts'
import type { Logger } from '../runtime/log.ts'
import type { ProposeOptions, ProposeOutcome } from '../governance/proposal.ts'
import { sandboxMode } from '../governance/sandbox.ts'
import { openPullRequestTool, proposerSetup } from '../skills/governance/index.ts'
import { machineIsIdle } from '../skills/market/policy-guard.ts'
import { OfflineNegotiator } from './brains/offline.ts'
import type { Brain } from './brains/providers.ts'

/** What the contributor needs of its ClawBot: whether the owner lets it work, and whether it is busy. */
export interface ContributingAgent {
  /** Why the agent takes no new work (the owner paused it, the kill switch), or undefined. */
  readonly halted: string | undefined
  /** A market turn is queued or running: negotiations come first. */
  readonly busy: boolean
  readonly owner: { allowsWorkAt: (now: Date) => boolean, current: () => { idleOnly: boolean } }
}

export interface ContributorOptions {
  agent: ContributingAgent
  /** What open_pull_request needs (proposerSetup); each run adds its own abort signal. */
  propose: Omit<ProposeOptions, 'issue' | 'exclude' | 'signal'>
  /** The rest between two looks for a task (from the end of the last one). */
  intervalMs: number
  log: Logger
  /** Told of every finished run (the node's activity feed, tests). */
  onOutcome?: (o: ProposeOutcome) => void
  /** How often a run in hand checks for the owner's pause (default 500 ms). */
  watchMs?: number
  /** For the owner's idleOnly (default: the load average, as the market's guard reads it). */
  machineIdle?: () => boolean
}

/**
 * The agent's work on the shared code: when it is idle, allowed to work by its owner and its rest is
 * over, it uses its `open_pull_request` skill on one labelled issue, never two at once. A pause or the
 * kill switch stops the issue in hand at its next step (the sandboxed test run is killed, no branch
 * is pushed). It runs beside the market queue, not in it: a test run may take minutes, and the
 * agent's negotiations must not wait for it.
 */
export class Contributor {
  private watch: NodeJS.Timeout | undefined
  private run: { abort: AbortController, done: Promise<void> } | undefined
  private nextAt = 0
  private stopped = false
  /** Issues whose change failed its tests here: not taken again in this run of the node (each try costs LLM calls). */
  private readonly failed = new Set<number>()

  constructor (private readonly o: ContributorOptions) {}

  start (): void {
    this.watch = setInterval(() => { this.check() }, this.o.watchMs ?? 500)
  }

  /** An issue is in hand. */
  get working (): boolean {
    return this.run !== undefined
  }

  /** Takes no new issue, stops the one in hand at its next step and waits for it. */
  async stop (): Promise<void> {
    this.stopped = true
    clearInterval(this.watch)
    const run = this.run
    if (run === undefined) return
    run.abort.abort(new Error('the agent is stopping'))
    await run.done
  }

  private check (): void {
    if (this.stopped) return
    const halted = this.o.agent.halted
    if (this.run !== undefined) {
      if (halted !== undefined && !this.run.abort.signal.aborted) this.run.abort.abort(new Error(halted))
      return
    }
    const now = Date.now()
    if (halted !== undefined || now < this.nextAt || this.o.agent.busy || !this.ownerAllows(now)) return
    const abort = new AbortController()
    const done = this.takeOne(abort.signal).finally(() => {
      this.run = undefined
      this.nextAt = Date.now() + this.o.intervalMs
    })
    this.run = { abort, done }
  }

  /** The owner's hours, and idleOnly: a test run loads the machine as much as serving layers does. */
  private ownerAllows (now: number): boolean {
    const owner = this.o.agent.owner
    return owner.allowsWorkAt(new Date(now)) && (!owner.current().idleOnly || (this.o.machineIdle ?? machineIsIdle)())
  }

  private async takeOne (signal: AbortSignal): Promise<void> {
    let outcome: ProposeOutcome | undefined
    try {
      const skill = openPullRequestTool({ ...this.o.propose, exclude: [...this.failed], signal }, (o) => { outcome = o })
      // Through the skill, as an LLM would call it; no signal in the call's config, since LangChain
      // would then settle the call at once on abort while the work still winds down, and a second
      // issue could start beside it.
      await skill.invoke({})
    } catch (err) {
      if (signal.aborted) this.o.log.info('stopped working on a task issue', { reason: (signal.reason as Error).message })
      else this.o.log.warn('could not propose a change for a task issue', { error: (err as Error).message })
      return
    }
    if (outcome === undefined) return
    if (outcome.status === 'tests-failed') this.failed.add(outcome.issue.number)
    if (outcome.status === 'no-task') this.o.log.debug('no task issue to take', { reason: outcome.reason })
    else this.o.log.info(outcome.status === 'opened' ? 'opened a pull request' : 'the change failed its tests; not proposed', { issue: outcome.issue.number, pr: outcome.status === 'opened' ? outcome.pr.url : undefined })
    this.o.onOutcome?.(outcome)
  }
}

/**
 * Starts the node's contributor when config.governance lets this agent propose, or says in the log
 * why not: no governance section (silent), the keeper's node, no token, a brain that cannot write
 * code (the offline negotiator), or no sandbox for the tests of agent-written code without the
 * owner's governance.allowUnsandboxedTests.
 */
export async function startContributor (node: MeshNode, agent: ContributingAgent & { brain: Brain }): Promise<Contributor | undefined> {
  const settings = node.config.governance
  if (settings === undefined) return undefined
  const log = node.log.child('contributor')
  if (agent.brain.model instanceof OfflineNegotiator) {
    log.info('not taking task issues: the offline negotiator writes no code (configure agent.llm)')
    return undefined
  }
  const setup = await proposerSetup(node, agent.brain.model)
  if ('unavailable' in setup) {
    log[settings.keeper || settings.propose === false ? 'info' : 'warn']('not taking task issues', { reason: setup.unavailable })
    return undefined
  }
  const sandbox = sandboxMode()
  if ('unavailable' in sandbox && !settings.allowUnsandboxedTests) {
    log.warn('not taking task issues: this machine has no sandbox for the tests of agent-written code, and governance.allowUnsandboxedTests is off', { why: sandbox.unavailable })
    return undefined
  }
  const contributor = new Contributor({
    agent,
    propose: setup.options,
    intervalMs: settings.proposeIntervalMs,
    log,
    onOutcome: (o) => {
      if (o.status !== 'opened') return
      void node.activity.record('governance', `opened pull request #${o.pr.number} for issue #${o.issue.number}`, { pr: o.pr.url, issue: o.issue.number, head: o.headSha })
        .catch((err: unknown) => log.warn('could not record the pull request', { error: (err as Error).message }))
    }
  })
  contributor.start()
  log.info('taking task issues', { repo: `${settings.owner}/${settings.repo}`, label: settings.label, restS: settings.proposeIntervalMs / 1000 })
  return contributor
}
