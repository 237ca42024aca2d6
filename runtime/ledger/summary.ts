import type { Queryable } from '../store/sqlite.ts'
import { agentAccount } from './ledger.ts'

/**
 * What one agent holds and earned, and what its paid API sold, from its own database: the ledger,
 * receipts and gateway usage. `clawmesh status --json`, the board and /metrics all read this, so the
 * three never disagree. Every figure survives restarts (unlike the node's in-memory ServingMeter).
 */
export interface MoneySummary {
  /** The agent's ledger account, agent:<peerId>: where workers are paid. */
  account: string
  /** Credits it holds now (credited minus debited). */
  balance: number
  /** Credits ever paid to it for settled receipts, as a worker. */
  earned: number
  /** Credits of receipts it signed as a worker that have not settled yet (still in the challenge window). */
  pendingEarnings: number
  /** Settled receipts that paid it, and receipts it signed that wait for settlement. */
  receipts: { settled: number, pending: number }
  /** Tokens it served per model sha256: as a worker (receipts it signed) plus as a head (its paid API). */
  tokensServed: Record<string, number>
  /** Its paid API, when it has API keys: what users asked for and paid. */
  gateway: GatewaySummary | null
}

export interface GatewaySummary {
  keys: number
  requests: number
  promptTokens: number
  completionTokens: number
  /** Requests whose receipts have not settled yet. */
  pendingRequests: number
  /** Credits taken from users' keys so far (worker payouts and network fees). */
  charged: number
  /** Credits users still hold on their keys. */
  userBalances: number
}

export async function moneySummary (db: Queryable, self: string): Promise<MoneySummary> {
  const account = agentAccount(self)
  const balance = (await db.get<{ b: number }>('SELECT balance AS b FROM ledger_balances WHERE account = ?', [account]))?.b ?? 0
  const earned = (await db.get<{ n: number }>('SELECT COALESCE(SUM(amount), 0) AS n FROM ledger WHERE credit = ? AND receipt IS NOT NULL', [account]))?.n ?? 0
  const mine = await db.get<{ settled: number, pending: number, owed: number }>(
    `SELECT COALESCE(SUM(status = 'settled'), 0) AS settled, COALESCE(SUM(status NOT IN ('settled', 'void')), 0) AS pending,
            COALESCE(SUM(CASE WHEN status NOT IN ('settled', 'void') THEN amount ELSE 0 END), 0) AS owed
       FROM receipts WHERE worker = ?`, [self])
  const tokensServed: Record<string, number> = {}
  const add = (model: string, n: number): void => { if (n > 0) tokensServed[model] = (tokensServed[model] ?? 0) + n }
  // Every stored receipt document carries { receipt: { modelHash, … } }, whoever signed it so far.
  for (const r of await db.all<{ model: string | null, n: number }>(
    "SELECT json_extract(document, '$.receipt.modelHash') AS model, SUM(tokens) AS n FROM receipts WHERE worker = ? AND status <> 'void' GROUP BY model", [self])) {
    if (r.model !== null) add(r.model, r.n)
  }
  for (const r of await db.all<{ model: string, n: number }>('SELECT model_sha256 AS model, SUM(prompt_tokens + completion_tokens) AS n FROM usage GROUP BY model_sha256')) add(r.model, r.n)
  return {
    account,
    balance,
    earned,
    pendingEarnings: mine?.owed ?? 0,
    receipts: { settled: mine?.settled ?? 0, pending: mine?.pending ?? 0 },
    tokensServed,
    gateway: await gatewaySummary(db)
  }
}

async function gatewaySummary (db: Queryable): Promise<GatewaySummary | null> {
  const keys = (await db.get<{ n: number }>('SELECT COUNT(*) AS n FROM api_keys'))?.n ?? 0
  if (keys === 0) return null
  const u = await db.get<{ requests: number, prompt: number, completion: number, pending: number }>(
    `SELECT COUNT(*) AS requests, COALESCE(SUM(prompt_tokens), 0) AS prompt, COALESCE(SUM(completion_tokens), 0) AS completion,
            COALESCE(SUM(status = 'pending'), 0) AS pending FROM usage`)
  const charged = (await db.get<{ n: number }>("SELECT COALESCE(SUM(amount), 0) AS n FROM ledger WHERE debit LIKE 'user:%'"))?.n ?? 0
  const held = (await db.get<{ n: number }>("SELECT COALESCE(SUM(balance), 0) AS n FROM ledger_balances WHERE account LIKE 'user:%'"))?.n ?? 0
  return { keys, requests: u?.requests ?? 0, promptTokens: u?.prompt ?? 0, completionTokens: u?.completion ?? 0, pendingRequests: u?.pending ?? 0, charged, userBalances: held }
}

/** Per API key: the board's "gateway usage" table. */
export interface KeyUsageRow {
  key: string
  label: string
  state: 'active' | 'revoked'
  requests: number
  promptTokens: number
  completionTokens: number
  pending: number
  charged: number
  balance: number
  lastUsed: number | null
}

export async function usagePerKey (db: Queryable, limit = 100): Promise<KeyUsageRow[]> {
  const rows = await db.all<{ id: string, label: string, revoked: number, requests: number, prompt: number, completion: number, pending: number, charged: number, balance: number, last_used: number | null }>(
    `SELECT k.id, k.label, k.revoked, COUNT(u.id) AS requests, COALESCE(SUM(u.prompt_tokens), 0) AS prompt,
            COALESCE(SUM(u.completion_tokens), 0) AS completion, COALESCE(SUM(u.status = 'pending'), 0) AS pending, MAX(u.created_at) AS last_used,
            (SELECT COALESCE(SUM(amount), 0) FROM ledger WHERE debit = 'user:' || k.id) AS charged,
            COALESCE((SELECT balance FROM ledger_balances WHERE account = 'user:' || k.id), 0) AS balance
       FROM api_keys k LEFT JOIN usage u ON u.key_id = k.id
      GROUP BY k.id ORDER BY last_used IS NULL, last_used DESC, k.created_at DESC LIMIT ?`, [limit])
  return rows.map((r) => ({
    key: r.id,
    label: r.label,
    state: r.revoked === 1 ? 'revoked' : 'active',
    requests: r.requests,
    promptTokens: r.prompt,
    completionTokens: r.completion,
    pending: r.pending,
    charged: r.charged,
    balance: r.balance,
    lastUsed: r.last_used
  }))
}
