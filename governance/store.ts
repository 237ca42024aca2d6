import { applyMigrations, type MigrationTarget } from '../runtime/store/migrations.ts'
import type { Queryable } from '../runtime/store/sqlite.ts'
import type { Envelope } from '../protocols/envelope.ts'
import type { NetworkParameter, ParameterProposal, Vote } from '../protocols/governance.ts'
import type { Decision, Tally } from './tally.ts'

/** The governance layer's tables (namespace "governance"); append migrations, never edit shipped ones. */
export const GOVERNANCE_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE gov_proposals (
    id          TEXT PRIMARY KEY,
    author      TEXT NOT NULL,
    parameter   TEXT NOT NULL,
    deadline    INTEGER NOT NULL,
    envelope    TEXT NOT NULL,
    received_at INTEGER NOT NULL
  );
  -- Votes are kept even when their proposal has not arrived yet: gossip does not promise order.
  CREATE TABLE gov_votes (
    author      TEXT NOT NULL,
    id          TEXT NOT NULL,
    proposal    TEXT NOT NULL,
    envelope    TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (author, id)
  );
  CREATE INDEX gov_votes_by_proposal ON gov_votes (proposal);
  CREATE TABLE gov_results (
    proposal     TEXT PRIMARY KEY,
    outcome      TEXT NOT NULL,
    digest       TEXT NOT NULL,
    tally        TEXT NOT NULL,
    finalized_at INTEGER NOT NULL
  );
  -- The network parameters in force, as resolved from all passed tallies.
  CREATE TABLE network_params (
    parameter  TEXT PRIMARY KEY,
    value      REAL NOT NULL,
    proposal   TEXT NOT NULL,
    deadline   INTEGER NOT NULL,
    applied_at INTEGER NOT NULL
  );
  -- Pull requests this agent opened, so that it remembers its work without asking the forge.
  CREATE TABLE gov_pull_requests (
    repo       TEXT NOT NULL,
    number     INTEGER NOT NULL,
    issue      INTEGER NOT NULL,
    url        TEXT NOT NULL,
    head_sha   TEXT NOT NULL,
    branch     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (repo, number)
  );
  `,
  // 2: the latest quorum evaluation per pull request, and the views the owner's board shows.
  `
  CREATE TABLE gov_quorum (
    repo       TEXT NOT NULL,
    number     INTEGER NOT NULL,
    title      TEXT NOT NULL,
    url        TEXT NOT NULL,
    author     TEXT NOT NULL,
    head_sha   TEXT NOT NULL,
    state      TEXT NOT NULL,
    approvals  INTEGER NOT NULL,
    required   INTEGER NOT NULL,
    reason     TEXT NOT NULL,
    merged     INTEGER NOT NULL DEFAULT 0,
    checked_at INTEGER NOT NULL,
    PRIMARY KEY (repo, number)
  );
  -- Evaluated PRs (on the keeper's node), plus this agent's own PRs that no keeper pass has seen here.
  CREATE VIEW board_prs AS
    SELECT repo, number, title, url, author, head_sha, state, approvals, required, reason, merged, checked_at FROM gov_quorum
    UNION ALL
    SELECT p.repo, p.number, '', p.url, 'this agent', p.head_sha, 'opened', NULL, NULL, 'awaiting the quorum keeper', 0, p.created_at
    FROM gov_pull_requests p WHERE NOT EXISTS (SELECT 1 FROM gov_quorum q WHERE q.repo = p.repo AND q.number = p.number)
    ORDER BY 12 DESC;
  CREATE VIEW board_votes AS
    SELECT p.id AS proposal, p.parameter, json_extract(p.envelope, '$.body.value') AS value, p.deadline,
           json_extract(p.envelope, '$.body.quorum') AS quorum,
           (SELECT COUNT(DISTINCT v.author) FROM gov_votes v WHERE v.proposal = p.id) AS voters_heard,
           COALESCE(r.outcome, 'open') AS outcome
    FROM gov_proposals p LEFT JOIN gov_results r ON r.proposal = p.id ORDER BY p.deadline DESC;
  `
]

export interface QuorumRow {
  repo: string
  number: number
  title: string
  url: string
  author: string
  headSha: string
  state: string
  approvals: number
  required: number
  reason: string
  merged: boolean
}

export interface GovernanceDb extends MigrationTarget, Queryable {}

export async function migrateGovernance (db: GovernanceDb): Promise<void> {
  await applyMigrations(db, 'governance', GOVERNANCE_MIGRATIONS)
}

export interface ParamRow { parameter: NetworkParameter, value: number, proposal: string, deadline: number, appliedAt: number }

/** Typed access to the governance tables; one instance per node database. */
export class GovernanceStore {
  constructor (readonly db: GovernanceDb) {}

  async saveProposal (id: string, env: Envelope<ParameterProposal>, now = Date.now()): Promise<boolean> {
    const { changes } = await this.db.run(
      'INSERT INTO gov_proposals (id, author, parameter, deadline, envelope, received_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO NOTHING',
      [id, env.from, env.body.parameter, env.body.deadline, JSON.stringify(env), now]
    )
    return changes === 1
  }

  async saveVote (env: Envelope<Vote>, now = Date.now()): Promise<boolean> {
    const { changes } = await this.db.run(
      'INSERT INTO gov_votes (author, id, proposal, envelope, received_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(author, id) DO NOTHING',
      [env.from, env.id, env.body.proposal, JSON.stringify(env), now]
    )
    return changes === 1
  }

  async getProposal (id: string): Promise<Envelope<ParameterProposal> | undefined> {
    const row = await this.db.get<{ envelope: string }>('SELECT envelope FROM gov_proposals WHERE id = ?', [id])
    return row === undefined ? undefined : JSON.parse(row.envelope) as Envelope<ParameterProposal>
  }

  async listProposals (): Promise<Array<{ id: string, env: Envelope<ParameterProposal>, result: Tally | undefined }>> {
    const rows = await this.db.all<{ id: string, envelope: string, tally: string | null }>(
      'SELECT p.id, p.envelope, r.tally FROM gov_proposals p LEFT JOIN gov_results r ON r.proposal = p.id ORDER BY p.deadline, p.id'
    )
    return rows.map((r) => ({ id: r.id, env: JSON.parse(r.envelope) as Envelope<ParameterProposal>, result: r.tally === null ? undefined : JSON.parse(r.tally) as Tally }))
  }

  async votesFor (proposal: string): Promise<Array<Envelope<Vote>>> {
    const rows = await this.db.all<{ envelope: string }>('SELECT envelope FROM gov_votes WHERE proposal = ?', [proposal])
    return rows.map((r) => JSON.parse(r.envelope) as Envelope<Vote>)
  }

  async getResult (proposal: string): Promise<Tally | undefined> {
    const row = await this.db.get<{ tally: string }>('SELECT tally FROM gov_results WHERE proposal = ?', [proposal])
    return row === undefined ? undefined : JSON.parse(row.tally) as Tally
  }

  async unfinalized (): Promise<Array<{ id: string, env: Envelope<ParameterProposal> }>> {
    const rows = await this.db.all<{ id: string, envelope: string }>(
      'SELECT p.id, p.envelope FROM gov_proposals p LEFT JOIN gov_results r ON r.proposal = p.id WHERE r.proposal IS NULL'
    )
    return rows.map((r) => ({ id: r.id, env: JSON.parse(r.envelope) as Envelope<ParameterProposal> }))
  }

  /**
   * Records a final tally and re-resolves the parameters from all results in one transaction, so the
   * parameters table always matches the results table.
   */
  async finalize (tally: Tally, resolve: (all: Tally[]) => Map<NetworkParameter, Decision>, now = Date.now()): Promise<boolean> {
    return await this.db.transaction(async (tx) => {
      const { changes } = await tx.run(
        'INSERT INTO gov_results (proposal, outcome, digest, tally, finalized_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(proposal) DO NOTHING',
        [tally.proposal, tally.outcome, tally.digest, JSON.stringify(tally), now]
      )
      if (changes === 0) return false
      const all = (await tx.all<{ tally: string }>('SELECT tally FROM gov_results')).map((r) => JSON.parse(r.tally) as Tally)
      for (const d of resolve(all).values()) {
        await tx.run(
          `INSERT INTO network_params (parameter, value, proposal, deadline, applied_at) VALUES (?, ?, ?, ?, ?)
           ON CONFLICT(parameter) DO UPDATE SET value = excluded.value, proposal = excluded.proposal, deadline = excluded.deadline,
             applied_at = CASE WHEN network_params.proposal = excluded.proposal THEN network_params.applied_at ELSE excluded.applied_at END`,
          [d.parameter, d.value, d.proposal, d.deadline, now]
        )
      }
      return true
    })
  }

  async parameters (): Promise<ParamRow[]> {
    const rows = await this.db.all<{ parameter: NetworkParameter, value: number, proposal: string, deadline: number, applied_at: number }>(
      'SELECT * FROM network_params ORDER BY parameter'
    )
    return rows.map((r) => ({ parameter: r.parameter, value: r.value, proposal: r.proposal, deadline: r.deadline, appliedAt: r.applied_at }))
  }

  async recordPullRequest (pr: { repo: string, number: number, issue: number, url: string, headSha: string, branch: string }, now = Date.now()): Promise<void> {
    await this.db.run(
      `INSERT INTO gov_pull_requests (repo, number, issue, url, head_sha, branch, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(repo, number) DO UPDATE SET head_sha = excluded.head_sha`,
      [pr.repo, pr.number, pr.issue, pr.url, pr.headSha, pr.branch, now]
    )
  }

  async recordQuorum (q: QuorumRow, now = Date.now()): Promise<void> {
    await this.db.run(
      `INSERT INTO gov_quorum (repo, number, title, url, author, head_sha, state, approvals, required, reason, merged, checked_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT(repo, number) DO UPDATE SET title = excluded.title, head_sha = excluded.head_sha, state = excluded.state,
         approvals = excluded.approvals, required = excluded.required, reason = excluded.reason, merged = excluded.merged, checked_at = excluded.checked_at`,
      [q.repo, q.number, q.title, q.url, q.author, q.headSha, q.state, q.approvals, q.required, q.reason, q.merged ? 1 : 0, now]
    )
  }

  async pullRequests (): Promise<Array<{ repo: string, number: number, issue: number, url: string, headSha: string, branch: string, createdAt: number }>> {
    const rows = await this.db.all<Record<string, unknown>>('SELECT * FROM gov_pull_requests ORDER BY created_at')
    return rows.map((r) => ({ repo: r.repo as string, number: r.number as number, issue: r.issue as number, url: r.url as string, headSha: r.head_sha as string, branch: r.branch as string, createdAt: r.created_at as number }))
  }
}
