import type { Queryable } from './sqlite.ts'

/** The runtime's own tables (namespace "runtime"). */
export const MIGRATIONS: readonly string[] = [
  // 1: the mesh node (peers, gossip transcript) and the tables later layers fill.
  `
  CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  );
  CREATE TABLE peers (
    peer_id     TEXT PRIMARY KEY,
    name        TEXT,
    first_seen  INTEGER NOT NULL,
    last_seen   INTEGER NOT NULL,
    addrs       TEXT NOT NULL DEFAULT '[]',
    presence    TEXT,
    presence_at INTEGER
  );
  -- Every gossip envelope accepted (and every one we sent), verbatim: the raw transcript.
  CREATE TABLE messages (
    author      TEXT NOT NULL,
    id          TEXT NOT NULL,
    kind        TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    outgoing    INTEGER NOT NULL DEFAULT 0,
    envelope    TEXT NOT NULL,
    PRIMARY KEY (author, id)
  );
  CREATE INDEX messages_by_kind_time ON messages (kind, received_at);
  CREATE TABLE model_files (
    path        TEXT PRIMARY KEY,
    size_bytes  INTEGER NOT NULL,
    mtime_ms    INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    architecture TEXT NOT NULL,
    layers      INTEGER NOT NULL
  );
  -- Filled by the negotiation layer: signed agreements to serve a layer range of a model.
  CREATE TABLE contracts (
    id          TEXT PRIMARY KEY,
    model_sha256 TEXT NOT NULL,
    head        TEXT NOT NULL,
    worker      TEXT NOT NULL,
    layer_start INTEGER NOT NULL,
    layer_end   INTEGER NOT NULL,
    price       REAL NOT NULL,
    expires_at  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    document    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
  );
  CREATE INDEX contracts_by_worker ON contracts (worker, model_sha256, status);
  -- Filled by the economy layer: an append-only, hash-chained, double-entry ledger.
  CREATE TABLE ledger (
    seq         INTEGER PRIMARY KEY,
    ts          INTEGER NOT NULL,
    debit       TEXT NOT NULL,
    credit      TEXT NOT NULL,
    amount      INTEGER NOT NULL CHECK (amount > 0),
    memo        TEXT NOT NULL,
    receipt     TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE
  );
  CREATE TRIGGER ledger_append_only_update BEFORE UPDATE ON ledger BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
  CREATE TRIGGER ledger_append_only_delete BEFORE DELETE ON ledger BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
  `,
  // 2: the economy: API keys of outside users, metered usage, receipts, fraud reports; ledger lookups.
  `
  -- An API key is a random secret shown once; only its SHA-256 is kept. Its balance lives in the ledger.
  CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    hash         TEXT NOT NULL UNIQUE,
    label        TEXT NOT NULL DEFAULT '',
    rate_per_min INTEGER NOT NULL,
    burst        INTEGER NOT NULL,
    revoked      INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
  );
  -- One served request: what the user owes once its receipts are double-signed (pending → settled).
  CREATE TABLE usage (
    id                TEXT PRIMARY KEY,
    key_id            TEXT NOT NULL,
    model_sha256      TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    fee               INTEGER NOT NULL,
    status            TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    settled_at        INTEGER
  );
  CREATE INDEX usage_by_status ON usage (status, key_id);
  -- Receipts this node proposed, signed or heard. document holds the most-signed form we have.
  -- status: proposed | signed (double-signed, unsettled) | settled | void.
  CREATE TABLE receipts (
    id          TEXT PRIMARY KEY,
    contract    TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    head        TEXT NOT NULL,
    worker      TEXT NOT NULL,
    tokens      INTEGER NOT NULL,
    amount      INTEGER NOT NULL,
    usage_id    TEXT,
    status      TEXT NOT NULL,
    document    TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    settled_at  INTEGER,
    UNIQUE (contract, seq)
  );
  CREATE INDEX receipts_by_usage ON receipts (usage_id);
  CREATE INDEX receipts_by_worker ON receipts (worker, status);
  CREATE TABLE fraud_reports (
    id         TEXT PRIMARY KEY,
    accused    TEXT NOT NULL,
    reporter   TEXT NOT NULL,
    contract   TEXT NOT NULL,
    document   TEXT NOT NULL,
    created_at INTEGER NOT NULL
  );
  CREATE INDEX ledger_by_debit ON ledger (debit);
  CREATE INDEX ledger_by_credit ON ledger (credit);
  -- Running balance per account, written in the same transaction as each ledger entry: reads are
  -- O(1) instead of a sum over the account's history. The ledger stays the truth (verifyChain checks).
  CREATE TABLE ledger_balances (
    account TEXT PRIMARY KEY,
    balance INTEGER NOT NULL
  );
  -- ledger.receipt names what an entry settles (a receipt id, or fee:<usage id>): at most once, ever.
  CREATE UNIQUE INDEX ledger_settles_once ON ledger (receipt) WHERE receipt IS NOT NULL;
  `,
  // 3: ledger checkpoints (protocols/ledger-checkpoint.ts): the chain anchored outside this file.
  `
  -- Checkpoints of other nodes' ledgers that we keep and hand back when the node asks (signed by it).
  CREATE TABLE ledger_peer_checkpoints (
    node        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    document    TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (node, seq)
  );
  -- Our own checkpoints as peers countersigned them. A copy only: whoever rewrites this file can drop
  -- them, which is why the startup check also asks the peers.
  CREATE TABLE ledger_witnesses (
    seq         INTEGER NOT NULL,
    hash        TEXT NOT NULL,
    witness     TEXT NOT NULL,
    document    TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (seq, witness)
  );
  `
]

export interface MigrationTarget {
  get: Queryable['get']
  transaction<T> (fn: (tx: Queryable) => Promise<T>): Promise<T>
  exec: Queryable['exec']
}

/**
 * Applies a layer's migrations in order, each in its own transaction. Every layer (runtime, agents,
 * governance, …) keeps its own numbered list under its own namespace in schema_migrations, so layers
 * add tables without the runtime knowing them and without fighting over one version number.
 * Never edit a migration that has shipped: append a new one.
 */
export async function applyMigrations (db: MigrationTarget, namespace: string, migrations: readonly string[], path = 'database'): Promise<number> {
  await db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (namespace TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at INTEGER NOT NULL)')
  const row = await db.get<{ version: number }>('SELECT version FROM schema_migrations WHERE namespace = ?', [namespace])
  const current = row?.version ?? 0
  if (current > migrations.length) {
    throw new Error(`${path} has ${namespace} schema version ${current}, newer than this clawmesh knows (${migrations.length}); upgrade clawmesh`)
  }
  for (let version = current + 1; version <= migrations.length; version++) {
    await db.transaction(async (tx) => {
      await tx.exec(migrations[version - 1])
      await tx.run(
        'INSERT INTO schema_migrations (namespace, version, applied_at) VALUES (?, ?, ?) ON CONFLICT(namespace) DO UPDATE SET version = excluded.version, applied_at = excluded.applied_at',
        [namespace, version, Date.now()]
      )
    })
  }
  return migrations.length
}
