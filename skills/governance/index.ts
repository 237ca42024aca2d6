import type { BaseChatModel } from '@langchain/core/language_models/chat_models'
import type { MeshNode } from '../../runtime/node/node.ts'
import { ChatModelChangeAuthor } from '../../governance/change-author.ts'
import type { ProposeOptions } from '../../governance/proposal.ts'
import { GovernanceStore, migrateGovernance } from '../../governance/store.ts'
import { cloneUrlOf, forgeFor } from '../../governance/settings.ts'

export { openPullRequestTool } from './open-pull-request.ts'
export { voteTools } from './vote-tools.ts'

export type ProposerSetup = { options: Omit<ProposeOptions, 'issue'> } | { unavailable: string }

/**
 * What `open_pull_request` needs on `node`, wired from config.governance, with `model` (the agent's
 * own chat model) writing the change; or why this node cannot propose: no governance section, the
 * keeper's node (its token merges), the owner turned it off, or no token.
 */
export async function proposerSetup (node: MeshNode, model: BaseChatModel): Promise<ProposerSetup> {
  const settings = node.config.governance
  if (settings === undefined) return { unavailable: 'config.json has no governance section' }
  if (settings.propose === false) return { unavailable: 'governance.propose is false' }
  if (settings.keeper && settings.propose !== true) return { unavailable: 'this is the quorum keeper\'s node: its token merges, and never authors what it merges' }
  let forge
  try {
    forge = forgeFor(settings)
  } catch (err) {
    return { unavailable: (err as Error).message }
  }
  await migrateGovernance(node.store.db)
  return {
    options: {
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
    }
  }
}
