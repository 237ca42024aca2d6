import { z } from 'zod'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import { canonicalBytes, concatBytes, fromBase64Url, toBase64Url, utf8 } from '../protocols/encoding.ts'
import type { Logger } from '../runtime/log.ts'
import type { ChangeAuthor, ProposedChange } from './change-author.ts'
import type { Issue, ProposerForge, PullRequest, TreeEntry } from './forge.ts'
import type { GovernanceStore } from './store.ts'
import { Workspace, type TestResult } from './workspace.ts'

/**
 * The proposal pipeline: labelled issue → LLM change in a temporary clone → the project's own tests →
 * (only if they pass) blobs, tree, commit and branch through the Git Data API → pull request whose body
 * carries the rationale, the test result and a signed statement of which agent proposed it.
 * It is given a ProposerForge: it can open pull requests, never merge them.
 */

export interface AgentIdentity {
  name: string
  key: PrivateKey
}

export interface ProposeOptions {
  forge: ProposerForge
  author: ChangeAuthor
  agent: AgentIdentity
  /** Where to `git clone` the repository from (the forge's clone URL in production). */
  cloneUrl: string
  label: string
  baseBranch?: string
  testCommand?: string
  testTimeoutMs?: number
  /** Run the tests without a sandbox where the machine has none (the owner's opt-in; default false). */
  allowUnsandboxedTests?: boolean
  /** Tries per issue; after a failed test run the model sees the output and tries again. */
  attempts?: number
  /** Work on this issue instead of the first open, labelled one without an agent PR. */
  issue?: number
  /** Issues not to take (e.g. ones whose changes already failed their tests here). */
  exclude?: readonly number[]
  /**
   * Stops the work at its next step (the test run is killed) and rejects with the signal's reason.
   * Once the branch is pushed the pull request is still opened, so that no orphan branch is left.
   */
  signal?: AbortSignal
  workRoot?: string
  store?: GovernanceStore
  log?: Logger
}

export type ProposeOutcome =
  | { status: 'opened', issue: Issue, pr: PullRequest, branch: string, headSha: string, tests: TestResult, change: ProposedChange }
  | { status: 'tests-failed', issue: Issue, tests: TestResult, change: ProposedChange }
  | { status: 'no-task', reason: string }

export const DEFAULT_TEST_COMMAND = 'npm test'

export async function proposeForIssue (o: ProposeOptions): Promise<ProposeOutcome> {
  const base = o.baseBranch ?? 'main'
  const testCommand = o.testCommand ?? DEFAULT_TEST_COMMAND
  o.signal?.throwIfAborted()
  const issue = await pickIssue(o)
  if (issue === undefined) return { status: 'no-task', reason: o.issue !== undefined ? `issue #${o.issue} is not open with label "${o.label}", or already has an agent pull request` : `no open issue labelled "${o.label}" without an agent pull request` }

  o.signal?.throwIfAborted()
  const baseSha = await o.forge.branchSha(base)
  const ws = await Workspace.clone(o.cloneUrl, baseSha, o.workRoot)
  try {
    const files = await ws.files()
    const contents: Record<string, string> = {}
    let budget = 48 * 1024
    for (const path of rankFiles(files, issue)) {
      const text = await ws.read(path, 16 * 1024)
      if (text === undefined || text.length > budget) continue
      contents[path] = text
      budget -= text.length
    }

    let feedback: string | undefined
    let change: ProposedChange | undefined
    let tests: TestResult | undefined
    for (let attempt = 1; attempt <= (o.attempts ?? 2); attempt++) {
      if (attempt > 1) await resetClone(ws)
      o.signal?.throwIfAborted()
      change = await o.author.proposeChange({ issue, files, contents, feedback })
      o.signal?.throwIfAborted()
      await ws.apply(change.edits)
      tests = await ws.runTests(testCommand, o.testTimeoutMs, { allowUnsandboxed: o.allowUnsandboxedTests, signal: o.signal })
      // A run killed by the signal is no verdict on the change: neither feedback nor a failure.
      o.signal?.throwIfAborted()
      o.log?.info('tested a proposed change', { issue: issue.number, attempt, passed: tests.passed, ms: tests.durationMs })
      if (tests.passed) break
      feedback = `\`${testCommand}\` exited ${tests.exitCode}${tests.timedOut ? ' (timed out)' : ''}:\n${tests.outputTail}`
    }
    if (change === undefined || tests === undefined || !tests.passed) return { status: 'tests-failed', issue, tests: tests!, change: change! }

    const entries = await ws.entries(change.edits)
    if (entries.length === 0) throw new Error(`the change for issue #${issue.number} does not modify any file`)
    const tree: TreeEntry[] = []
    for (const e of entries) tree.push({ ...e.entry, sha: e.content === null ? null : await o.forge.createBlob(e.content) })
    const peerId = peerIdFromPrivateKey(o.agent.key).toString()
    const treeSha = await o.forge.createTree(await o.forge.commitTree(baseSha), tree)
    const message = `${change.title}\n\n${change.rationale}\n\nCloses #${issue.number}\nClawmesh-Agent: ${o.agent.name} <${peerId}>\n`
    const headSha = await o.forge.createCommit({ message, tree: treeSha, parents: [baseSha], author: { name: `ClawBot ${o.agent.name}`, email: `${peerId}@clawmesh.invalid` } })
    const branch = `clawmesh/${slug(o.agent.name)}/issue-${issue.number}-${headSha.slice(0, 7)}`
    // The last point to stop: unreferenced blobs and commits are harmless, a branch without its PR is litter.
    o.signal?.throwIfAborted()
    await o.forge.createBranch(branch, headSha)
    const marker = await signMarker(o.agent.key, { v: 1, agent: o.agent.name, peerId, repo: `${o.forge.repo.owner}/${o.forge.repo.repo}`, issue: issue.number, base: baseSha, head: headSha, tests: { command: testCommand, passed: true } })
    const pr = await o.forge.createPullRequest({ title: change.title, head: branch, base, body: prBody(issue, change, tests, o.agent.name, peerId, marker) })
    await o.store?.recordPullRequest({ repo: `${o.forge.repo.owner}/${o.forge.repo.repo}`, number: pr.number, issue: issue.number, url: pr.url, headSha, branch })
    o.log?.info('opened a pull request', { issue: issue.number, pr: pr.number, url: pr.url })
    return { status: 'opened', issue, pr, branch, headSha, tests, change }
  } finally {
    await ws.dispose()
  }
}

