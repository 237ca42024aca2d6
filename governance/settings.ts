import type { Config } from '../runtime/config.ts'
import { OctokitForge } from './octokit-forge.ts'
import { QuorumKeeper, quorumRow } from './keeper.ts'
import type { GovernanceStore } from './store.ts'
import type { Logger } from '../runtime/log.ts'

export type GovernanceSettings = NonNullable<Config['governance']>

/** The forge token: the environment first (never written to disk), then the config file. */
export function forgeToken (settings: GovernanceSettings, env: NodeJS.ProcessEnv = process.env): string {
  const token = env.CLAWMESH_GITHUB_TOKEN ?? env.GITHUB_TOKEN ?? settings.token
  if (token === undefined || token === '') {
    throw new Error(`no GitHub token for ${settings.owner}/${settings.repo}: set CLAWMESH_GITHUB_TOKEN (or GITHUB_TOKEN), or governance.token in config.json`)
  }
  return token
}

export function requireGovernance (config: Config, home: string): GovernanceSettings {
  if (config.governance === undefined) {
    throw new Error(`governance is not configured for ${home}: add a "governance" object (owner, repo, allowList, …) to ${home}/config.json`)
  }
  return config.governance
}

export function forgeFor (settings: GovernanceSettings, env: NodeJS.ProcessEnv = process.env): OctokitForge {
  return new OctokitForge({ owner: settings.owner, repo: settings.repo, baseUrl: settings.baseUrl, token: forgeToken(settings, env) })
}

export function cloneUrlOf (settings: GovernanceSettings): string {
  return settings.cloneUrl ?? `https://github.com/${settings.owner}/${settings.repo}.git`
}

export function keeperFor (settings: GovernanceSettings, forge: OctokitForge, votedQuorum?: () => Promise<number | undefined>, log?: Logger, store?: GovernanceStore): QuorumKeeper {
  return new QuorumKeeper({
    forge,
    allowList: settings.allowList,
    requiredApprovals: settings.requiredApprovals,
    agentLogins: settings.agentLogins,
    requireChecks: settings.requireChecks,
    votedQuorum,
    record: store === undefined ? undefined : async (pr, d) => { await store.recordQuorum(quorumRow(`${settings.owner}/${settings.repo}`, pr, d)) },
    log
  })
}
