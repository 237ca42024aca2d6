import { applyMigrations } from '../runtime/store/migrations.ts'
import type { Store } from '../runtime/store/store.ts'
import { MARKET_TABLES_SQL } from '../skills/market/book.ts'

/** The agents layer's tables (namespace "agents"). Append only; never edit a shipped migration. */
export const AGENT_MIGRATIONS: readonly string[] = [
  // 1: the market's book, the lifecycle snapshot, the head's goals and the log of every tool call the LLM made.
  `
  ${MARKET_TABLES_SQL}
  CREATE TABLE agent_lifecycle (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    state       TEXT NOT NULL,
    snapshot    TEXT NOT NULL,
    updated_at  INTEGER NOT NULL
  );
  CREATE TABLE agent_actions (
    seq         INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    thread      TEXT NOT NULL,
    tool        TEXT NOT NULL,
    args        TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('done', 'refused', 'failed')),
    detail      TEXT NOT NULL
  );
  CREATE INDEX agent_actions_by_thread ON agent_actions (thread, seq);
  -- Models this agent, as a head, wants assembled: a restart picks the goal up again.
  CREATE TABLE agent_goals (
    model       TEXT PRIMARY KEY,
    ref         TEXT NOT NULL,
    created_at  INTEGER NOT NULL
  );
  `
]

export async function migrateAgentTables (store: Store): Promise<void> {
  await applyMigrations(store.db, 'agents', AGENT_MIGRATIONS, store.db.path)
}
