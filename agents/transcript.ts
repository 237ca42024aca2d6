import type { Envelope, Terms } from '../protocols/index.ts'
import type { Store } from '../runtime/store/store.ts'
import { NegotiationBook } from '../skills/market/book.ts'
import { peerName, peerText } from '../protocols/peer-text.ts'

/** The agent records its name in the database's meta table so that offline readers can say "ada", not "me". */
export const AGENT_NAME_META = 'agent_name'

export interface TranscriptLine {
  ts: number
  kind: 'cfp' | 'propose' | 'counter' | 'accept' | 'reject' | 'contract'
  from: string
  fromName: string
  to?: string
  toName?: string
  /** What the agent said (non-binding). */
  text: string
  /** What binds, when anything does. */
  terms?: Partial<Terms> & { want?: { start: number, end: number }, budget?: number, deadline?: number, reason?: string, contractId?: string }
}

export interface Transcript {
  cfpId: string
  model: { sha256: string, name: string, nLayer: number }
  head: string
  headName: string
  role: 'head' | 'worker'
  status: string
  lines: TranscriptLine[]
  contracts: Array<{ id: string, worker: string, workerName: string, start: number, end: number, price: number, status: string }>
}

/**
 * Negotiations as dialogues, from what the agent's database holds: the signed messages of each call
 * (every one heard on the model's topic, not only those addressed to this agent) and its contracts.
 * The CLI prints them; the board will read the same structure.
 */
export async function loadTranscripts (store: Store, opts: { thread?: string } = {}): Promise<Transcript[]> {
  const book = new NegotiationBook(store)
  const names = new Map<string, string>()
  // Names and texts here are peer-chosen and printed to terminals: made inert once, at the source.
  for (const p of await store.listPeers()) if (p.name !== null) names.set(p.peerId, peerName(p.name, `…${p.peerId.slice(-8)}`))
  const self = await store.getMeta('peer_id')
  if (self !== undefined) names.set(self, peerName(await store.getMeta(AGENT_NAME_META) ?? 'me'))
  const nameOf = (id: string): string => names.get(id) ?? `…${id.slice(-8)}`
  const wanted = opts.thread?.replace(/^cfp:/, '')
  const negotiations = (await book.negotiations()).filter((n) => wanted === undefined || n.cfpId.startsWith(wanted))
  if (wanted !== undefined && negotiations.length === 0) throw new Error(`no negotiation ${opts.thread} in this agent's database`)
  const rows = await store.db.all<{ envelope: string }>("SELECT envelope FROM messages WHERE kind LIKE 'market-%' ORDER BY ts, received_at")
  const byCfp = new Map<string, Array<Envelope<Record<string, unknown>>>>()
  for (const r of rows) {
    const env = JSON.parse(r.envelope) as Envelope<Record<string, unknown>>
    const id = env.body.cfpId as string
    byCfp.set(id, [...(byCfp.get(id) ?? []), env])
  }
  const out: Transcript[] = []
  for (const n of negotiations) {
    const lines = (byCfp.get(n.cfpId) ?? []).map((env) => lineOf(env, nameOf))
    const contracts = (await book.contracts({ cfpId: n.cfpId })).map((c) => ({
      id: c.id, worker: c.signed.doc.worker, workerName: nameOf(c.signed.doc.worker), start: c.signed.doc.start, end: c.signed.doc.end, price: c.signed.doc.price, status: c.status
    }))
    out.push({
      cfpId: n.cfpId,
      model: { sha256: n.model, name: peerName(n.cfp.modelRef.name), nLayer: n.cfp.modelRef.nLayer },
      head: n.head,
      headName: nameOf(n.head),
      role: n.role,
      status: n.status,
      lines,
      contracts
    })
  }
  return out
}

function lineOf (env: Envelope<Record<string, unknown>>, nameOf: (id: string) => string): TranscriptLine {
  const b = env.body
  const kind = env.kind.replace(/^market-/, '') as TranscriptLine['kind']
  const to = b.to as string | undefined
  const line: TranscriptLine = { ts: env.ts, kind, from: env.from, fromName: nameOf(env.from), to, toName: to === undefined ? undefined : nameOf(to), text: peerText(b.text, 1500) }
  if (kind === 'cfp') line.terms = { want: b.want as { start: number, end: number }, budget: b.budget as number, deadline: b.deadline as number }
  else if (kind === 'reject') line.terms = { reason: peerText(b.reason, 300) }
  else if (kind === 'contract') {
    const doc = (b.contract as { doc: { start: number, end: number, price: number } }).doc
    line.terms = { start: doc.start, end: doc.end, price: doc.price }
  } else if (b.terms !== undefined) line.terms = b.terms as Terms
  return line
}

function termsText (l: TranscriptLine): string {
  const t = l.terms
  if (t === undefined) return ''
  if (l.kind === 'cfp') return `wants layers [${t.want?.start}, ${t.want?.end}), budget ${t.budget}`
  if (l.kind === 'reject') return `reason: ${t.reason}`
  return `layers [${t.start}, ${t.end}) @ ${t.price}${l.kind === 'contract' ? ', signed by both' : ''}`
}

/** A negotiation as a readable dialogue: who said what, the binding terms beside it, the outcome. */
export function formatTranscript (t: Transcript): string {
  const t0 = t.lines[0]?.ts ?? 0
  const out = [`Negotiation ${peerText(t.cfpId, 64)}: ${peerName(t.headName)} assembles ${peerName(t.model.name)} (${t.model.nLayer} layers, ${t.model.sha256.slice(0, 12)}…); we were the ${t.role}; ${t.status}`]
  for (const l of t.lines) {
    const when = `+${((l.ts - t0) / 1000).toFixed(2)}s`.padStart(8)
    const who = `${l.fromName} → ${l.toName ?? 'all'}`
    // Peer text goes to a terminal: loadTranscripts made it inert (peerText); a Transcript built
    // elsewhere is cleaned again here.
    out.push(`${when}  ${peerName(who).padEnd(18)} ${l.kind.toUpperCase().padEnd(8)} "${peerText(l.text, 1500)}"`)
    const terms = termsText(l)
    if (terms !== '') out.push(`${' '.repeat(38)}terms: ${terms}`)
  }
  if (t.contracts.length === 0) out.push('Outcome: no contract.')
  else {
    out.push(`Outcome: ${t.contracts.length} contract${t.contracts.length === 1 ? '' : 's'}`)
    for (const c of t.contracts) out.push(`  ${c.id.slice(0, 12)}  ${peerName(c.workerName).padEnd(10)} layers [${c.start}, ${c.end}) @ ${c.price}  (${c.status})`)
  }
  return out.join('\n')
}
