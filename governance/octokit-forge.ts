import { Octokit } from 'octokit'
import { ForgeError, type Forge, type Issue, type PullRequest, type RepoRef, type TreeEntry, type GitIdentity } from './forge.ts'
import type { Check, Review } from './quorum.ts'

export interface OctokitForgeOptions extends RepoRef {
  token: string
  /** https://api.github.com in production; the local stand-in in tests. */
  baseUrl?: string
  userAgent?: string
}

type PrData = {
  number: number, html_url: string, title: string, body: string | null, user: { login: string } | null, state: string,
  draft?: boolean, merged_at: string | null, head: { ref: string, sha: string }, base: { ref: string }
}

/** The Forge on GitHub's REST API through octokit; every failure names the operation and the repo. */
export class OctokitForge implements Forge {
  readonly repo: RepoRef
  private readonly octokit: Octokit
  private login: string | undefined

  constructor (opts: OctokitForgeOptions) {
    this.repo = { owner: opts.owner, repo: opts.repo }
    this.octokit = new Octokit({
      auth: opts.token,
      baseUrl: opts.baseUrl,
      userAgent: opts.userAgent ?? 'clawmesh-governance',
      // GitHub asks clients to space out content-creating requests (octokit paces writes 1 s apart) and
      // to back off on rate limits: retry once rather than fail a whole proposal. A forge on loopback
      // (GitHub Enterprise tunnels, the test stand-in) has no such limits to respect.
      throttle: {
        enabled: !isLoopback(opts.baseUrl),
        onRateLimit: (_after: number, _o: unknown, _k: unknown, retryCount: number) => retryCount < 1,
        onSecondaryRateLimit: (_after: number, _o: unknown, _k: unknown, retryCount: number) => retryCount < 1
      }
    })
  }

