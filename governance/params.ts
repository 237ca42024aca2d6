import { access } from 'node:fs/promises'
import { join } from 'node:path'
import { DATABASE_FILE } from '../runtime/config.ts'
import { SqliteDb } from '../runtime/store/sqlite.ts'
import { GovernanceStore, migrateGovernance, type ParamRow } from './store.ts'
import type { Tally } from './tally.ts'

/** Opens an agent's database for governance reads from the CLI (safe while the node runs: WAL). */
async function withStore<T> (home: string, fn: (store: GovernanceStore) => Promise<T>): Promise<T> {
  const path = join(home, DATABASE_FILE)
  try {
    await access(path)
  } catch {
    throw new Error(`no clawmesh agent in ${home} (no ${DATABASE_FILE}); create one with clawmesh init`)
  }
  const db = await SqliteDb.open(path)
  try {
    await migrateGovernance(db)
    return await fn(new GovernanceStore(db))
  } finally {
    await db.close()
  }
}

export interface GovernanceView {
  proposals: Array<{ id: string, author: string, parameter: string, value: number, rationale: string, deadline: number, quorum: number, result?: Tally }>
  parameters: ParamRow[]
}

export async function readGovernance (home: string): Promise<GovernanceView> {
  return await withStore(home, async (store) => ({
    proposals: (await store.listProposals()).map((p) => ({
      id: p.id, author: p.env.from, parameter: p.env.body.parameter, value: p.env.body.value, rationale: p.env.body.rationale,
      deadline: p.env.body.deadline, quorum: p.env.body.quorum, result: p.result
    })),
    parameters: await store.parameters()
  }))
}

/** The review quorum the network voted for, if any: the keeper never goes below the owners' floor. */
export async function votedReviewQuorum (home: string): Promise<number | undefined> {
  try {
    return await withStore(home, async (store) => (await store.parameters()).find((p) => p.parameter === 'review-quorum')?.value)
  } catch {
    return undefined
  }
}
