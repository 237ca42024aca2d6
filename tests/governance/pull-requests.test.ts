import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { fakeModel } from '@langchain/core/testing'
import { Octokit } from 'octokit'
import { OctokitForge } from '../../governance/octokit-forge.ts'
import { proposerView } from '../../governance/forge.ts'
import { ChatModelChangeAuthor } from '../../governance/change-author.ts'
import { parseMarker, verifyMarker, type ProposeOutcome } from '../../governance/proposal.ts'
import { QuorumKeeper, quorumRow } from '../../governance/keeper.ts'
import { GovernanceStore, migrateGovernance } from '../../governance/store.ts'
import { SqliteDb } from '../../runtime/store/sqlite.ts'
import { QUORUM_CONTEXT } from '../../governance/quorum.ts'
import { openPullRequestTool } from '../../skills/governance/open-pull-request.ts'
import { GitHubStandIn } from '../helpers/github/stand-in.ts'
import { change, makeUpstream } from '../helpers/github/upstream.ts'
import { tempDir } from '../helpers/mesh.ts'
import { cliEnv, runJson } from '../helpers/cli.ts'

const OWNER = 'clawmesh-net'
const REPO = 'shared'
const LABEL = 'clawmesh-task'
const TOKENS = {
  'tok-alice': { login: 'clawbot-alice' },
  'tok-bob': { login: 'clawbot-bob' },
  'tok-keeper': { login: 'clawmesh-keeper' },
  'tok-ann': { login: 'ann' },
  'tok-ben': { login: 'ben' },
  'tok-cat': { login: 'cat' },
  'tok-ci': { login: 'ci-runner' }
}
const AGENTS = ['clawbot-alice', 'clawbot-bob']
const HUMANS = ['ann', 'ben', 'cat']

const PRODUCT = 'export function product (...xs) {\n  return xs.reduce((a, b) => a * b, 1)\n}\n'
const PRODUCT_TEST = "import test from 'node:test'\nimport assert from 'node:assert'\nimport { product } from '../product.mjs'\n\ntest('product', () => {\n  assert.strictEqual(product(2, 3, 4), 24)\n  assert.strictEqual(product(), 1)\n})\n"
const BROKEN_SUM = 'export function sum (...xs) {\n  return xs.length\n}\n'

