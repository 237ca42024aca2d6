import { esc, html, peerColor, raw } from './ui.js'

/**
 * The network picture: this node in the middle, peers on a ring. A solid line is a direct libp2p
 * connection (with its ping); a dashed one is a peer we only hear through gossip relays.
 */
export function networkSvg (mesh, width = 640, height = mesh.peers.length <= 2 ? 260 : 400) {
  const cx = width / 2; const cy = height / 2
  // An ellipse fills the wide card; starting half a step past the top puts two peers left and right.
  const rx = width / 2 - 90; const ry = height / 2 - 70
  const peers = mesh.peers
  const n = Math.max(peers.length, 1)
  const pos = peers.map((p, i) => {
    const a = -Math.PI / 2 + Math.PI / n + (2 * Math.PI * i) / n
    return { p, x: cx + rx * Math.cos(a), y: cy + ry * Math.sin(a) }
  })
  const edges = pos.map(({ p, x, y }) => {
    const mx = (cx + x) / 2; const my = (cy + y) / 2
    const label = p.connected && p.latencyMs != null ? `${p.latencyMs < 10 ? p.latencyMs.toFixed(1) : Math.round(p.latencyMs)} ms` : ''
    return html`<line class="net-edge ${p.connected ? '' : 'gossip'}" x1="${cx}" y1="${cy}" x2="${x}" y2="${y}"/>
      ${label ? html`<text class="net-sub" x="${mx}" y="${my - 8}" text-anchor="middle">${label}</text>` : ''}`
  })
  const nodes = pos.map(({ p, x, y }) => {
    const cls = p.state === 'gone' ? 'gone' : ['paused', 'draining', 'stopped'].includes(p.state) ? 'down' : ''
    return html`<g class="net-node peer ${cls}" data-peer="${p.peerId}">
      <circle cx="${x}" cy="${y}" r="24" style="stroke:${cls ? '' : peerColor(p.peerId)}"/>
      <text x="${x}" y="${y + 5}" text-anchor="middle" class="net-label">${p.name.slice(0, 1).toUpperCase()}</text>
      <text x="${x}" y="${y + 42}" text-anchor="middle" class="net-label">${p.name}</text>
      <text x="${x}" y="${y + 57}" text-anchor="middle" class="net-sub">${p.state}</text>
    </g>`
  })
  return html`<svg viewBox="0 0 ${width} ${height}" width="100%" role="img" aria-label="network of ${peers.length + 1} nodes">
    ${edges}
    <g class="net-node self"><circle cx="${cx}" cy="${cy}" r="32"/>
      <text x="${cx}" y="${cy + 5}" text-anchor="middle" class="net-label">${mesh.self.name.slice(0, 1).toUpperCase()}</text>
      <text x="${cx}" y="${cy + 52}" text-anchor="middle" class="net-label">${mesh.self.name} (this node)</text></g>
    ${nodes}
  </svg>`
}

/** A step chart of a running balance over time, with a light grid and min/max labels. */
export function lineChart (points, { width = 720, height = 220, unit = 'credits' } = {}) {
  if (points.length === 0) return raw('')
  const pad = { l: 56, r: 16, t: 14, b: 26 }
  const xs = points.map((p) => p.ts); const ys = points.map((p) => p.balance)
  const x0 = Math.min(...xs); const x1 = Math.max(...xs, x0 + 1)
  const y0 = Math.min(0, ...ys); const y1 = Math.max(...ys, y0 + 1)
  const X = (t) => pad.l + ((t - x0) / (x1 - x0)) * (width - pad.l - pad.r)
  const Y = (v) => height - pad.b - ((v - y0) / (y1 - y0)) * (height - pad.t - pad.b)
  let d = `M ${X(points[0].ts)} ${Y(0)} L ${X(points[0].ts)} ${Y(points[0].balance)}`
  for (let i = 1; i < points.length; i++) d += ` L ${X(points[i].ts)} ${Y(points[i - 1].balance)} L ${X(points[i].ts)} ${Y(points[i].balance)}`
  const area = `${d} L ${X(points.at(-1).ts)} ${Y(0)} Z`
  const ticks = [y0, (y0 + y1) / 2, y1]
  const fmtT = (t) => new Date(t).toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false })
  return html`<svg class="chart" viewBox="0 0 ${width} ${height}" preserveAspectRatio="none" role="img" aria-label="earnings over time">
    ${ticks.map((v) => html`<line class="grid-line" x1="${pad.l}" x2="${width - pad.r}" y1="${Y(v)}" y2="${Y(v)}"/>
      <text x="${pad.l - 8}" y="${Y(v) + 4}" text-anchor="end">${Math.round(v).toLocaleString()}</text>`)}
    <path class="area" d="${area}"/><path class="line-path" d="${d}"/>
    <text x="${pad.l}" y="${height - 6}">${fmtT(x0)}</text>
    <text x="${width - pad.r}" y="${height - 6}" text-anchor="end">${fmtT(x1)}</text>
    <text x="${width - pad.r}" y="${pad.t + 2}" text-anchor="end">${esc(unit)}</text>
  </svg>`
}
