import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { build, checkBody, checkParams, checkResponse, loadOperations, type Operation } from './openapi.ts'
import { GitStore, parseSignature, signatureLine, type Signature } from './git-store.ts'

/**
 * A local stand-in for the part of GitHub's REST API that clawmesh governance uses, with in-memory
 * state. Every request is checked against GitHub's OpenAPI description (route, method, path and query
 * parameters, body) and so is every response it sends. Anything real GitHub would reject, a schema
 * violation or a broken rule (approving your own PR, merging a moved head, a stranger merging), is
 * answered with GitHub's status code and recorded in `violations`: tests assert that list is empty.
 */

const OPERATIONS = [
  'users/get-authenticated', 'issues/list-for-repo', 'issues/create',
  'git/get-ref', 'git/get-commit', 'git/create-blob', 'git/get-blob', 'git/create-tree', 'git/get-tree',
  'git/create-commit', 'git/create-ref', 'git/update-ref',
  'pulls/create', 'pulls/list', 'pulls/get', 'pulls/list-reviews', 'pulls/create-review', 'pulls/merge',
  'checks/list-for-ref', 'repos/get-combined-status-for-ref', 'repos/create-commit-status'
] as const
type OperationId = typeof OPERATIONS[number]

let operations: Map<string, Operation> | undefined

export interface StandInUser { login: string, id: number, type: 'User' | 'Bot' }
interface IssueRec { number: number, title: string, body: string, labels: string[], user: StandInUser, createdAt: string }
interface PullRec { number: number, title: string, body: string, head: string, base: string, baseSha: string, user: StandInUser, draft: boolean, state: 'open' | 'closed', mergedAt: string | null, mergedSha: string | null, frozenHead: string | null, createdAt: string }
interface ReviewRec { id: number, pull: number, user: StandInUser, state: string, commitId: string, body: string, submittedAt: string }
interface StatusRec { id: number, context: string, state: string, description: string | null, targetUrl: string | null, creator: StandInUser, createdAt: string }
interface CheckRunRec { id: number, name: string, status: string, conclusion: string | null }

class HttpError extends Error {
  constructor (readonly status: number, message: string) { super(message) }
}

type Handler = (req: { user: StandInUser, params: Record<string, unknown>, body: Record<string, unknown> }) => { status: number, body?: unknown }

export interface StandInOptions {
  owner: string
  repo: string
  /** token → user; requests without a known token are rejected as GitHub would (401). */
  users: Record<string, { login: string, type?: 'User' | 'Bot' }>
  /** Who may merge into the default branch (like a branch ruleset); everyone with a token if unset. */
  mergers?: string[]
  defaultBranch?: string
}

export class GitHubStandIn {
  readonly violations: string[] = []
  /** Every request served, as "METHOD path → status", for tests that check what was (not) called. */
  readonly log: Array<{ op: string, method: string, path: string, status: number, login: string | undefined }> = []
  readonly git = new GitStore()
  readonly refs = new Map<string, string>()
  private readonly users = new Map<string, StandInUser>()
  private readonly issues = new Map<number, IssueRec>()
  private readonly pulls = new Map<number, PullRec>()
  private readonly reviews: ReviewRec[] = []
  private readonly statuses = new Map<string, StatusRec[]>()
  private readonly checkRuns = new Map<string, CheckRunRec[]>()
  private nextNumber = 1
  private nextId = 1000
  private clock = Date.parse('2026-01-01T00:00:00Z')
  private server: Server | undefined
  private readonly handlers: Record<OperationId, Handler>

  constructor (readonly opts: StandInOptions) {
    let uid = 1
    for (const [token, u] of Object.entries(opts.users)) this.users.set(token, { login: u.login, id: uid++, type: u.type ?? 'User' })
    this.handlers = this.makeHandlers()
  }

  get defaultBranch (): string { return this.opts.defaultBranch ?? 'main' }

