import type { Command } from 'commander'
import type { CliContext, CliExtension } from '../runtime/cli/extension.ts'
import type { MeshNode } from '../runtime/node/node.ts'

// Keep this module cheap to import (the CLI loads it for --help): everything heavy loads in actions.

interface Opts { home?: string, name?: string, json?: boolean }

async function prs (home: string, json: boolean): Promise<void> {
  const { loadConfig } = await import('../runtime/config.ts')
  const { requireGovernance, forgeFor, keeperFor } = await import('./settings.ts')
  const { parseMarker, verifyMarker } = await import('./proposal.ts')
  const { votedReviewQuorum } = await import('./params.ts')
  const { table, printJson } = await import('../runtime/cli/format.ts')
  const config = await loadConfig(home)
  const settings = requireGovernance(config, home)
  const forge = forgeFor(settings)
  const keeper = keeperFor(settings, forge, async () => await votedReviewQuorum(home))
  const rows = []
  for (const pr of (await forge.listOpenPullRequests()).filter((p) => keeper.isAgentPr(p))) {
    const marker = parseMarker(pr.body)
    const { result, required } = await keeper.assess(pr)
    rows.push({
      number: pr.number,
      title: pr.title,
      url: pr.url,
      author: pr.author,
      agent: marker?.agent ?? null,
      peerId: marker?.peerId ?? null,
      signed: marker !== undefined && await verifyMarker(marker) && marker.head === pr.headSha,
      issue: marker?.issue ?? null,
      headSha: pr.headSha,
      state: result.state,
      approvals: result.approvers.length,
      required,
      approvers: result.approvers,
      blockers: result.blockers,
      stale: result.stale,
      checks: result.checks,
      reason: result.reason
    })
  }
  if (json) return printJson(rows)
  if (rows.length === 0) { console.log(`No open agent pull requests on ${settings.owner}/${settings.repo}.`); return }
  console.log(table(['PR', 'AGENT', 'ISSUE', 'HEAD', 'QUORUM', 'APPROVALS', 'WHY'], rows.map((r) => [
    `#${r.number}`, `${r.agent ?? r.author}${r.signed ? '' : ' (unsigned)'}`, r.issue === null ? '-' : `#${r.issue}`, r.headSha.slice(0, 7), r.state, `${r.approvals}/${r.required}`, r.reason
  ])))
}

async function proposals (home: string, json: boolean): Promise<void> {
  const { readGovernance } = await import('./params.ts')
  const { table, printJson } = await import('../runtime/cli/format.ts')
  const view = await readGovernance(home)
  if (json) return printJson(view)
  if (view.proposals.length === 0) console.log('No parameter proposals heard yet.')
  else {
    console.log(table(['PROPOSAL', 'PARAMETER', 'VALUE', 'DEADLINE', 'RESULT', 'YES/NO/ABST'], view.proposals.map((p) => [
      p.id.slice(0, 12), p.parameter, String(p.value), new Date(p.deadline).toISOString(), p.result?.outcome ?? 'open', p.result === undefined ? '-' : `${p.result.yes}/${p.result.no}/${p.result.abstain}`
    ])))
  }
  if (view.parameters.length > 0) {
    console.log('\nIn force:')
    for (const p of view.parameters) console.log(`  ${p.parameter} = ${p.value} (proposal ${p.proposal.slice(0, 12)})`)
  }
}

const extension: CliExtension = {
  name: 'governance',

  commands (program: Command, ctx: CliContext): void {
    ctx.homeOptions(program.command('prs'))
      .description('list the agents\' open pull requests with their human review quorum (approvals of the head commit, blockers, checks)')
      .addOption(ctx.jsonOption())
      .action(async (o: Opts) => { await prs(ctx.home(o), o.json === true) })

    ctx.homeOptions(program.command('proposals'))
      .description('list network-parameter proposals this node heard, their tallies, and the parameters in force')
      .addOption(ctx.jsonOption())
      .action(async (o: Opts) => { await proposals(ctx.home(o), o.json === true) })
  },

  async onStart (node: MeshNode) {
    const { VoteService } = await import('./votes.ts')
    const { rulesFromConfig } = await import('./rules.ts')
    const votes = new VoteService(node, rulesFromConfig(node.config.voting))
    await votes.start()
    let stopKeeper: (() => void) | undefined
    const settings = node.config.governance
    if (settings?.keeper === true) {
      const { forgeFor, keeperFor } = await import('./settings.ts')
      const forge = forgeFor(settings)
      const keeper = keeperFor(settings, forge, async () => (await votes.store.parameters()).find((p) => p.parameter === 'review-quorum')?.value, node.log.child('quorum-keeper'), votes.store)
      keeper.start(settings.keeperIntervalMs)
      stopKeeper = () => keeper.stop()
      node.log.info('quorum keeper running', { repo: `${settings.owner}/${settings.repo}`, required: settings.requiredApprovals, reviewers: settings.allowList.length })
    }
    return async () => { stopKeeper?.(); votes.stop() }
  }
}

export default extension
