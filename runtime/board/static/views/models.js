import { html, pill, num, empty, peerColor, ago } from '../ui.js'

function shardMap (m) {
  const layers = Math.max(m.layers, 1)
  const pct = (l) => `${(l / layers) * 100}%`
  // One row per worker, so a worker holding two ranges (or a renewed contract) stays on its own line.
  const workers = [...new Map(m.shards.map((s) => [s.worker, s.workerName])).entries()]
  return html`<div class="shardmap" data-model="${m.sha256}">
    ${workers.map(([worker, name]) => html`<div class="shard-row">
      <div><b>${name}</b></div>
      <div class="shard-track">
        ${m.gaps.map(([a, b]) => html`<div class="gap" style="left:${pct(a)};width:${pct(b - a)}" title="layers ${a}–${b - 1} uncovered"></div>`)}
        ${m.shards.filter((s) => s.worker === worker).map((s) => html`<div class="shard ${s.active ? '' : 'inactive'} ${s.active && !s.workerUp ? 'down' : ''}"
          data-worker="${s.workerName}" data-layers="${s.layerStart}-${s.layerEnd}"
          style="left:${pct(s.layerStart)};width:${pct(s.layerEnd - s.layerStart)};background:${peerColor(s.worker)}"
          title="${s.workerName}: layers ${s.layerStart}–${s.layerEnd - 1} at ${s.price} · ${s.status}">layers ${s.layerStart}–${s.layerEnd - 1} · ${num(s.price)}</div>`)}
      </div></div>`)}
    <div class="axis"><span></span><div><span>0</span><span>${Math.round(layers / 2)}</span><span>${layers}</span></div></div>
  </div>`
}

export default {
  title: 'Models',
  topics: ['models'],
  load: (ctx) => ctx.get('/api/models'),
  render (models) {
    if (models.length === 0) return empty('No models yet: none on any peer\'s disk and no contracts.')
    return html`${models.map((m) => html`<div class="card model" data-model="${m.sha256}">
      <div style="display:flex;justify-content:space-between;align-items:flex-start;gap:12px">
        <div><h2 style="margin-bottom:2px">${m.name}</h2>
          <div class="muted mono">${m.sha256.slice(0, 16)}… · ${m.architecture ?? 'unknown architecture'} · ${m.layers} layers</div></div>
        <div style="text-align:right">${pill(m.health)}<div class="muted" style="font-size:12px">${m.healthReason}</div></div>
      </div>
      <div class="grid" style="margin:12px 0">
        <div class="stat"><b>${num(m.tokensPerSec, 1)}</b><span>tokens/s (last minute)</span></div>
        <div class="stat"><b>${num(m.tokensServed, 0)}</b><span>tokens served here</span></div>
        <div class="stat"><b>${m.shards.filter((s) => s.active).length}</b><span>active shards</span></div>
        <div class="stat"><b>${m.holders.length}</b><span>peers hold the file</span></div>
      </div>
      ${m.shards.length === 0 ? empty('No contracts for this model yet.') : html`<h3>Shard map</h3>${shardMap(m)}
      <details><summary>${m.shards.length} contract(s)</summary><div class="table-wrap"><table>
        <thead><tr><th>worker</th><th>layers</th><th>price</th><th>status</th><th>head</th><th>expires</th></tr></thead>
        <tbody>${m.shards.map((s) => html`<tr><td>${s.workerName}</td><td class="mono">[${s.layerStart}, ${s.layerEnd})</td><td>${num(s.price)}</td>
          <td>${pill(s.status, s.active ? 'good' : '')}</td><td>${s.headName}</td><td class="muted">${s.expiresAt > Date.now() ? 'in ' + ago(2 * Date.now() - s.expiresAt).replace(' ago', '') : ago(s.expiresAt)}</td></tr>`)}</tbody>
      </table></div></details>`}
    </div>`)}`
  }
}
