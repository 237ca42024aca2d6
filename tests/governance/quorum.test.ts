import { describe, expect, it } from 'vitest'
import { evaluateQuorum, quorumStatus, QUORUM_CONTEXT, type Check, type QuorumInput, type Review } from '../../governance/quorum.ts'

const HEAD = 'b'.repeat(40)
const OLD = 'a'.repeat(40)
const green: Check[] = [{ name: 'ci/test', source: 'status', state: 'success' }]
let nextId = 1
const at = (min: number): string => new Date(Date.UTC(2026, 0, 1, 0, min)).toISOString()
const review = (login: string, state: string, min: number, commitId = HEAD, userType = 'User'): Review => ({ id: nextId++, login, userType, state, commitId, submittedAt: at(min) })

function q (reviews: Review[], extra: Partial<QuorumInput> = {}): ReturnType<typeof evaluateQuorum> {
  return evaluateQuorum({ headSha: HEAD, prAuthor: 'clawbot-alice', reviews, allowList: ['ann', 'ben', 'cat'], required: 2, agentLogins: ['clawbot-alice', 'clawbot-bob'], checks: green, ...extra })
}

describe('evaluateQuorum', () => {
  it('needs the required number of distinct allow-listed approvals of the head commit', () => {
    expect(q([review('ann', 'APPROVED', 1)])).toMatchObject({ state: 'pending', approvers: ['ann'] })
    expect(q([review('ann', 'APPROVED', 1), review('ann', 'APPROVED', 2)]).state).toBe('pending')
    expect(q([review('ann', 'APPROVED', 1), review('Ben', 'APPROVED', 2)])).toMatchObject({ state: 'approved', approvers: ['ann', 'ben'] })
  })

  it('does not count approvals of an older commit', () => {
    const r = q([review('ann', 'APPROVED', 1, OLD), review('ben', 'APPROVED', 2)])
    expect(r).toMatchObject({ state: 'pending', approvers: ['ben'], stale: ['ann'] })
    expect(r.reason).toMatch(/older commit/)
    expect(q([review('ann', 'APPROVED', 1, OLD), review('ann', 'APPROVED', 3), review('ben', 'APPROVED', 2)]).state).toBe('approved')
  })

  it('blocks on an outstanding change request, even one made on an older commit, until the reviewer approves the head', () => {
    const base = [review('ann', 'APPROVED', 1), review('ben', 'APPROVED', 2)]
    expect(q([...base, review('cat', 'CHANGES_REQUESTED', 3, OLD)])).toMatchObject({ state: 'blocked', blockers: ['cat'] })
    expect(q([...base, review('cat', 'CHANGES_REQUESTED', 3), review('cat', 'COMMENTED', 4)]).state).toBe('blocked')
    expect(q([...base, review('cat', 'CHANGES_REQUESTED', 3), review('cat', 'APPROVED', 5)])).toMatchObject({ state: 'approved', approvers: ['ann', 'ben', 'cat'] })
    // Approving then requesting changes: the later review stands.
    expect(q([review('ann', 'APPROVED', 1), review('ben', 'APPROVED', 2), review('ann', 'CHANGES_REQUESTED', 6)]).state).toBe('blocked')
  })

  it('lets COMMENTED never override and DISMISSED clear a standing', () => {
    expect(q([review('ann', 'APPROVED', 1), review('ann', 'COMMENTED', 2), review('ben', 'APPROVED', 3)]).state).toBe('approved')
    expect(q([review('ann', 'APPROVED', 1), review('ann', 'DISMISSED', 2), review('ben', 'APPROVED', 3)])).toMatchObject({ state: 'pending', approvers: ['ben'] })
    expect(q([review('cat', 'DISMISSED', 1), review('ann', 'APPROVED', 2), review('ben', 'APPROVED', 3)]).state).toBe('approved')
  })

  it('orders by submission time, not by list order', () => {
    expect(q([review('ann', 'CHANGES_REQUESTED', 9), review('ann', 'APPROVED', 1), review('ben', 'APPROVED', 2)]).state).toBe('blocked')
  })

  it('ignores agents, bots, the PR author and strangers, even agents on the allow-list', () => {
    const r = q([
      review('clawbot-alice', 'APPROVED', 1), review('clawbot-bob', 'CHANGES_REQUESTED', 2),
      review('dependabot[bot]', 'APPROVED', 3, HEAD, 'Bot'), review('eve', 'CHANGES_REQUESTED', 4), review('ann', 'APPROVED', 5)
    ], { allowList: ['ann', 'ben', 'clawbot-alice', 'clawbot-bob', 'dependabot[bot]'] })
    expect(r).toMatchObject({ state: 'pending', approvers: ['ann'], blockers: [] })
    expect(r.ignored).toEqual([
      { login: 'clawbot-alice', reason: 'agent' }, { login: 'clawbot-bob', reason: 'agent' },
      { login: 'dependabot[bot]', reason: 'bot' }, { login: 'eve', reason: 'not-allow-listed' }
    ])
    expect(q([review('ann', 'APPROVED', 1), review('carl', 'APPROVED', 2)], { prAuthor: 'carl', allowList: ['ann', 'carl'] }).ignored).toEqual([{ login: 'carl', reason: 'author' }])
  })

  it('requires green checks and ignores its own status', () => {
    const approved = [review('ann', 'APPROVED', 1), review('ben', 'APPROVED', 2)]
    expect(q(approved, { checks: [...green, { name: 'build', source: 'check-run', state: 'pending' }] }).state).toBe('pending')
    expect(q(approved, { checks: [...green, { name: 'build', source: 'check-run', state: 'failure' }] })).toMatchObject({ state: 'failing', checks: { failed: ['build'] } })
    expect(q(approved, { checks: [{ name: QUORUM_CONTEXT, source: 'status', state: 'failure' }, ...green] }).state).toBe('approved')
    expect(q(approved, { checks: [] })).toMatchObject({ state: 'pending', reason: 'no checks have reported on the head commit' })
    expect(q(approved, { checks: [], requireChecks: false }).state).toBe('approved')
  })

  it('maps results onto commit statuses within GitHub\'s limits', () => {
    expect(quorumStatus(q([])).state).toBe('pending')
    expect(quorumStatus(q([review('ann', 'CHANGES_REQUESTED', 1)])).state).toBe('failure')
    const long = q([], { allowList: Array.from({ length: 60 }, (_, i) => `reviewer${i}`), reviews: Array.from({ length: 60 }, (_, i) => review(`reviewer${i}`, 'CHANGES_REQUESTED', i)) })
    expect(quorumStatus(long).description.length).toBeLessThanOrEqual(140)
    expect(() => q([], { required: 0 })).toThrow(/positive integer/)
  })
})
