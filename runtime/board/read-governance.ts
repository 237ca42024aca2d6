import type { MeshNode } from '../node/node.ts'
import { dumpRelation, listRelations, relationExists, type TableDump } from './tables.ts'

export interface GovernanceView {
  /** The documented views, when the governance layer created them. */
  prs: TableDump | null
  votes: TableDump | null
  /** Every other governance table (gov_* / governance_*), shown generically. */
  tables: TableDump[]
}

/**
 * Governance without knowing its schema: the views board_prs (agent PRs with their quorum state) and
 * board_votes (open votes) when the governance layer defines them, and otherwise the raw rows of its
 * gov_* / governance_* tables, so the owner sees something true either way.
 */
export async function readGovernance (node: MeshNode): Promise<GovernanceView> {
  const db = node.store.db
  const prs = await relationExists(db, 'board_prs') ? await dumpRelation(db, 'board_prs') : null
  const votes = await relationExists(db, 'board_votes') ? await dumpRelation(db, 'board_votes') : null
  const names = [...await listRelations(db, 'gov\\_%'), ...await listRelations(db, 'governance\\_%')]
  const tables: TableDump[] = []
  for (const name of names) tables.push(await dumpRelation(db, name, 50))
  return { prs, votes, tables }
}
