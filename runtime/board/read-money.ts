import type { MeshNode } from '../node/node.ts'
import { moneySummary, usagePerKey, type MoneySummary } from '../ledger/summary.ts'
import type { TableDump } from './tables.ts'
import { nameOf, peerNames } from './names.ts'

export interface MoneyView {
  /** Accounts whose name contains this node's peer id: what the owner holds. */
  ours: string[]
  balances: Array<{ account: string, label: string, balance: number, ours: boolean }>
  /** Net of our accounts after each ledger entry that touched them, oldest first. */
  earnings: Array<{ ts: number, balance: number }>
  receipts: Array<{ seq: number, ts: number, memo: string, amount: number, direction: 'in' | 'out' | 'other', counterparty: string, receipt: unknown }>
  entries: number
  /** Balance, all-time earnings, pending earnings and the paid API's totals (as clawmesh status --json shows them). */
  summary: MoneySummary
  /** The paid API's usage per key (requests, tokens, credits charged, balance left); null without API keys. */
  gateway: TableDump | null
}

const LEDGER_LIMIT = 5000

function parseReceipt (text: string | null): unknown {
  if (text === null) return null
  try { return JSON.parse(text) } catch { return text }
}

/**
 * Money as the ledger records it. The runtime reads each row as `amount` leaving the debit account and
 * arriving in the credit account: an account's balance is what was credited to it minus what was
 * debited from it. Accounts are ours when their name contains our peer id (e.g. "peer:<id>").
 */
export async function readMoney (node: MeshNode): Promise<MoneyView> {
  const self = node.peerId.toString()
  const names = await peerNames(node)
  const rows = await node.store.db.all<{ seq: number, ts: number, debit: string, credit: string, amount: number, memo: string, receipt: string | null }>(
    'SELECT seq, ts, debit, credit, amount, memo, receipt FROM (SELECT * FROM ledger ORDER BY seq DESC LIMIT ?) ORDER BY seq', [LEDGER_LIMIT])
  const balances = new Map<string, number>()
  const isOurs = (account: string): boolean => account.includes(self)
  const earnings: MoneyView['earnings'] = []
  let net = 0
  const receipts: MoneyView['receipts'] = []
  for (const r of rows) {
    balances.set(r.debit, (balances.get(r.debit) ?? 0) - r.amount)
    balances.set(r.credit, (balances.get(r.credit) ?? 0) + r.amount)
    const delta = (isOurs(r.credit) ? r.amount : 0) - (isOurs(r.debit) ? r.amount : 0)
    if (isOurs(r.credit) || isOurs(r.debit)) {
      net += delta
      earnings.push({ ts: r.ts, balance: net })
    }
    if (r.receipt !== null) {
      const direction = delta > 0 ? 'in' : delta < 0 ? 'out' : 'other'
      const other = direction === 'in' ? r.debit : r.credit
      receipts.push({ seq: r.seq, ts: r.ts, memo: r.memo, amount: r.amount, direction, counterparty: labelOf(other, names), receipt: parseReceipt(r.receipt) })
    }
  }
  const ours = [...balances.keys()].filter(isOurs)
  return {
    ours,
    balances: [...balances.entries()]
      .map(([account, balance]) => ({ account, label: labelOf(account, names), balance, ours: isOurs(account) }))
      .sort((a, b) => Number(b.ours) - Number(a.ours) || b.balance - a.balance),
    earnings,
    receipts: receipts.reverse().slice(0, 100),
    entries: (await node.store.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM ledger'))?.n ?? 0,
    summary: await moneySummary(node.store.db, self),
    gateway: await gatewayUsage(node)
  }
}

const KEY_COLUMNS = ['key', 'label', 'state', 'requests', 'prompt tokens', 'completion tokens', 'unsettled', 'credits charged', 'balance', 'last used']

async function gatewayUsage (node: MeshNode): Promise<TableDump | null> {
  const rows = await usagePerKey(node.store.db)
  if (rows.length === 0) return null
  const total = (await node.store.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM api_keys'))?.n ?? rows.length
  return {
    name: 'gateway usage per key',
    columns: KEY_COLUMNS,
    rows: rows.map((r) => [r.key, r.label, r.state, r.requests, r.promptTokens, r.completionTokens, r.pending, r.charged, r.balance, r.lastUsed === null ? 'never' : new Date(r.lastUsed).toISOString()]),
    total
  }
}

/** "peer:12D3…xyz" reads better as "peer:alice". */
function labelOf (account: string, names: Map<string, string>): string {
  return account.replace(/12D3Koo[1-9A-HJ-NP-Za-km-z]{40,60}/g, (id) => nameOf(names, id))
}