async function pickIssue (o: ProposeOptions): Promise<Issue | undefined> {
  const issues = await o.forge.listIssues({ label: o.label })
  const open = await o.forge.listOpenPullRequests()
  const taken = new Set<number>(open.map((pr) => parseMarker(pr.body)?.issue).filter((n) => n !== undefined))
  for (const n of o.exclude ?? []) taken.add(n)
  return issues.filter((i) => (o.issue === undefined || i.number === o.issue) && !taken.has(i.number)).sort((a, b) => a.number - b.number)[0]
}

async function resetClone (ws: Workspace): Promise<void> {
  const { spawnSync } = await import('node:child_process')
  for (const args of [['checkout', '--quiet', '--force', ws.baseSha], ['clean', '-fdq']]) {
    const r = spawnSync('git', args, { cwd: ws.dir })
    if (r.status !== 0) throw new Error(`git ${args.join(' ')} failed in ${ws.dir}: ${r.stderr.toString()}`)
  }
}

/** Files named in the issue first, then the rest in repository order (the model sees a bounded view). */
function rankFiles (files: string[], issue: Issue): string[] {
  const text = `${issue.title}\n${issue.body}`
  const named = files.filter((f) => text.includes(f) || text.includes(f.split('/').pop()!))
  return [...named, ...files.filter((f) => !named.includes(f))]
}

function slug (s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'agent'
}

function prBody (issue: Issue, change: ProposedChange, tests: TestResult, agent: string, peerId: string, marker: string): string {
  const fence = '```'
  return [
    change.rationale,
    '',
    `Closes #${issue.number}`,
    '',
    '### Tests',
    `\`${tests.command}\` passed in ${(tests.durationMs / 1000).toFixed(1)} s on the base commit plus this change${tests.sandboxed ? ' (sandboxed: no network, only the clone writable)' : ' (unsandboxed, by its owner\'s choice)'}.`,
    '',
    `<details><summary>test output (tail)</summary>\n\n${fence}\n${tests.outputTail.replaceAll(fence, "'''")}\n${fence}\n</details>`,
    '',
    '### Proposed by',
    `ClawBot **${agent}**, peer \`${peerId}\`. This pull request merges only after the human review quorum approves its head commit; the agent cannot merge it.`,
    '',
    marker
  ].join('\n')
}

// ---- the signed marker: which agent proposed this, for which issue, on which commits -------------

const MARKER_DOMAIN = 'clawmesh/pull-request/v1\n'
const MARKER_RE = /<!-- clawmesh-proposal (\{.*?\}) -->/s

export const MarkerSchema = z.object({
  v: z.literal(1),
  agent: z.string(),
  peerId: z.string(),
  repo: z.string(),
  issue: z.number().int().positive(),
  base: z.string().regex(/^[0-9a-f]{40}$/),
  head: z.string().regex(/^[0-9a-f]{40}$/),
  tests: z.object({ command: z.string(), passed: z.boolean() }).strict(),
  sig: z.string()
}).strict()
export type ProposalMarker = z.infer<typeof MarkerSchema>

async function signMarker (key: PrivateKey, unsigned: Omit<ProposalMarker, 'sig'>): Promise<string> {
  const sig = toBase64Url(await key.sign(concatBytes(utf8(MARKER_DOMAIN), canonicalBytes(unsigned))))
  return `<!-- clawmesh-proposal ${JSON.stringify({ ...unsigned, sig })} -->`
}

/** The marker in a PR body, unverified (use verifyMarker before trusting it). */
export function parseMarker (body: string): ProposalMarker | undefined {
  const m = MARKER_RE.exec(body)
  if (m === null) return undefined
  try {
    const parsed = MarkerSchema.safeParse(JSON.parse(m[1]))
    return parsed.success ? parsed.data : undefined
  } catch {
    return undefined
  }
}

/** True when the marker was signed by the peer it names. */
export async function verifyMarker (marker: ProposalMarker): Promise<boolean> {
  try {
    const { sig, ...unsigned } = marker
    const key = peerIdFromString(marker.peerId).publicKey
    return key !== undefined && await key.verify(concatBytes(utf8(MARKER_DOMAIN), canonicalBytes(unsigned)), fromBase64Url(sig))
  } catch {
    return false
  }
}
