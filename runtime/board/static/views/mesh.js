import { html, pill, bytes, num, ago, duration, empty, avatar } from '../ui.js'
import { networkSvg } from '../svg.js'

function hardware (hw) {
  if (!hw) return html`<span class="muted">unknown</span>`
  const gpu = hw.gpus.length > 0 ? hw.gpus.map((g) => `${g.name} (${bytes(g.vramFree)} free)`).join(', ') : 'CPU only'
  const used = hw.memory.total > 0 ? 1 - hw.memory.free / hw.memory.total : 0
  return html`<div>${hw.cpu.cores} cores · ${gpu}</div>
    <div class="muted" title="${hw.cpu.model}">${bytes(hw.memory.free)} free of ${bytes(hw.memory.total)}</div>
    <div class="bar" title="memory in use"><i style="width:${Math.round(used * 100)}%"></i></div>`
}

export default {
  title: 'Mesh',
  topics: ['mesh'],
  ticks: true,
  load: (ctx) => ctx.get('/api/mesh'),
  render (m) {
    const live = m.peers.filter((p) => p.live)
    const direct = m.peers.filter((p) => p.connected)
    const lat = direct.map((p) => p.latencyMs).filter((v) => v != null)
    const rejected = Object.values(m.gossip.rejected).reduce((a, b) => a + b, 0)
    return html`
      <div class="grid">
        <div class="card stat"><b>${live.length}</b><span>peers present · ${m.peers.length} known</span></div>
        <div class="card stat"><b>${direct.length}</b><span>direct links${lat.length ? ` · median ping ${num(lat.sort((a, b) => a - b)[Math.floor(lat.length / 2)], 1)} ms` : ''}</span></div>
        ${m.gossip.perMinute === null
          ? html`<div class="card stat"><b>…</b><span>gossip rates after a few seconds</span></div>`
          : html`<div class="card stat"><b>${num(m.gossip.perMinute.accepted, 0)}<small class="muted">/min</small></b><span>gossip in · ${num(m.gossip.perMinute.published, 0)}/min out</span></div>`}
        <div class="card stat"><b>${rejected}</b><span>messages rejected · ${m.messagesStored} stored</span></div>
      </div>
      <div class="cols">
        <div class="card"><h2>Network</h2>${m.peers.length === 0 ? empty('No peers yet: waiting for discovery.') : networkSvg(m)}
          <div class="muted" style="font-size:12px">solid: direct connection (ping) · dashed: heard through gossip relays</div></div>
        <div class="card"><h2>This node</h2>
          <div class="form">
            <span class="muted">name</span><span>${m.self.name} ${pill(m.self.state)}</span>
            <span class="muted">peer id</span><span class="mono wrap">${m.self.peerId}</span>
            <span class="muted">network</span><span>${m.self.networkId}${m.self.privateMesh ? ' (private mesh)' : ''}</span>
            <span class="muted">price floor</span><span>${num(m.self.priceFloor)} credits / M layer-tokens</span>
            <span class="muted">hardware</span><span>${hardware(m.self.hardware)}</span>
            <span class="muted">listening</span><span class="mono wrap">${m.self.addrs.slice(0, 3).map((a) => html`<div>${a.replace(/\/p2p\/.*$/, '')}</div>`)}</span>
          </div></div>
      </div>
      <div class="card"><h2>Peers</h2>
        ${m.peers.length === 0 ? empty('No peers known yet.') : html`<div class="table-wrap"><table id="peers">
          <thead><tr><th>peer</th><th>state</th><th>link</th><th>latency</th><th>hardware</th><th>models</th><th>floor</th><th>up</th><th>seen</th></tr></thead>
          <tbody>${m.peers.map((p) => html`<tr data-peer="${p.peerId}">
            <td><div style="display:flex;gap:8px;align-items:center">${avatar(p.name, p.peerId)}<div><b>${p.name}</b><div class="mono muted">…${p.peerId.slice(-8)}</div></div></div></td>
            <td>${pill(p.state)}</td>
            <td>${p.connected ? 'direct' : p.live ? 'gossip' : '–'}</td>
            <td class="mono">${p.latencyMs != null ? `${num(p.latencyMs, 1)} ms` : '–'}</td>
            <td>${hardware(p.hardware)}</td>
            <td>${p.models.length ? p.models.map((x) => html`<div>${x.name} <span class="muted">${x.layers}L · ${bytes(x.sizeBytes)}</span></div>`) : html`<span class="muted">none</span>`}</td>
            <td>${p.priceFloor ?? '–'}</td>
            <td>${duration(p.uptimeS)}</td>
            <td class="muted">${ago(p.lastSeen)}</td>
          </tr>`)}</tbody></table></div>`}
      </div>`
  }
}