  get baseUrl (): string {
    const addr = this.server?.address() as AddressInfo | undefined
    if (addr === undefined) throw new Error('the GitHub stand-in is not listening')
    return `http://127.0.0.1:${addr.port}`
  }

  async start (): Promise<this> {
    operations ??= loadOperations(OPERATIONS)
    this.server = createServer((req, res) => { void this.serve(req, res) })
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve))
    return this
  }

  async stop (): Promise<void> {
    await new Promise<void>((resolve) => this.server?.close(() => resolve()) ?? resolve())
  }

  /** Returns and clears the violations (for the few tests that provoke one on purpose). */
  takeViolations (): string[] {
    return this.violations.splice(0)
  }

  // ---- state set-up and inspection for tests (what a person would do in the web UI) -------------

  importRepository (dir: string): void {
    for (const [branch, sha] of this.git.importRepository(dir)) this.refs.set(`heads/${branch}`, sha)
  }

  /**
   * Mirrors the stand-in's objects and branches into a local repository, so that a `git clone` of it
   * sees what GitHub would serve (the stand-in has no git transport of its own).
   */
  exportRepository (dir: string): void {
    this.git.exportTo(dir, new Map([...this.refs].filter(([r]) => r.startsWith('heads/')).map(([r, sha]) => [r.slice('heads/'.length), sha])))
  }

  addIssue (title: string, body: string, labels: string[], login = 'maintainer'): number {
    const number = this.nextNumber++
    this.issues.set(number, { number, title, body, labels, user: { login, id: 9000 + number, type: 'User' }, createdAt: this.tick() })
    return number
  }

  addCheckRun (sha: string, name: string, status: 'queued' | 'in_progress' | 'completed', conclusion: 'success' | 'failure' | 'neutral' | null = null): void {
    this.checkRuns.set(sha, [...(this.checkRuns.get(sha) ?? []).filter((c) => c.name !== name), { id: this.nextId++, name, status, conclusion }])
  }

  pull (number: number): PullRec & { headSha: string } {
    const p = this.pulls.get(number)
    if (p === undefined) throw new Error(`no pull request #${number}`)
    return { ...p, headSha: this.headOf(p) }
  }

  statusesOf (sha: string): StatusRec[] {
    return [...(this.statuses.get(sha) ?? [])]
  }

  /** Files of a commit, decoded, for assertions on what an agent pushed. */
  filesAt (commitSha: string): Map<string, string> {
    const commit = this.git.get(commitSha, 'commit')
    if (commit === undefined) throw new Error(`no commit ${commitSha}`)
    return new Map([...this.git.files(commit.tree)].map(([p, { sha }]) => [p, this.git.get(sha, 'blob')!.content.toString('utf8')]))
  }

  // ---- HTTP ---------------------------------------------------------------------------------------

  private tick (): string {
    this.clock += 1000
    return new Date(this.clock).toISOString().replace('.000Z', 'Z')
  }

  private async serve (req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1')
    const method = req.method ?? 'GET'
    const chunks: Buffer[] = []
    for await (const c of req) chunks.push(c as Buffer)
    const raw = Buffer.concat(chunks).toString('utf8')
    const send = (status: number, body: unknown, op?: Operation, login?: string): void => {
      this.log.push({ op: op?.id ?? '?', method, path: url.pathname, status, login })
      if (op !== undefined && status < 300) for (const e of checkResponse(op, status, body)) this.violations.push(`${op.id}: ${e}`)
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' })
      res.end(body === undefined ? '' : JSON.stringify(body))
    }
    const reject = (status: number, message: string, op?: Operation, login?: string, errors?: string[]): void => {
      this.violations.push(`${method} ${url.pathname}${url.search} → ${status}: ${message}${errors !== undefined ? ` (${errors.join('; ')})` : ''}`)
      send(status, { message, documentation_url: 'https://docs.github.com/rest', ...(errors !== undefined ? { errors } : {}) }, undefined, login)
      void op
    }

    let op: Operation | undefined
    let match: RegExpExecArray | null = null
    for (const candidate of operations!.values()) {
      if (candidate.method !== method) continue
      match = candidate.regex.exec(url.pathname)
      if (match !== null) { op = candidate; break }
    }
    if (op === undefined || match === null) return reject(404, `no GitHub operation is ${method} ${url.pathname}`)

    const auth = req.headers.authorization ?? ''
    const token = /^(?:token|bearer)\s+(.+)$/i.exec(auth)?.[1]
    const user = token === undefined ? undefined : this.users.get(token)
    if (user === undefined) return reject(401, 'Requires authentication', op)

    let body: unknown
    if (raw !== '') {
      try { body = JSON.parse(raw) } catch { return reject(400, 'Problems parsing JSON', op, user.login) }
    }
    const pathValues = Object.fromEntries(op.pathParams.map((name, i) => [name, decodeURIComponent(match[i + 1])]))
    const { values, errors } = checkParams(op, pathValues, url.searchParams)
    errors.push(...checkBody(op, body))
    if (errors.length > 0) return reject(422, 'Validation Failed', op, user.login, errors)
    if (values.owner !== this.opts.owner || values.repo !== this.opts.repo) {
      if ('owner' in values) return reject(404, `no repository ${String(values.owner)}/${String(values.repo)}`, op, user.login)
    }

    try {
      const out = this.handlers[op.id as OperationId]({ user, params: values, body: (body ?? {}) as Record<string, unknown> })
      send(out.status, out.status < 300 ? build(op.responses[String(out.status)] ?? undefined, out.body) : out.body, op, user.login)
    } catch (err) {
      if (err instanceof HttpError) return reject(err.status, err.message, op, user.login)
      this.violations.push(`${op.id}: the stand-in crashed: ${(err as Error).stack ?? String(err)}`)
      send(500, { message: 'stand-in error' })
    }
  }

  // ---- GitHub's behaviour, per operation -----------------------------------------------------------

  private repoUrl (): string { return `https://api.github.com/repos/${this.opts.owner}/${this.opts.repo}` }
  private htmlUrl (): string { return `https://github.com/${this.opts.owner}/${this.opts.repo}` }
  private userJson (u: StandInUser): Record<string, unknown> {
    return { login: u.login, id: u.id, type: u.type, node_id: `U_${u.id}`, url: `https://api.github.com/users/${u.login}`, html_url: `https://github.com/${u.login}`, site_admin: false }
  }

  private repoJson (): Record<string, unknown> {
    const owner = { login: this.opts.owner, id: 1, type: 'Organization', node_id: 'O_1', url: `https://api.github.com/users/${this.opts.owner}`, html_url: `https://github.com/${this.opts.owner}`, site_admin: false }
    return { id: 1, node_id: 'R_1', name: this.opts.repo, full_name: `${this.opts.owner}/${this.opts.repo}`, owner, private: false, html_url: this.htmlUrl(), url: this.repoUrl(), default_branch: this.defaultBranch, clone_url: `${this.htmlUrl()}.git` }
  }

  private headOf (p: PullRec): string {
    if (p.frozenHead !== null) return p.frozenHead
    const sha = this.refs.get(`heads/${p.head}`)
    if (sha === undefined) throw new HttpError(422, `head branch ${p.head} does not exist`)
    return sha
  }

  private commitJson (sha: string): Record<string, unknown> {
    const c = this.git.get(sha, 'commit')
    if (c === undefined) throw new HttpError(404, `Not Found: no commit ${sha}`)
    return {
      sha, node_id: `C_${sha}`, url: `${this.repoUrl()}/git/commits/${sha}`, html_url: `${this.htmlUrl()}/commit/${sha}`,
      author: parseSignature(c.author), committer: parseSignature(c.committer), message: c.message,
      tree: { sha: c.tree, url: `${this.repoUrl()}/git/trees/${c.tree}` },
      parents: c.parents.map((p) => ({ sha: p, url: `${this.repoUrl()}/git/commits/${p}`, html_url: `${this.htmlUrl()}/commit/${p}` })),
      verification: { verified: false, reason: 'unsigned', signature: null, payload: null, verified_at: null }
    }
  }

  private refJson (ref: string): Record<string, unknown> {
    const sha = this.refs.get(ref)!
    return { ref: `refs/${ref}`, node_id: `R_${ref}`, url: `${this.repoUrl()}/git/refs/${ref}`, object: { type: 'commit', sha, url: `${this.repoUrl()}/git/commits/${sha}` } }
  }

  private treeJson (sha: string, recursive: boolean): Record<string, unknown> {
    const t = this.git.get(sha, 'tree')
    if (t === undefined) throw new HttpError(404, `Not Found: no tree ${sha}`)
    const entries = recursive
      ? [...this.git.files(sha)].map(([path, e]) => ({ path, mode: e.mode, type: 'blob', sha: e.sha, size: this.git.get(e.sha, 'blob')?.content.length ?? 0, url: `${this.repoUrl()}/git/blobs/${e.sha}` }))
      : t.entries.map((e) => ({ path: e.name, mode: e.mode, type: e.mode === '40000' ? 'tree' : 'blob', sha: e.sha, url: `${this.repoUrl()}/git/${e.mode === '40000' ? 'trees' : 'blobs'}/${e.sha}` }))
    return { sha, url: `${this.repoUrl()}/git/trees/${sha}`, truncated: false, tree: entries }
  }

  private issueJson (i: IssueRec): Record<string, unknown> {
    return {
      id: i.number * 10, node_id: `I_${i.number}`, number: i.number, title: i.title, body: i.body, state: 'open',
      url: `${this.repoUrl()}/issues/${i.number}`, html_url: `${this.htmlUrl()}/issues/${i.number}`,
      repository_url: this.repoUrl(), labels_url: `${this.repoUrl()}/issues/${i.number}/labels{/name}`, comments_url: `${this.repoUrl()}/issues/${i.number}/comments`, events_url: `${this.repoUrl()}/issues/${i.number}/events`,
      labels: i.labels.map((name, k) => ({ id: k + 1, node_id: `L_${k}`, url: `${this.repoUrl()}/labels/${encodeURIComponent(name)}`, name, description: null, color: 'ededed', default: false })),
      user: this.userJson(i.user), created_at: i.createdAt, updated_at: i.createdAt, comments: 0, author_association: 'OWNER', locked: false
    }
  }

  private pullJson (p: PullRec): Record<string, unknown> {
    const headSha = this.headOf(p)
    const base = `${this.repoUrl()}/pulls/${p.number}`
    return {
      id: p.number * 100, node_id: `PR_${p.number}`, number: p.number, title: p.title, body: p.body, state: p.state,
      url: base, html_url: `${this.htmlUrl()}/pull/${p.number}`, diff_url: `${this.htmlUrl()}/pull/${p.number}.diff`, patch_url: `${this.htmlUrl()}/pull/${p.number}.patch`,
      issue_url: `${this.repoUrl()}/issues/${p.number}`, commits_url: `${base}/commits`, review_comments_url: `${base}/comments`, review_comment_url: `${this.repoUrl()}/pulls/comments{/number}`,
      comments_url: `${this.repoUrl()}/issues/${p.number}/comments`, statuses_url: `${this.repoUrl()}/statuses/${headSha}`,
      user: this.userJson(p.user), draft: p.draft, locked: false, author_association: 'CONTRIBUTOR',
      created_at: p.createdAt, updated_at: p.createdAt, closed_at: p.mergedAt, merged_at: p.mergedAt, merge_commit_sha: p.mergedSha,
      head: { label: `${this.opts.owner}:${p.head}`, ref: p.head, sha: headSha, user: this.userJson(p.user), repo: this.repoJson() },
      base: { label: `${this.opts.owner}:${p.base}`, ref: p.base, sha: p.baseSha, user: this.userJson(p.user), repo: this.repoJson() },
      _links: Object.fromEntries(['comments', 'commits', 'statuses', 'html', 'issue', 'review_comments', 'review_comment', 'self'].map((k) => [k, { href: `${base}/${k}` }])),
      merged: p.mergedAt !== null, mergeable: p.state === 'open' ? true : null, mergeable_state: 'clean', merged_by: null,
      comments: 0, review_comments: 0, maintainer_can_modify: false, commits: 1, additions: 0, deletions: 0, changed_files: 0,
      labels: [], assignees: [], requested_reviewers: [], requested_teams: []
    }
  }

  private reviewJson (r: ReviewRec): Record<string, unknown> {
    return {
      id: r.id, node_id: `PRR_${r.id}`, user: this.userJson(r.user), body: r.body, state: r.state, commit_id: r.commitId, submitted_at: r.submittedAt,
      html_url: `${this.htmlUrl()}/pull/${r.pull}#pullrequestreview-${r.id}`, pull_request_url: `${this.repoUrl()}/pulls/${r.pull}`,
      author_association: 'COLLABORATOR', _links: { html: { href: `${this.htmlUrl()}/pull/${r.pull}` }, pull_request: { href: `${this.repoUrl()}/pulls/${r.pull}` } }
    }
  }

  private statusJson (s: StatusRec, sha: string): Record<string, unknown> {
    return {
      id: s.id, node_id: `S_${s.id}`, url: `${this.repoUrl()}/statuses/${sha}`, avatar_url: null, state: s.state, description: s.description,
      target_url: s.targetUrl, context: s.context, created_at: s.createdAt, updated_at: s.createdAt, creator: this.userJson(s.creator), required: false
    }
  }

  private resolveCommitish (ref: string): string {
    if (/^[0-9a-f]{40}$/.test(ref)) {
      if (this.git.get(ref, 'commit') === undefined) throw new HttpError(404, `No commit found for SHA: ${ref}`)
      return ref
    }
    const sha = this.refs.get(`heads/${ref}`) ?? this.refs.get(ref.replace(/^refs\//, ''))
    if (sha === undefined) throw new HttpError(404, `No commit found for ref ${ref}`)
    return sha
  }

  private pullOr404 (n: unknown): PullRec {
    const p = this.pulls.get(Number(n))
    if (p === undefined) throw new HttpError(404, `Not Found: no pull request #${String(n)}`)
    return p
  }

  private makeHandlers (): Record<OperationId, Handler> {
    return {
      'users/get-authenticated': ({ user }) => ({ status: 200, body: { ...this.userJson(user), name: user.login, email: null, created_at: '2020-01-01T00:00:00Z', updated_at: '2020-01-01T00:00:00Z' } }),

      'issues/list-for-repo': ({ params }) => {
        const want = typeof params.labels === 'string' ? params.labels.split(',').map((l) => l.trim()).filter((l) => l !== '') : []
        const state = params.state ?? 'open'
        const list = state === 'closed' ? [] : [...this.issues.values()].filter((i) => want.every((l) => i.labels.includes(l)))
        return { status: 200, body: list.map((i) => this.issueJson(i)) }
      },

      'issues/create': ({ user, body }) => {
        const labels = ((body.labels ?? []) as Array<string | { name?: string }>).map((l) => typeof l === 'string' ? l : l.name ?? '')
        const number = this.addIssue(String(body.title), String(body.body ?? ''), labels, user.login)
        return { status: 201, body: this.issueJson(this.issues.get(number)!) }
      },

      'git/get-ref': ({ params }) => {
        const ref = String(params.ref)
        if (!this.refs.has(ref)) throw new HttpError(404, `Not Found: no ref ${ref}`)
        return { status: 200, body: this.refJson(ref) }
      },

      'git/get-commit': ({ params }) => ({ status: 200, body: this.commitJson(String(params.commit_sha)) }),

      'git/create-blob': ({ body }) => {
        const content = body.encoding === 'base64' ? Buffer.from(String(body.content), 'base64') : Buffer.from(String(body.content), 'utf8')
        const sha = this.git.put({ type: 'blob', content })
        return { status: 201, body: { sha, url: `${this.repoUrl()}/git/blobs/${sha}` } }
      },

      'git/get-blob': ({ params }) => {
        const blob = this.git.get(String(params.file_sha), 'blob')
        if (blob === undefined) throw new HttpError(404, `Not Found: no blob ${String(params.file_sha)}`)
        return { status: 200, body: { sha: params.file_sha, node_id: `B_${String(params.file_sha)}`, size: blob.content.length, url: `${this.repoUrl()}/git/blobs/${String(params.file_sha)}`, content: blob.content.toString('base64'), encoding: 'base64' } }
      },

      'git/create-tree': ({ body }) => {
        const baseTree = body.base_tree as string | undefined
        if (baseTree !== undefined && this.git.get(baseTree, 'tree') === undefined) throw new HttpError(422, `base_tree ${baseTree} is not a tree`)
        const entries = (body.tree as Array<{ path: string, mode: string, type?: string, sha?: string | null, content?: string }>).map((e) => {
          if (e.sha !== undefined && e.content !== undefined) throw new HttpError(422, `tree entry ${e.path}: sha and content are mutually exclusive`)
          if (e.sha === null && baseTree === undefined) throw new HttpError(422, `tree entry ${e.path}: deleting needs a base_tree`)
          const sha = e.content !== undefined ? this.git.put({ type: 'blob', content: Buffer.from(e.content) }) : e.sha ?? null
          if (sha !== null && this.git.get(sha, 'blob') === undefined) throw new HttpError(422, `tree entry ${e.path}: ${sha} is not a blob in this repository`)
          return { path: e.path, mode: e.mode, sha }
        })
        const sha = this.git.editTree(baseTree, entries)
        return { status: 201, body: this.treeJson(sha, false) }
      },

      'git/get-tree': ({ params }) => ({ status: 200, body: this.treeJson(String(params.tree_sha), params.recursive !== undefined && params.recursive !== '0' && params.recursive !== 'false') }),

      'git/create-commit': ({ user, body }) => {
        const tree = String(body.tree)
        if (this.git.get(tree, 'tree') === undefined) throw new HttpError(422, `tree ${tree} does not exist`)
        const parents = (body.parents as string[] | undefined) ?? []
        for (const p of parents) if (this.git.get(p, 'commit') === undefined) throw new HttpError(422, `parent ${p} does not exist`)
        const now = this.tick()
        const author = (body.author as Signature | undefined) ?? { name: user.login, email: `${user.login}@users.noreply.github.com`, date: now }
        const committer = (body.committer as Signature | undefined) ?? author
        const sha = this.git.put({ type: 'commit', tree, parents, author: signatureLine({ ...author, date: author.date ?? now }), committer: signatureLine({ ...committer, date: committer.date ?? now }), message: String(body.message) })
        return { status: 201, body: this.commitJson(sha) }
      },

      'git/create-ref': ({ body }) => {
        const ref = String(body.ref)
        if (!/^refs\/heads\/[^\s~^:?*[\\]+$/.test(ref) || ref.endsWith('/') || ref.includes('..')) throw new HttpError(422, `Reference name ${ref} is invalid`)
        const short = ref.replace(/^refs\//, '')
        if (this.refs.has(short)) throw new HttpError(422, 'Reference already exists')
        if (this.git.get(String(body.sha), 'commit') === undefined) throw new HttpError(422, 'Object does not exist')
        this.refs.set(short, String(body.sha))
        return { status: 201, body: this.refJson(short) }
      },

      'git/update-ref': ({ params, body }) => {
        const ref = String(params.ref)
        const current = this.refs.get(ref)
        if (current === undefined) throw new HttpError(422, 'Reference does not exist')
        if (this.git.get(String(body.sha), 'commit') === undefined) throw new HttpError(422, 'Object does not exist')
        if (body.force !== true && !this.git.isAncestor(current, String(body.sha))) throw new HttpError(422, 'Update is not a fast forward')
        this.refs.set(ref, String(body.sha))
        return { status: 200, body: this.refJson(ref) }
      },

      'pulls/create': ({ user, body }) => {
        const head = String(body.head)
        const baseRef = String(body.base)
        const headSha = this.refs.get(`heads/${head}`)
        const baseSha = this.refs.get(`heads/${baseRef}`)
        if (headSha === undefined || baseSha === undefined) throw new HttpError(422, `Validation Failed: head ${head} or base ${baseRef} does not exist`)
        if (headSha === baseSha) throw new HttpError(422, `No commits between ${baseRef} and ${head}`)
        if ([...this.pulls.values()].some((p) => p.state === 'open' && p.head === head)) throw new HttpError(422, `A pull request already exists for ${this.opts.owner}:${head}.`)
        const number = this.nextNumber++
        const rec: PullRec = { number, title: String(body.title ?? ''), body: String(body.body ?? ''), head, base: baseRef, baseSha, user, draft: body.draft === true, state: 'open', mergedAt: null, mergedSha: null, frozenHead: null, createdAt: this.tick() }
        this.pulls.set(number, rec)
        return { status: 201, body: this.pullJson(rec) }
      },

      'pulls/list': ({ params }) => {
        const state = params.state ?? 'open'
        const list = [...this.pulls.values()].filter((p) => state === 'all' || p.state === state)
        return { status: 200, body: list.map((p) => this.pullJson(p)) }
      },

      'pulls/get': ({ params }) => ({ status: 200, body: this.pullJson(this.pullOr404(params.pull_number)) }),

      'pulls/list-reviews': ({ params }) => {
        const p = this.pullOr404(params.pull_number)
        return { status: 200, body: this.reviews.filter((r) => r.pull === p.number && r.state !== 'PENDING').map((r) => this.reviewJson(r)) }
      },

      'pulls/create-review': ({ user, params, body }) => {
        const p = this.pullOr404(params.pull_number)
        const event = body.event as string | undefined
        if (p.state !== 'open') throw new HttpError(422, 'Pull request is closed')
        if (user.login === p.user.login && (event === 'APPROVE' || event === 'REQUEST_CHANGES')) {
          throw new HttpError(422, `Unprocessable Entity: Can not ${event === 'APPROVE' ? 'approve' : 'request changes on'} your own pull request`)
        }
        if ((event === 'REQUEST_CHANGES' || event === 'COMMENT') && (typeof body.body !== 'string' || body.body === '')) throw new HttpError(422, `Unprocessable Entity: body is required for ${event}`)
        const commitId = typeof body.commit_id === 'string' ? body.commit_id : this.headOf(p)
        if (this.git.get(commitId, 'commit') === undefined) throw new HttpError(422, `commit_id ${commitId} is not a commit`)
        const state = event === 'APPROVE' ? 'APPROVED' : event === 'REQUEST_CHANGES' ? 'CHANGES_REQUESTED' : event === 'COMMENT' ? 'COMMENTED' : 'PENDING'
        const rec: ReviewRec = { id: this.nextId++, pull: p.number, user, state, commitId, body: String(body.body ?? ''), submittedAt: this.tick() }
        this.reviews.push(rec)
        return { status: 200, body: this.reviewJson(rec) }
      },

      'pulls/merge': ({ user, params, body }) => {
        const p = this.pullOr404(params.pull_number)
        if (p.state !== 'open') throw new HttpError(405, 'Pull Request is not mergeable')
        if (this.opts.mergers !== undefined && !this.opts.mergers.includes(user.login)) throw new HttpError(403, `${user.login} is not allowed to merge into ${p.base} (branch ruleset)`)
        const headSha = this.headOf(p)
        if (typeof body.sha === 'string' && body.sha !== headSha) throw new HttpError(409, 'Head branch was modified. Review and try the merge again.')
        const baseTip = this.refs.get(`heads/${p.base}`)!
        if (!this.git.isAncestor(baseTip, headSha)) throw new HttpError(405, 'Pull Request is not mergeable (the stand-in merges fast-forwardable heads only)')
        const head = this.git.get(headSha, 'commit')!
        const method = (body.merge_method as string | undefined) ?? 'merge'
        const now = this.tick()
        const sig = signatureLine({ name: user.login, email: `${user.login}@users.noreply.github.com`, date: now })
        const message = typeof body.commit_title === 'string' ? body.commit_title : `Merge pull request #${p.number} from ${p.head}`
        const merged = method === 'rebase' ? headSha : this.git.put({ type: 'commit', tree: head.tree, parents: method === 'squash' ? [baseTip] : [baseTip, headSha], author: sig, committer: sig, message })
        this.refs.set(`heads/${p.base}`, merged)
        Object.assign(p, { state: 'closed', mergedAt: now, mergedSha: merged, frozenHead: headSha })
        return { status: 200, body: { sha: merged, merged: true, message: 'Pull Request successfully merged' } }
      },

      'checks/list-for-ref': ({ params }) => {
        const sha = this.resolveCommitish(String(params.ref))
        const runs = this.checkRuns.get(sha) ?? []
        return {
          status: 200,
          body: {
            total_count: runs.length,
            check_runs: runs.map((r) => ({
              id: r.id, node_id: `CR_${r.id}`, head_sha: sha, name: r.name, status: r.status, conclusion: r.conclusion,
              url: `${this.repoUrl()}/check-runs/${r.id}`, html_url: null, details_url: null, external_id: null, started_at: null, completed_at: null,
              check_suite: null, app: null, pull_requests: [], output: { title: null, summary: null, text: null, annotations_count: 0, annotations_url: `${this.repoUrl()}/check-runs/${r.id}/annotations` }
            }))
          }
        }
      },

      'repos/get-combined-status-for-ref': ({ params }) => {
        const sha = this.resolveCommitish(String(params.ref))
        const latest = new Map<string, StatusRec>()
        for (const s of this.statuses.get(sha) ?? []) latest.set(s.context, s)
        const list = [...latest.values()]
        const state = list.some((s) => s.state === 'failure' || s.state === 'error') ? 'failure' : list.length === 0 || list.some((s) => s.state === 'pending') ? 'pending' : 'success'
        return {
          status: 200,
          body: {
            state, sha, total_count: list.length, statuses: list.map((s) => this.statusJson(s, sha)),
            commit_url: `${this.repoUrl()}/commits/${sha}`, url: `${this.repoUrl()}/commits/${sha}/status`
          }
        }
      },

      'repos/create-commit-status': ({ user, params, body }) => {
        const sha = String(params.sha)
        if (this.git.get(sha, 'commit') === undefined) throw new HttpError(422, `No commit found for SHA: ${sha}`)
        if (typeof body.description === 'string' && body.description.length > 140) throw new HttpError(422, 'description is too long (maximum is 140 characters)')
        const rec: StatusRec = { id: this.nextId++, context: String(body.context ?? 'default'), state: String(body.state), description: (body.description as string | null | undefined) ?? null, targetUrl: (body.target_url as string | null | undefined) ?? null, creator: user, createdAt: this.tick() }
        this.statuses.set(sha, [...(this.statuses.get(sha) ?? []), rec])
        return { status: 201, body: this.statusJson(rec, sha) }
      }
    }
  }
}
