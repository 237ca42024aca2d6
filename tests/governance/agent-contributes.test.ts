import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { fakeModel, type FakeBuiltModel } from '@langchain/core/testing'
import type { BaseMessage } from '@langchain/core/messages'
import { Octokit } from 'octokit'
import { startAgentFor, type RunningAgent } from '../../agents/cli.ts'
import { OctokitForge } from '../../governance/octokit-forge.ts'
import { QuorumKeeper } from '../../governance/keeper.ts'
import type { PullRequest } from '../../governance/forge.ts'
import { parseMarker, verifyMarker } from '../../governance/proposal.ts'
import { GovernanceSettingsSchema } from '../../runtime/config.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { GitHubStandIn } from '../helpers/github/stand-in.ts'
import { change, makeUpstream } from '../helpers/github/upstream.ts'
import { openNode, tempDir, waitFor } from '../helpers/mesh.ts'

const OWNER = 'clawmesh-net'
const REPO = 'shared'
const LABEL = 'clawmesh-task'
const TOKENS = {
  'tok-alice': { login: 'clawbot-alice' },
  'tok-keeper': { login: 'clawmesh-keeper' },
  'tok-ann': { login: 'ann' },
  'tok-ben': { login: 'ben' },
  'tok-ci': { login: 'ci-runner' }
}
const HUMANS = ['ann', 'ben']

/**
 * A "coder" LLM that answers the change author with a fixed patch per issue, and notes how many pull
 * requests were open on the forge when each change was asked for (one issue at a time means: the
 * next change is asked for only after the previous PR exists).
 */
function coder (gh: () => GitHubStandIn, prsWhenAsked: number[]): FakeBuiltModel {
  const model = fakeModel()
  for (let i = 0; i < 5; i++) {
    model.respond((messages: BaseMessage[]) => {
      prsWhenAsked.push(gh().log.filter((l) => l.op === 'pulls/create' && l.status === 201).length)
      const prompt = messages.map((m) => String(m.content)).join('\n')
      return /Add max\(\)/.test(prompt)
        ? change('Add max()', [{ path: 'max.mjs', content: 'export const max = (...xs) => Math.max(...xs)\n' }], `max-${i}`)
        : change('Add product()', [{ path: 'product.mjs', content: 'export const product = (...xs) => xs.reduce((a, b) => a * b, 1)\n' }], `product-${i}`)
    })
  }
  return model
}

