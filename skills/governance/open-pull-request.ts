import { z } from 'zod'
import { tool, type StructuredToolInterface } from '@langchain/core/tools'
import { proposeForIssue, type ProposeOptions, type ProposeOutcome } from '../../governance/proposal.ts'
import { proposerView } from '../../governance/forge.ts'

export const OpenPullRequestInput = z.object({
  issue: z.number().int().positive().optional().describe('The issue to work on; leave out to take the oldest open task issue that has no agent pull request yet.')
}).strict()

/**
 * The `open_pull_request` skill: an agent turns a task issue into a tested pull request. The tool is
 * built with a ProposerForge only (proposerView strips anything else), so no prompt can make it merge:
 * merging belongs to the quorum keeper, after humans approve.
 */
export function openPullRequestTool (opts: Omit<ProposeOptions, 'issue'>, onOutcome?: (o: ProposeOutcome) => void): StructuredToolInterface {
  const base = { ...opts, forge: proposerView(opts.forge) }
  return tool(async ({ issue }) => {
    const outcome = await proposeForIssue({ ...base, issue })
    onOutcome?.(outcome)
    switch (outcome.status) {
      case 'opened':
        return `Opened pull request #${outcome.pr.number} (${outcome.pr.url}) for issue #${outcome.issue.number}; \`${outcome.tests.command}\` passed. It merges only after the human review quorum approves it.`
      case 'tests-failed':
        return `No pull request: the project's tests failed on the change for issue #${outcome.issue.number} (exit ${outcome.tests.exitCode}).\n${outcome.tests.outputTail.slice(-1500)}`
      case 'no-task':
        return `No pull request: ${outcome.reason}.`
    }
  }, {
    name: 'open_pull_request',
    description: 'Write a change for a task issue of the shared repository in a temporary clone, run the project\'s tests, and open a pull request if they pass.',
    schema: OpenPullRequestInput
  })
}
