// Small rendering helpers. Every interpolated value is escaped unless it was built by html`` or raw().
const SAFE = Symbol('safe')

export function raw (text) { return { [SAFE]: true, text: String(text) } }

export function esc (value) {
  if (value && value[SAFE]) return value.text
  return String(value ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]))
}

export function html (strings, ...values) {
  let out = strings[0]
  values.forEach((v, i) => {
    out += Array.isArray(v) ? v.map(esc).join('') : esc(v)
    out += strings[i + 1]
  })
  return raw(out)
}

export function ago (ms) {
  if (!ms) return '–'
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000))
  if (s < 60) return `${s}s ago`
  if (s < 3600) return `${Math.round(s / 60)}m ago`
  if (s < 86400) return `${Math.round(s / 3600)}h ago`
  return `${Math.round(s / 86400)}d ago`
}

export function clock (ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false })
}

export function bytes (n) {
  if (n == null) return '–'
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB']
  let v = n; let u = 0
  while (v >= 1024 && u < units.length - 1) { v /= 1024; u++ }
  return `${v.toFixed(v < 10 && u > 0 ? 1 : 0)} ${units[u]}`
}

export function num (n, digits = 2) {
  if (n == null || Number.isNaN(n)) return '–'
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits })
}

export function duration (s) {
  if (s == null) return '–'
  if (s < 60) return `${s}s`
  if (s < 3600) return `${Math.floor(s / 60)}m`
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`
}

const STATE_TONE = { idle: 'good', serving: 'good', working: 'good', healthy: 'good', agreed: 'good', active: 'good', signed: 'good',
  paused: 'warn', draining: 'warn', degraded: 'warn', open: 'info', booting: 'info', negotiating: 'info',
  stopped: 'bad', gone: 'bad', incomplete: 'bad', rejected: 'bad', offline: 'bad', idle_model: '' }

export function pill (text, tone) {
  return html`<span class="pill ${tone ?? STATE_TONE[String(text).toLowerCase()] ?? ''}">${text}</span>`
}

/** A stable colour per peer, so a peer looks the same in the picture, the shard map and the dialogues. */
export function peerColor (peerId) {
  let h = 0
  for (const c of String(peerId)) h = (h * 31 + c.charCodeAt(0)) >>> 0
  return `hsl(${h % 360} 62% 52%)`
}

export function avatar (name, peerId) {
  return html`<span class="avatar" style="background:${peerColor(peerId)}">${String(name || '?').slice(0, 1).toUpperCase()}</span>`
}

export function empty (text) { return html`<div class="empty">${text}</div>` }

/** Highlights q in text (both plain), escaping everything else. */
export function highlight (text, q) {
  const s = String(text ?? '')
  if (!q) return raw(esc(s))
  const lower = s.toLowerCase(); const needle = q.toLowerCase()
  let out = ''; let at = 0
  for (let i = lower.indexOf(needle); i !== -1; i = lower.indexOf(needle, at)) {
    out += esc(s.slice(at, i)) + '<mark>' + esc(s.slice(i, i + needle.length)) + '</mark>'
    at = i + needle.length
  }
  return raw(out + esc(s.slice(at)))
}

/** Any table the server dumped generically (governance, gateway usage). */
export function dumpTable (dump) {
  if (!dump || dump.rows.length === 0) return empty(dump ? `${dump.name}: no rows yet` : 'nothing yet')
  return html`<div class="table-wrap"><table>
    <thead><tr>${dump.columns.map((c) => html`<th>${c}</th>`)}</tr></thead>
    <tbody>${dump.rows.map((r) => html`<tr>${r.map((v) => html`<td class="mono">${v === null ? '–' : typeof v === 'object' ? JSON.stringify(v) : v}</td>`)}</tr>`)}</tbody>
  </table></div>${dump.total > dump.rows.length ? html`<div class="muted">showing ${dump.rows.length} of ${dump.total}</div>` : ''}`
}
