import { html, pill, empty, avatar, clock, ago, highlight } from '../ui.js'

const state = { q: '' }

let names = new Map()

/** Terms name peers by id and models by sha256: show the peer's name and a short hash instead. */
function value (v) {
  if (v === null || v === undefined) return '–'
  if (typeof v === 'number' && v > 1e12 && v < 1e14) return new Date(v).toLocaleString([], { hour12: false }) // an epoch-ms instant
  if (typeof v === 'string' && names.has(v)) return `${names.get(v)} (…${v.slice(-6)})`
  if (typeof v === 'string' && /^[0-9a-f]{64}$/.test(v)) return `${v.slice(0, 12)}…`
  if (typeof v === 'object') return Object.entries(v).map(([k, x]) => `${k}: ${typeof x === 'object' && x !== null ? JSON.stringify(x) : value(x)}`).join(', ')
  return String(v)
}

/** Binding terms as a definition list; a nested object shows one level of keys. */
function terms (t, q) {
  if (t === null || t === undefined) return html`<span class="muted">no terms: words only</span>`
  if (typeof t !== 'object' || Array.isArray(t)) return html`<span class="mono">${highlight(value(t), q)}</span>`
  return html`<dl>${Object.entries(t).map(([k, v]) => html`<dt>${k}</dt><dd>${highlight(value(v), q)}</dd>`)}</dl>`
}

export default {
  title: 'Negotiations',
  topics: ['negotiations', 'mesh'],
  tools: () => html`<input class="search" id="q" type="search" placeholder="Search transcripts, terms, peers…" autocomplete="off">`,
  bindTools (el, ctx) {
    const input = el.querySelector('#q')
    input.value = state.q
    let t
    input.addEventListener('input', () => { clearTimeout(t); t = setTimeout(() => { state.q = input.value.trim(); ctx.refresh() }, 200) })
  },
  load: (ctx) => ctx.get('/api/negotiations' + (state.q ? `?q=${encodeURIComponent(state.q)}` : '')),
  render (threads) {
    const q = state.q
    names = new Map(threads.flatMap((t) => t.participants.map((p) => [p.peerId, p.name])))
    if (threads.length === 0) return empty(q ? `Nothing matches “${q}”.` : 'No negotiations yet. Market messages appear here as they cross the mesh.')
    return html`${threads.map((t) => html`<section class="card thread" data-thread="${t.id}">
      <div class="thread-head">
        <div><div class="thread-title">${highlight(t.title, q)}</div>
          <div class="muted" style="font-size:12px">${t.participants.map((p) => p.name).join(' · ')} · ${t.lines.length} messages · ${ago(t.updatedAt)} · <span class="mono">${t.id}</span></div></div>
        ${pill(t.status)}
      </div>
      <div class="line" style="background:var(--panel-2)"><div class="said"><h3 style="margin:0">said</h3></div><div class="terms"><h3 style="margin:0">binding terms</h3></div></div>
      ${t.lines.map((l) => html`<div class="line" data-id="${l.id}" data-kind="${l.kind}">
        <div class="said">${avatar(l.fromName, l.from)}
          <div class="bubble"><div class="who"><b>${l.fromName}</b> · <span class="kind">${l.kind}</span> · ${clock(l.ts)}${l.outgoing ? ' · sent by this node' : ''}</div>
          <div class="text">${l.text === null ? html`<span class="muted">(no words)</span>` : highlight(l.text, q)}</div></div></div>
        <div class="terms">${terms(l.terms, q)}</div>
      </div>`)}
    </section>`)}`
  }
}