describe('a running ClawBot with a governance section proposes pull requests (clawmesh start\'s wiring)', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let gh: GitHubStandIn
  let upstream: string
  let node: MeshNode
  let agent: RunningAgent
  const prsWhenAsked: number[] = []
  const model = coder(() => gh, prsWhenAsked)
  const octokitAs = (token: keyof typeof TOKENS): Octokit => new Octokit({ auth: token, baseUrl: gh.baseUrl, retry: { enabled: false }, throttle: { enabled: false } })
  const keeperForge = (): OctokitForge => new OctokitForge({ owner: OWNER, repo: REPO, token: 'tok-keeper', baseUrl: gh.baseUrl })
  const opened = async (): Promise<PullRequest[]> => (await keeperForge().listOpenPullRequests()).sort((a, b) => a.number - b.number)

  beforeAll(async () => {
    dir = await tempDir('clawmesh-contrib-')
    upstream = join(dir.path, 'upstream')
    mkdirSync(upstream)
    makeUpstream(upstream)
    gh = await new GitHubStandIn({ owner: OWNER, repo: REPO, users: TOKENS, mergers: ['clawmesh-keeper'] }).start()
    gh.importRepository(upstream)
    node = await openNode(join(dir.path, 'alice'), 'alice', {
      governance: {
        owner: OWNER, repo: REPO, baseUrl: gh.baseUrl, cloneUrl: upstream, token: 'tok-alice', label: LABEL,
        allowList: HUMANS, agentLogins: ['clawbot-alice'], requiredApprovals: 2,
        // Slow enough for the owner's pause to land while the tests of the change run.
        testCommand: 'sleep 2 && node --test',
        proposeIntervalMs: 1000
      }
    })
    await node.start()
    agent = await startAgentFor(node, { brain: { model, label: 'fake-coder' } })
  }, 60_000)
  afterAll(async () => {
    await agent?.stop()
    await node?.stop()
    await gh?.stop()
    await dir?.cleanup()
  })

  it('takes labelled issues one at a time, stops when its owner pauses it, and its PR merges only under the quorum', async () => {
    expect(agent.contributor).toBeDefined()
    const product = gh.addIssue('Add product()', 'product(...xs) next to sum.mjs', [LABEL])
    const max = gh.addIssue('Add max()', 'max(...xs) next to sum.mjs', [LABEL])
    gh.addIssue('Roadmap', 'not a task for agents', [])

    // It takes the oldest task; the owner pauses it (the board's control) while the change's tests run.
    await waitFor('a change to be written', async () => model.callCount >= 1, 20_000, 50)
    await node.controls.pause('testing the pause')
    await waitFor('the work in hand to stop', async () => agent.contributor?.working === false, 10_000, 50)
    await new Promise((resolve) => setTimeout(resolve, 2500))
    expect(model.callCount).toBe(1)
    expect(gh.log.filter((l) => l.login === 'clawbot-alice').map((l) => l.op)).not.toContain('git/create-ref')
    expect(await opened()).toEqual([])

    // Resumed, it takes the same issue again, then the next one, each after the previous PR is open.
    await node.controls.resume()
    await waitFor('two pull requests', async () => (await opened()).length === 2, 30_000, 200)
    const [first, second] = await opened()
    expect([first.title, second.title]).toEqual(['Add product()', 'Add max()'])
    expect(prsWhenAsked).toEqual([0, 0, 1])
    expect(first).toMatchObject({ author: 'clawbot-alice', state: 'open', merged: false })
    expect(first.body).toMatch(/sandboxed: no network/)
    const marker = parseMarker(first.body)!
    expect(marker).toMatchObject({ agent: 'alice', peerId: node.peerId.toString(), issue: product, head: first.headSha, tests: { passed: true } })
    expect(await verifyMarker(marker)).toBe(true)
    expect(parseMarker(second.body)).toMatchObject({ issue: max })
    expect((await node.activity.list({ kind: 'governance' })).map((a) => a.summary)).toEqual(expect.arrayContaining([
      `opened pull request #${first.number} for issue #${product}`, `opened pull request #${second.number} for issue #${max}`
    ]))
    // The roadmap issue is not a task: with both tasks taken, the agent asks for no more changes.
    await new Promise((resolve) => setTimeout(resolve, 1500))
    expect(model.callCount).toBe(3)

    // The human review quorum decides, not the agent: pending on one approval, merged on two (and CI).
    const keeper = new QuorumKeeper({ forge: keeperForge(), allowList: HUMANS, requiredApprovals: 2, agentLogins: ['clawbot-alice'] })
    await new OctokitForge({ owner: OWNER, repo: REPO, token: 'tok-ci', baseUrl: gh.baseUrl }).createCommitStatus(first.headSha, { state: 'success', context: 'ci/test', description: 'passed' })
    await octokitAs('tok-ann').rest.pulls.createReview({ owner: OWNER, repo: REPO, pull_number: first.number, event: 'APPROVE' })
    expect((await keeper.tick()).find((d) => d.pr === first.number)).toMatchObject({ merged: false, result: { state: 'pending' } })
    await octokitAs('tok-ben').rest.pulls.createReview({ owner: OWNER, repo: REPO, pull_number: first.number, event: 'APPROVE' })
    expect((await keeper.tick()).find((d) => d.pr === first.number)).toMatchObject({ merged: true })
    expect(gh.log.filter((l) => l.op === 'pulls/merge' && l.status === 200).map((l) => l.login)).toEqual(['clawmesh-keeper'])
    expect(gh.violations).toEqual([])
  }, 60_000)

  it('the keeper\'s node does not propose', () => {
    const base = { owner: OWNER, repo: REPO }
    expect(GovernanceSettingsSchema.safeParse({ ...base, keeper: true, propose: true }).success).toBe(false)
    expect(GovernanceSettingsSchema.parse({ ...base, keeper: true }).propose).toBeUndefined()
  })
})
