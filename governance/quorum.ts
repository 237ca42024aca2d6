/**
 * The human review quorum: the one rule that stands between an agent's change and the shared code.
 * Pure, so that it can be tested case by case and so that the keeper's decision can be replayed.
 *
 * Rules (decided here, documented in the README):
 * - Reviewers are GitHub logins, compared case-insensitively (GitHub logins are case-insensitive).
 * - Only humans count: a review by a login in `agentLogins`, by an account of type Bot, or by the PR's
 *   own author is ignored entirely, neither approving nor blocking, even if that login is also on the
 *   allow-list (the config refuses such overlap; this is the second line of defence).
 * - Only allow-listed humans count, for approvals and for change requests alike: anyone else's review
 *   is reported but changes nothing, so a stranger on a public repository can neither merge nor stall.
 * - Per reviewer, the latest review (by submission time, then review id) that is APPROVED,
 *   CHANGES_REQUESTED or DISMISSED is their standing; COMMENTED and PENDING never change it (GitHub
 *   behaves the same way). DISMISSED clears the reviewer's standing.
 * - An approval counts only if it was given on the current head commit: a push makes every earlier
 *   approval stale. A change request blocks whatever commit it was made on, until that reviewer
 *   approves the head or the request is dismissed.
 * - Checks: every check run and every commit status on the head (other than our own quorum status)
 *   must have succeeded; neutral and skipped check runs count as success. With `requireChecks` (the
 *   default), a head with no checks at all is pending, not green: no CI result is not a pass.
 */

export const QUORUM_CONTEXT = 'clawmesh/quorum'

export type ReviewState = 'APPROVED' | 'CHANGES_REQUESTED' | 'COMMENTED' | 'DISMISSED' | 'PENDING'

export interface Review {
  id: number
  login: string
  /** GitHub's account type: 'User', 'Bot', 'Organization'… */
  userType?: string
  state: ReviewState | string
  /** The commit the review was submitted on. */
  commitId: string | null
  submittedAt: string | null
}

export interface Check {
  name: string
  source: 'check-run' | 'status'
  /** Normalized: the check is done and passed, still running, or done and did not pass. */
  state: 'success' | 'pending' | 'failure'
}

export interface QuorumInput {
  headSha: string
  prAuthor?: string
  reviews: readonly Review[]
  allowList: readonly string[]
  required: number
  agentLogins: readonly string[]
  checks: readonly Check[]
  requireChecks?: boolean
}

export type QuorumState = 'approved' | 'pending' | 'blocked' | 'failing'

export interface QuorumResult {
  state: QuorumState
  /** Allow-listed humans whose standing is an approval of the head commit. */
  approvers: string[]
  /** Allow-listed humans with an outstanding request for changes. */
  blockers: string[]
  /** Allow-listed humans whose latest approval is of an older commit. */
  stale: string[]
  /** Reviews that cannot count, and why. */
  ignored: Array<{ login: string, reason: 'agent' | 'bot' | 'author' | 'not-allow-listed' }>
  checks: { passed: string[], pending: string[], failed: string[] }
  reason: string
}

const STANDING = new Set(['APPROVED', 'CHANGES_REQUESTED', 'DISMISSED'])

export function evaluateQuorum (input: QuorumInput): QuorumResult {
  if (!Number.isInteger(input.required) || input.required < 1) throw new RangeError(`required approvals must be a positive integer, got ${input.required}`)
  const lower = (s: string): string => s.toLowerCase()
  const allow = new Set(input.allowList.map(lower))
  const agents = new Set(input.agentLogins.map(lower))
  const author = input.prAuthor === undefined ? undefined : lower(input.prAuthor)

  const ignored = new Map<string, QuorumResult['ignored'][number]['reason']>()
  const standing = new Map<string, Review>()
  const ordered = [...input.reviews].sort((a, b) => cmp(a.submittedAt ?? '', b.submittedAt ?? '') || a.id - b.id)
  for (const r of ordered) {
    const login = lower(r.login)
    const why = agents.has(login) ? 'agent' : r.userType === 'Bot' || login.endsWith('[bot]') ? 'bot' : login === author ? 'author' : !allow.has(login) ? 'not-allow-listed' : undefined
    if (why !== undefined) { ignored.set(login, why); continue }
    if (STANDING.has(r.state)) standing.set(login, r)
  }

  const approvers: string[] = []
  const blockers: string[] = []
  const stale: string[] = []
  for (const [login, r] of standing) {
    if (r.state === 'CHANGES_REQUESTED') blockers.push(login)
    else if (r.state === 'APPROVED') (r.commitId === input.headSha ? approvers : stale).push(login)
  }
  approvers.sort(); blockers.sort(); stale.sort()

  const checks = { passed: [] as string[], pending: [] as string[], failed: [] as string[] }
  for (const c of input.checks) {
    if (c.source === 'status' && c.name === QUORUM_CONTEXT) continue
    checks[c.state === 'success' ? 'passed' : c.state === 'pending' ? 'pending' : 'failed'].push(c.name)
  }
  const noChecks = checks.passed.length + checks.pending.length + checks.failed.length === 0

  const result = { approvers, blockers, stale, ignored: [...ignored].map(([login, reason]) => ({ login, reason })).sort((a, b) => cmp(a.login, b.login)), checks }
  if (blockers.length > 0) return { ...result, state: 'blocked', reason: `changes requested by ${blockers.join(', ')}` }
  if (checks.failed.length > 0) return { ...result, state: 'failing', reason: `checks failed: ${checks.failed.join(', ')}` }
  if (approvers.length < input.required) {
    const staleNote = stale.length > 0 ? `; approvals of an older commit do not count (${stale.join(', ')})` : ''
    return { ...result, state: 'pending', reason: `${approvers.length} of ${input.required} required approvals on ${input.headSha.slice(0, 7)}${staleNote}` }
  }
  if (checks.pending.length > 0) return { ...result, state: 'pending', reason: `waiting for checks: ${checks.pending.join(', ')}` }
  if (noChecks && input.requireChecks !== false) return { ...result, state: 'pending', reason: 'no checks have reported on the head commit' }
  return { ...result, state: 'approved', reason: `approved by ${approvers.join(', ')}; checks green` }
}

/** The commit status that publishes a quorum result (GitHub caps descriptions at 140 characters). */
export function quorumStatus (r: QuorumResult): { state: 'success' | 'pending' | 'failure', description: string } {
  const state = r.state === 'approved' ? 'success' : r.state === 'pending' ? 'pending' : 'failure'
  const description = r.reason.length > 140 ? r.reason.slice(0, 139) + '…' : r.reason
  return { state, description }
}

function cmp (a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}
