import type { MeshNode } from '../node/node.ts'
import { nameOf, peerNames } from './names.ts'

export interface TranscriptLine {
  id: string
  kind: string
  from: string
  fromName: string
  ts: number
  outgoing: boolean
  /** What the agent said, in words (body.text); null when the message carries none. */
  text: string | null
  /** What binds: body.terms, else the rest of the body. */
  terms: unknown
}

export interface Thread {
  id: string
  title: string
  status: 'agreed' | 'rejected' | 'open'
  participants: Array<{ peerId: string, name: string }>
  startedAt: number
  updatedAt: number
  lines: TranscriptLine[]
}

/** Kinds that are plumbing, not conversation. */
const NOT_DIALOGUE = new Set(['presence'])
const SCAN_LIMIT = 2000
/** Body fields that name the conversation a message belongs to, in order of preference. */
const THREAD_FIELDS = ['thread', 'threadId', 'cfp', 'cfpId', 'negotiation']

function asRecord (body: unknown): Record<string, unknown> {
  return typeof body === 'object' && body !== null && !Array.isArray(body) ? body as Record<string, unknown> : { value: body }
}

function threadOf (kind: string, body: Record<string, unknown>): string {
  for (const field of THREAD_FIELDS) {
    const v = body[field]
    if (typeof v === 'string' && v.length > 0) return v
  }
  return `kind:${kind}`
}

function termsOf (body: Record<string, unknown>): unknown {
  if ('terms' in body) return body.terms
  const rest: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(body)) if (k !== 'text' && !THREAD_FIELDS.includes(k)) rest[k] = v
  return Object.keys(rest).length > 0 ? rest : null
}

/** A thread is agreed once anyone accepted or signed a contract in it, rejected when the last word was a no. */
function statusOf (lines: TranscriptLine[]): Thread['status'] {
  if (lines.some((l) => /contract|accept/i.test(l.kind))) return 'agreed'
  if (/reject|decline|cancel/i.test(lines.at(-1)?.kind ?? '')) return 'rejected'
  return 'open'
}

/**
 * Negotiations as dialogues: every non-heartbeat envelope in the transcript, grouped by the thread id
 * its body names (body.thread, or a CFP id), else by kind. The runtime knows no market schema: it shows
 * body.text as the words and body.terms (or the rest of the body) as the binding terms beside them.
 */
export async function readNegotiations (node: MeshNode, opts: { q?: string, limit?: number } = {}): Promise<Thread[]> {
  const names = await peerNames(node)
  const placeholders = [...NOT_DIALOGUE].map(() => '?').join(',')
  const rows = await node.store.db.all<{ author: string, id: string, kind: string, ts: number, received_at: number, outgoing: number, envelope: string }>(
    `SELECT author, id, kind, ts, received_at, outgoing, envelope FROM messages WHERE kind NOT IN (${placeholders})
     ORDER BY received_at DESC, rowid DESC LIMIT ?`, [...NOT_DIALOGUE, SCAN_LIMIT])
  const threads = new Map<string, Thread>()
  for (const row of rows.reverse()) {
    let body: Record<string, unknown>
    try {
      body = asRecord((JSON.parse(row.envelope) as { body: unknown }).body)
    } catch {
      continue // the transcript stores verified envelopes only; a broken row is not ours to show
    }
    const id = threadOf(row.kind, body)
    const line: TranscriptLine = {
      id: row.id,
      kind: row.kind,
      from: row.author,
      fromName: nameOf(names, row.author),
      ts: row.ts,
      outgoing: row.outgoing === 1,
      text: typeof body.text === 'string' ? body.text : null,
      terms: termsOf(body)
    }
    let thread = threads.get(id)
    if (thread === undefined) {
      thread = { id, title: '', status: 'open', participants: [], startedAt: row.ts, updatedAt: row.ts, lines: [] }
      threads.set(id, thread)
    }
    thread.lines.push(line)
    thread.updatedAt = Math.max(thread.updatedAt, row.ts)
    if (!thread.participants.some((p) => p.peerId === row.author)) thread.participants.push({ peerId: row.author, name: line.fromName })
  }
  const q = opts.q?.trim().toLowerCase() ?? ''
  const out: Thread[] = []
  for (const thread of threads.values()) {
    // Messages arrive in gossip order; the author's clock orders a dialogue better.
    thread.lines.sort((a, b) => a.ts - b.ts)
    thread.status = statusOf(thread.lines)
    const first = thread.lines[0]
    thread.title = thread.id.startsWith('kind:') ? `${first.kind} messages` : (first.text ?? `${first.kind} ${thread.id}`).slice(0, 240)
    if (q !== '' && !matches(thread, q)) continue
    out.push(thread)
  }
  out.sort((a, b) => b.updatedAt - a.updatedAt)
  return out.slice(0, opts.limit ?? 100)
}

function matches (thread: Thread, q: string): boolean {
  if (thread.id.toLowerCase().includes(q) || thread.title.toLowerCase().includes(q)) return true
  return thread.lines.some((l) =>
    l.kind.includes(q) || l.fromName.toLowerCase().includes(q) || (l.text ?? '').toLowerCase().includes(q) ||
    JSON.stringify(l.terms ?? '').toLowerCase().includes(q))
}
