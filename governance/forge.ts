import type { Check, Review } from './quorum.ts'

/**
 * The seam between governance and the code host. Two capabilities, deliberately separate:
 * a proposing agent gets a ProposerForge (read issues, write git objects and branches, open PRs) and
 * cannot merge anything, because merging is not in its interface and proposerView() hands it an
 * object that does not even carry the method; only the quorum keeper holds a KeeperForge.
 */

export interface RepoRef { owner: string, repo: string }

export interface Issue {
  number: number
  title: string
  body: string
  labels: string[]
  url: string
}

export interface TreeEntry {
  path: string
  /** '100644' file, '100755' executable, '120000' symlink. */
  mode: '100644' | '100755' | '120000'
  /** The blob sha, or null to delete the path from the base tree. */
  sha: string | null
}

export interface GitIdentity { name: string, email: string }

export interface PullRequest {
  number: number
  url: string
  title: string
  body: string
  author: string
  state: 'open' | 'closed'
  draft: boolean
  merged: boolean
  headRef: string
  headSha: string
  baseRef: string
}

export interface ProposerForge {
  readonly repo: RepoRef
  /** The login of the account this forge acts as. */
  whoami (): Promise<string>
  listIssues (opts: { label: string }): Promise<Issue[]>
  /** Read-only: to skip issues that already have an agent's pull request. */
  listOpenPullRequests (): Promise<PullRequest[]>
  /** The commit sha a branch points at. */
  branchSha (branch: string): Promise<string>
  /** The tree sha of a commit. */
  commitTree (sha: string): Promise<string>
  createBlob (content: Uint8Array): Promise<string>
  createTree (baseTree: string, entries: TreeEntry[]): Promise<string>
  createCommit (opts: { message: string, tree: string, parents: string[], author?: GitIdentity }): Promise<string>
  createBranch (branch: string, sha: string): Promise<void>
  createPullRequest (opts: { title: string, body: string, head: string, base: string, draft?: boolean }): Promise<PullRequest>
}

export interface KeeperForge {
  readonly repo: RepoRef
  whoami (): Promise<string>
  listOpenPullRequests (): Promise<PullRequest[]>
  getPullRequest (number: number): Promise<PullRequest>
  listReviews (number: number): Promise<Review[]>
  /** Check runs and commit statuses on a commit, normalized to success/pending/failure. */
  listChecks (sha: string): Promise<Check[]>
  createCommitStatus (sha: string, status: { state: 'success' | 'pending' | 'failure' | 'error', context: string, description: string, targetUrl?: string }): Promise<void>
  /** Merges only if the head is still `sha`: a push after the decision makes the merge fail (409). */
  mergePullRequest (number: number, opts: { sha: string, method: 'merge' | 'squash' | 'rebase', title?: string }): Promise<{ merged: boolean, sha: string }>
}

export interface Forge extends ProposerForge, KeeperForge {}

export class ForgeError extends Error {
  constructor (readonly operation: string, readonly status: number | undefined, message: string, options?: { cause?: unknown }) {
    super(`${operation} failed${status !== undefined ? ` (HTTP ${status})` : ''}: ${message}`, options)
    this.name = 'ForgeError'
  }
}

/** A ProposerForge that holds only the proposer's methods, so no cast can reach merge through it. */
export function proposerView (forge: ProposerForge): ProposerForge {
  return Object.freeze({
    repo: forge.repo,
    whoami: forge.whoami.bind(forge),
    listIssues: forge.listIssues.bind(forge),
    listOpenPullRequests: forge.listOpenPullRequests.bind(forge),
    branchSha: forge.branchSha.bind(forge),
    commitTree: forge.commitTree.bind(forge),
    createBlob: forge.createBlob.bind(forge),
    createTree: forge.createTree.bind(forge),
    createCommit: forge.createCommit.bind(forge),
    createBranch: forge.createBranch.bind(forge),
    createPullRequest: forge.createPullRequest.bind(forge)
  })
}