  private async call<T> (operation: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      const e = err as { status?: number, message?: string, response?: { data?: { message?: string } } }
      throw new ForgeError(`${operation} on ${this.repo.owner}/${this.repo.repo}`, e.status, e.response?.data?.message ?? e.message ?? String(err), { cause: err })
    }
  }

  async whoami (): Promise<string> {
    this.login ??= await this.call('get the authenticated user', async () => (await this.octokit.rest.users.getAuthenticated()).data.login)
    return this.login
  }

  async listIssues ({ label }: { label: string }): Promise<Issue[]> {
    const items = await this.call('list issues', async () => await this.octokit.paginate(this.octokit.rest.issues.listForRepo, { ...this.repo, labels: label, state: 'open', per_page: 100 }))
    // The issues endpoint also returns pull requests; a PR is never a task.
    return items.filter((i) => i.pull_request === undefined).map((i) => ({
      number: i.number,
      title: i.title,
      body: i.body ?? '',
      labels: i.labels.map((l) => typeof l === 'string' ? l : l.name ?? '').filter((l) => l !== ''),
      url: i.html_url
    }))
  }

  async branchSha (branch: string): Promise<string> {
    return await this.call(`get branch ${branch}`, async () => (await this.octokit.rest.git.getRef({ ...this.repo, ref: `heads/${branch}` })).data.object.sha)
  }

  async commitTree (sha: string): Promise<string> {
    return await this.call(`get commit ${sha}`, async () => (await this.octokit.rest.git.getCommit({ ...this.repo, commit_sha: sha })).data.tree.sha)
  }

  async createBlob (content: Uint8Array): Promise<string> {
    const base64 = Buffer.from(content.buffer, content.byteOffset, content.byteLength).toString('base64')
    return await this.call('create a blob', async () => (await this.octokit.rest.git.createBlob({ ...this.repo, content: base64, encoding: 'base64' })).data.sha)
  }

  async createTree (baseTree: string, entries: TreeEntry[]): Promise<string> {
    const tree = entries.map((e) => ({ path: e.path, mode: e.mode, type: 'blob' as const, sha: e.sha }))
    return await this.call('create a tree', async () => (await this.octokit.rest.git.createTree({ ...this.repo, base_tree: baseTree, tree })).data.sha)
  }

  async createCommit (opts: { message: string, tree: string, parents: string[], author?: GitIdentity }): Promise<string> {
    return await this.call('create a commit', async () => (await this.octokit.rest.git.createCommit({ ...this.repo, message: opts.message, tree: opts.tree, parents: opts.parents, author: opts.author })).data.sha)
  }

  async createBranch (branch: string, sha: string): Promise<void> {
    await this.call(`create branch ${branch}`, async () => await this.octokit.rest.git.createRef({ ...this.repo, ref: `refs/heads/${branch}`, sha }))
  }

  async createPullRequest (opts: { title: string, body: string, head: string, base: string, draft?: boolean }): Promise<PullRequest> {
    return toPr(await this.call('open a pull request', async () => (await this.octokit.rest.pulls.create({ ...this.repo, ...opts })).data))
  }

  async listOpenPullRequests (): Promise<PullRequest[]> {
    const prs = await this.call('list pull requests', async () => await this.octokit.paginate(this.octokit.rest.pulls.list, { ...this.repo, state: 'open', per_page: 100 }))
    return prs.map((p) => toPr(p))
  }

  async getPullRequest (number: number): Promise<PullRequest> {
    return toPr(await this.call(`get pull request #${number}`, async () => (await this.octokit.rest.pulls.get({ ...this.repo, pull_number: number })).data))
  }

  async listReviews (number: number): Promise<Review[]> {
    const reviews = await this.call(`list reviews of #${number}`, async () => await this.octokit.paginate(this.octokit.rest.pulls.listReviews, { ...this.repo, pull_number: number, per_page: 100 }))
    return reviews.map((r) => ({
      id: r.id,
      login: r.user?.login ?? 'ghost',
      userType: r.user?.type,
      state: r.state,
      commitId: r.commit_id,
      submittedAt: r.submitted_at ?? null
    }))
  }

  async listChecks (sha: string): Promise<Check[]> {
    const runs = await this.call(`list check runs of ${sha}`, async () => await this.octokit.paginate(this.octokit.rest.checks.listForRef, { ...this.repo, ref: sha, filter: 'latest', per_page: 100 }))
    // The combined status already keeps only the latest status per context.
    const combined = await this.call(`get the combined status of ${sha}`, async () => (await this.octokit.rest.repos.getCombinedStatusForRef({ ...this.repo, ref: sha, per_page: 100 })).data)
    const fromRuns: Check[] = runs.map((r) => ({
      name: r.name,
      source: 'check-run',
      state: r.status !== 'completed' ? 'pending' : ['success', 'neutral', 'skipped'].includes(r.conclusion ?? '') ? 'success' : 'failure'
    }))
    const fromStatuses: Check[] = combined.statuses.map((s) => ({
      name: s.context,
      source: 'status',
      state: s.state === 'success' ? 'success' : s.state === 'pending' ? 'pending' : 'failure'
    }))
    return [...fromRuns, ...fromStatuses]
  }

  async createCommitStatus (sha: string, status: { state: 'success' | 'pending' | 'failure' | 'error', context: string, description: string, targetUrl?: string }): Promise<void> {
    await this.call(`set status ${status.context} on ${sha}`, async () => await this.octokit.rest.repos.createCommitStatus({
      ...this.repo, sha, state: status.state, context: status.context, description: status.description, target_url: status.targetUrl
    }))
  }

  async mergePullRequest (number: number, opts: { sha: string, method: 'merge' | 'squash' | 'rebase', title?: string }): Promise<{ merged: boolean, sha: string }> {
    const data = await this.call(`merge #${number}`, async () => (await this.octokit.rest.pulls.merge({ ...this.repo, pull_number: number, sha: opts.sha, merge_method: opts.method, commit_title: opts.title })).data)
    return { merged: data.merged, sha: data.sha }
  }
}

function isLoopback (baseUrl: string | undefined): boolean {
  if (baseUrl === undefined) return false
  const host = new URL(baseUrl).hostname
  return host === '127.0.0.1' || host === 'localhost' || host === '[::1]'
}

function toPr (p: PrData): PullRequest {
  return {
    number: p.number,
    url: p.html_url,
    title: p.title,
    body: p.body ?? '',
    author: p.user?.login ?? 'ghost',
    state: p.state === 'open' ? 'open' : 'closed',
    draft: p.draft === true,
    merged: p.merged_at !== null,
    headRef: p.head.ref,
    headSha: p.head.sha,
    baseRef: p.base.ref
  }
}
