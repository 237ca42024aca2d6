import type { BaseChatModel } from '@langchain/core/language_models/chat_models'
import type { StructuredToolInterface } from '@langchain/core/tools'
import type { MeshNode } from '../../runtime/node/node.ts'
import { ChatModelChangeAuthor } from '../../governance/change-author.ts'
import { GovernanceStore, migrateGovernance } from '../../governance/store.ts'
import { cloneUrlOf, forgeFor } from '../../governance/settings.ts'
import type { VoteService } from '../../governance/votes.ts'
import { openPullRequestTool } from './open-pull-request.ts'
import { voteTools } from './vote-tools.ts'

export { openPullRequestTool } from './open-pull-request.ts'
export { voteTools } from './vote-tools.ts'

/**
 * The governance skills for an agent running on `node`, wired from its config: `open_pull_request`
 * (only when config.governance names a repository and a token is available) and the vote tools.
 * The change is written by `model`, the agent's own chat model.
 */
export async function governanceSkills (node: MeshNode, model: BaseChatModel, votes?: VoteService): Promise<StructuredToolInterface[]> {
  const tools: StructuredToolInterface[] = votes !== undefined ? voteTools(votes) : []
  const settings = node.config.governance
  if (settings === undefined) return tools
  let forge
  try {
    forge = forgeFor(settings)
  } catch (err) {
    // No token: the agent still votes; it just cannot propose code until its owner provides one.
    node.log.warn('open_pull_request is unavailable', { reason: (err as Error).message })
    return tools
  }
  await migrateGovernance(node.store.db)
  tools.push(openPullRequestTool({
    forge,
    author: new ChatModelChangeAuthor(model),
    agent: { name: node.config.name, key: node.key },
    cloneUrl: cloneUrlOf(settings),
    label: settings.label,
    baseBranch: settings.baseBranch,
    testCommand: settings.testCommand,
    allowUnsandboxedTests: settings.allowUnsandboxedTests,
    store: new GovernanceStore(node.store.db),
    log: node.log.child('governance')
  }))
  return tools
}
