import type { Store } from '../runtime/store/store.ts'
import type { ModelRef } from '../protocols/index.ts'
import type { ActionRecord } from '../skills/market/tools.ts'

export interface StoredAction extends ActionRecord {
  seq: number
  ts: number
}

/** The agent's own records in its database: lifecycle snapshots and the log of its tool calls. */
export class AgentRecords {
  constructor (private readonly store: Store) {}

  async saveSnapshot (state: string, snapshot: unknown, now = Date.now()): Promise<void> {
    await this.store.db.run(
      `INSERT INTO agent_lifecycle (id, state, snapshot, updated_at) VALUES (1, ?, ?, ?)
       ON CONFLICT(id) DO UPDATE SET state = excluded.state, snapshot = excluded.snapshot, updated_at = excluded.updated_at`,
      [state, JSON.stringify(snapshot), now]
    )
  }

  async loadSnapshot (): Promise<{ state: string, snapshot: unknown } | undefined> {
    const r = await this.store.db.get<{ state: string, snapshot: string }>('SELECT state, snapshot FROM agent_lifecycle WHERE id = 1')
    return r === undefined ? undefined : { state: r.state, snapshot: JSON.parse(r.snapshot) as unknown }
  }

  async logAction (a: ActionRecord, now = Date.now()): Promise<void> {
    await this.store.db.run('INSERT INTO agent_actions (ts, thread, tool, args, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)',
      [now, a.thread, a.tool, JSON.stringify(a.args), a.outcome, a.detail.slice(0, 2000)])
  }

  async actions (q: { thread?: string, outcome?: ActionRecord['outcome'] } = {}): Promise<StoredAction[]> {
    const where: string[] = []
    const params: unknown[] = []
    if (q.thread !== undefined) { where.push('thread = ?'); params.push(q.thread) }
    if (q.outcome !== undefined) { where.push('outcome = ?'); params.push(q.outcome) }
    const rows = await this.store.db.all<Record<string, unknown>>(`SELECT * FROM agent_actions ${where.length > 0 ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq`, params)
    return rows.map((r) => ({ seq: r.seq as number, ts: r.ts as number, thread: r.thread as string, tool: r.tool as string, args: JSON.parse(r.args as string) as Record<string, unknown>, outcome: r.outcome as ActionRecord['outcome'], detail: r.detail as string }))
  }

  async saveGoal (model: ModelRef & { path?: string }, now = Date.now()): Promise<void> {
    await this.store.db.run('INSERT INTO agent_goals (model, ref, created_at) VALUES (?, ?, ?) ON CONFLICT(model) DO UPDATE SET ref = excluded.ref',
      [model.sha256, JSON.stringify(model), now])
  }

  async dropGoal (sha256: string): Promise<void> {
    await this.store.db.run('DELETE FROM agent_goals WHERE model = ?', [sha256])
  }

  async goals (): Promise<Array<ModelRef & { path?: string }>> {
    const rows = await this.store.db.all<{ ref: string }>('SELECT ref FROM agent_goals ORDER BY created_at')
    return rows.map((r) => JSON.parse(r.ref) as ModelRef & { path?: string })
  }
}