describe('agent pull requests and the human review quorum', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let gh: GitHubStandIn
  let upstream: string
  let baseSha: string
  let key: PrivateKey
  const forgeAs = (token: keyof typeof TOKENS): OctokitForge => new OctokitForge({ owner: OWNER, repo: REPO, token, baseUrl: gh.baseUrl })
  const octokitAs = (token: keyof typeof TOKENS): Octokit => new Octokit({ auth: token, baseUrl: gh.baseUrl, retry: { enabled: false }, throttle: { enabled: false } })
  const review = async (token: keyof typeof TOKENS, pull: number, event: 'APPROVE' | 'REQUEST_CHANGES' | 'COMMENT', commitId?: string): Promise<void> => {
    await octokitAs(token).rest.pulls.createReview({ owner: OWNER, repo: REPO, pull_number: pull, event, commit_id: commitId, body: event === 'APPROVE' ? undefined : `${event.toLowerCase()} from ${TOKENS[token].login}` })
  }
  const ciPasses = async (sha: string): Promise<void> => {
    await forgeAs('tok-ci').createCommitStatus(sha, { state: 'success', context: 'ci/test', description: 'node --test passed' })
  }
  const quorumStatusOf = (sha: string): { state: string, description: string | null } | undefined => gh.statusesOf(sha).filter((s) => s.context === QUORUM_CONTEXT).at(-1)

  let opened: Extract<ProposeOutcome, { status: 'opened' }>
  let keeper: QuorumKeeper
  let db: SqliteDb

  beforeAll(async () => {
    dir = await tempDir('clawmesh-prs-')
    upstream = join(dir.path, 'upstream')
    mkdirSync(upstream)
    baseSha = makeUpstream(upstream)
    gh = await new GitHubStandIn({ owner: OWNER, repo: REPO, users: TOKENS, mergers: ['clawmesh-keeper'] }).start()
    gh.importRepository(upstream)
    key = await generateKeyPair('Ed25519')
    db = await SqliteDb.open(join(dir.path, 'keeper.db'))
    await migrateGovernance(db)
    const store = new GovernanceStore(db)
    keeper = new QuorumKeeper({ forge: forgeAs('tok-keeper'), allowList: HUMANS, requiredApprovals: 2, agentLogins: AGENTS, record: async (pr, d) => { await store.recordQuorum(quorumRow(`${OWNER}/${REPO}`, pr, d)) } })
  })
  afterAll(async () => {
    await db?.close()
    await gh?.stop()
    await dir?.cleanup()
  })

  it('an agent turns a labelled issue into a pull request whose tests passed, through the open_pull_request skill', async () => {
    // A maintainer files the task through the API (an unlabelled issue is not a task).
    await octokitAs('tok-ann').rest.issues.create({ owner: OWNER, repo: REPO, title: 'Not for agents', body: 'Discuss the roadmap.' })
    const task = (await octokitAs('tok-ann').rest.issues.create({ owner: OWNER, repo: REPO, title: 'Add product()', body: 'We need product(...xs) next to sum.mjs, with a test.', labels: [LABEL] })).data.number

    const model = fakeModel().respond(change('Add product()', [{ path: 'product.mjs', content: PRODUCT }, { path: 'test/product.test.mjs', content: PRODUCT_TEST }], 'm1'))
    const outcomes: ProposeOutcome[] = []
    const skill = openPullRequestTool({ forge: forgeAs('tok-alice'), author: new ChatModelChangeAuthor(model), agent: { name: 'alice', key }, cloneUrl: upstream, label: LABEL, testCommand: 'node --test' }, (o) => outcomes.push(o))
    const answer = await skill.invoke({})
    expect(answer).toMatch(/Opened pull request #\d+/)
    expect(outcomes[0].status).toBe('opened')
    opened = outcomes[0] as typeof opened

    // The model saw the issue and the repository.
    const prompt = model.calls[0].messages.map((m) => String(m.content)).join('\n')
    expect(prompt).toContain('Add product()')
    expect(prompt).toContain('sum.mjs')

    expect(opened.issue.number).toBe(task)
    expect(opened.tests).toMatchObject({ passed: true, exitCode: 0, command: 'node --test' })
    expect(opened.tests.outputTail).toMatch(/pass 2/)
    const pr = gh.pull(opened.pr.number)
    expect(pr).toMatchObject({ state: 'open', user: { login: 'clawbot-alice' }, base: 'main', head: opened.branch, headSha: opened.headSha })
    expect(pr.body).toContain(`Closes #${task}`)
    expect(pr.body).toMatch(/`node --test` passed/)
    expect(pr.body).toContain(peerIdFromPrivateKey(key).toString())
    const marker = parseMarker(pr.body)!
    expect(marker).toMatchObject({ agent: 'alice', issue: task, base: baseSha, head: opened.headSha, tests: { passed: true } })
    expect(await verifyMarker(marker)).toBe(true)
    expect(await verifyMarker({ ...marker, issue: marker.issue + 1 })).toBe(false)

    // The commit is the base plus exactly the change, built through the Git Data API.
    const files = gh.filesAt(opened.headSha)
    expect(files.get('product.mjs')).toBe(PRODUCT)
    expect(files.get('test/product.test.mjs')).toBe(PRODUCT_TEST)
    expect(files.get('sum.mjs')).toMatch(/a \+ b/)
    expect(gh.git.get(opened.headSha, 'commit')!.parents).toEqual([baseSha])
    expect(gh.refs.get('heads/main')).toBe(baseSha)

    // The agent has no way to merge: its view of the forge has no merge method, and it never called one.
    expect('mergePullRequest' in proposerView(forgeAs('tok-alice'))).toBe(false)
    expect(gh.log.filter((l) => l.login === 'clawbot-alice').map((l) => l.op)).not.toContain('pulls/merge')
    expect(gh.violations).toEqual([])

    // Asked again, the agent finds no untaken task: the issue already has its pull request.
    expect(await skill.invoke({})).toMatch(/No pull request: no open issue labelled/)
  })

  it('a change whose tests fail never becomes a pull request; the model is shown the failure once', async () => {
    const issue = gh.addIssue('Speed up sum', 'sum.mjs is slow.', [LABEL])
    const model = fakeModel()
      .respond(change('Faster sum', [{ path: 'sum.mjs', content: BROKEN_SUM }], 'b1'))
      .respond(change('Faster sum', [{ path: 'sum.mjs', content: BROKEN_SUM }], 'b2'))
    const pullsBefore = gh.log.filter((l) => l.op === 'pulls/create').length
    const skill = openPullRequestTool({ forge: forgeAs('tok-bob'), author: new ChatModelChangeAuthor(model), agent: { name: 'bob', key: await generateKeyPair('Ed25519') }, cloneUrl: upstream, label: LABEL, testCommand: 'node --test', attempts: 2 })
    const answer = await skill.invoke({ issue })
    expect(answer).toMatch(/tests failed on the change for issue #\d+ \(exit 1\)/)
    expect(model.callCount).toBe(2)
    expect(model.calls[1].messages.map((m) => String(m.content)).join('\n')).toMatch(/previous attempt was refused[\s\S]*exited 1/)
    expect(gh.log.filter((l) => l.op === 'pulls/create').length).toBe(pullsBefore)
    expect(gh.log.filter((l) => l.login === 'clawbot-bob').map((l) => l.op)).not.toContain('git/create-ref')
    expect(gh.violations).toEqual([])
  })

  it('merges only with 2 allow-listed human approvals of the head commit, no change request, and green checks', async () => {
    const n = opened.pr.number
    const head1 = opened.headSha

    // The agent cannot approve its own PR (GitHub refuses); its comment and another agent's approval do not count.
    await expect(review('tok-alice', n, 'APPROVE')).rejects.toMatchObject({ status: 422 })
    expect(gh.takeViolations()).toEqual([expect.stringMatching(/Can not approve your own pull request/)])
    await review('tok-alice', n, 'COMMENT')
    await review('tok-bob', n, 'APPROVE')
    await ciPasses(head1)
    let [d] = await keeper.tick()
    expect(d).toMatchObject({ pr: n, merged: false, result: { state: 'pending', approvers: [] } })
    expect(d.result.ignored).toEqual(expect.arrayContaining([{ login: 'clawbot-bob', reason: 'agent' }, { login: 'clawbot-alice', reason: 'agent' }]))
    expect(quorumStatusOf(head1)).toMatchObject({ state: 'pending', description: expect.stringMatching(/^0 of 2/) })

    // 1 of 2 required approvals: no merge.
    await review('tok-ann', n, 'APPROVE')
    ;[d] = await keeper.tick()
    expect(d).toMatchObject({ merged: false, result: { state: 'pending', approvers: ['ann'] } })
    expect(quorumStatusOf(head1)).toMatchObject({ state: 'pending', description: expect.stringMatching(/^1 of 2/) })

    // The agent pushes a new commit: ann's approval is now of an older commit, and so is one ben gives on it.
    const alice = forgeAs('tok-alice')
    const blob = await alice.createBlob(new TextEncoder().encode(PRODUCT.replace('xs.reduce', '[...xs].reduce')))
    const tree = await alice.createTree(await alice.commitTree(head1), [{ path: 'product.mjs', mode: '100644', sha: blob }])
    const head2 = await alice.createCommit({ message: 'Copy the arguments', tree, parents: [head1] })
    await octokitAs('tok-alice').rest.git.updateRef({ owner: OWNER, repo: REPO, ref: `heads/${opened.branch}`, sha: head2 })
    await ciPasses(head2)
    await review('tok-ben', n, 'APPROVE', head1)
    ;[d] = await keeper.tick()
    expect(d).toMatchObject({ headSha: head2, merged: false, result: { state: 'pending', approvers: [], stale: ['ann', 'ben'] } })
    expect(d.result.reason).toMatch(/older commit/)

    // A request for changes blocks, even with an approval of the head beside it.
    await review('tok-cat', n, 'REQUEST_CHANGES')
    await review('tok-ann', n, 'APPROVE')
    ;[d] = await keeper.tick()
    expect(d).toMatchObject({ merged: false, result: { state: 'blocked', blockers: ['cat'], approvers: ['ann'] } })
    expect(quorumStatusOf(head2)).toMatchObject({ state: 'failure', description: 'changes requested by cat' })
    expect(gh.pull(n).state).toBe('open')

    // The agent itself cannot merge (the repository allows the keeper only).
    await expect(octokitAs('tok-alice').rest.pulls.merge({ owner: OWNER, repo: REPO, pull_number: n })).rejects.toMatchObject({ status: 403 })
    expect(gh.takeViolations()).toEqual([expect.stringMatching(/not allowed to merge/)])

    // cat approves the head: 2 approvals of the head (ann, cat; ben's is stale), no blocker, CI green: merge.
    await review('tok-cat', n, 'APPROVE')
    ;[d] = await keeper.tick()
    expect(d).toMatchObject({ merged: true, result: { state: 'approved', approvers: ['ann', 'cat'], stale: ['ben'] } })
    expect(quorumStatusOf(head2)).toMatchObject({ state: 'success' })
    const merged = gh.pull(n)
    expect(merged).toMatchObject({ state: 'closed', headSha: head2 })
    expect(merged.mergedAt).not.toBeNull()
    expect(gh.log.filter((l) => l.op === 'pulls/merge' && l.status === 200).map((l) => l.login)).toEqual(['clawmesh-keeper'])
    expect(gh.filesAt(gh.refs.get('heads/main')!).get('product.mjs')).toContain('[...xs].reduce')
    expect(await keeper.tick()).toEqual([])
    // The keeper's node keeps its decisions where the owner's board reads them.
    expect(await db.all('SELECT number, state, approvals, required, merged FROM board_prs')).toEqual([{ number: n, state: 'merged', approvals: 2, required: 2, merged: 1 }])
    expect(gh.violations).toEqual([])
  })

  it('refuses to run the keeper as an agent, or with an agent on the allow-list', async () => {
    const asAgent = new QuorumKeeper({ forge: forgeAs('tok-alice'), allowList: HUMANS, requiredApprovals: 2, agentLogins: AGENTS })
    await expect(asAgent.tick()).rejects.toThrow(/agent account/)
    expect(() => new QuorumKeeper({ forge: forgeAs('tok-keeper'), allowList: [...HUMANS, 'clawbot-bob'], requiredApprovals: 2, agentLogins: AGENTS })).toThrow(/both as humans/)
    expect(gh.violations).toEqual([])
  })

  it('clawmesh prs lists agent pull requests with their quorum state', async () => {
    // The merge above happened on the forge; the clone source mirrors it, as github.com would serve it.
    gh.exportRepository(upstream)
    const issue = gh.addIssue('Add max()', 'max(...xs) please', [LABEL])
    const model = fakeModel().respond(change('Add max()', [{ path: 'max.mjs', content: 'export const max = (...xs) => Math.max(...xs)\n' }], 'x1'))
    const skill = openPullRequestTool({ forge: forgeAs('tok-bob'), author: new ChatModelChangeAuthor(model), agent: { name: 'bob', key }, cloneUrl: upstream, label: LABEL, testCommand: 'node --test' })
    expect(await skill.invoke({ issue })).toMatch(/Opened/)
    const pr = [...(await forgeAs('tok-keeper').listOpenPullRequests())].find((p) => p.title === 'Add max()')!
    await review('tok-ben', pr.number, 'APPROVE')

    const home = join(dir.path, 'cli-home')
    mkdirSync(home)
    writeFileSync(join(home, 'config.json'), JSON.stringify({ governance: { owner: OWNER, repo: REPO, baseUrl: gh.baseUrl, allowList: HUMANS, agentLogins: AGENTS, requiredApprovals: 2 } }))
    const rows = await runJson<Array<{ number: number, agent: string, signed: boolean, state: string, approvals: number, required: number, reason: string }>>(['prs', '--home', home], cliEnv(dir.path, { CLAWMESH_GITHUB_TOKEN: 'tok-keeper' }))
    expect(rows).toEqual([expect.objectContaining({ number: pr.number, agent: 'bob', signed: true, state: 'pending', approvals: 1, required: 2 })])
    expect(rows[0].reason).toMatch(/1 of 2/)
    expect(gh.violations).toEqual([])
  })
})
