import { html, empty, num, ago, dumpTable } from '../ui.js'
import { lineChart } from '../svg.js'

export default {
  title: 'Money',
  topics: ['money'],
  load: (ctx) => ctx.get('/api/money'),
  render (m) {
    const mine = m.balances.filter((b) => b.ours).reduce((a, b) => a + b.balance, 0)
    return html`
      <div class="grid">
        <div class="card stat"><b>${num(mine, 0)}</b><span>credits held (${m.ours.length} account${m.ours.length === 1 ? '' : 's'})</span></div>
        <div class="card stat"><b>${num(m.summary.earned, 0)}</b><span>earned as a worker (${m.summary.receipts.settled} settled receipts, ${num(m.summary.pendingEarnings, 0)} pending)</span></div>
        ${m.summary.gateway ? html`<div class="card stat"><b>${num(m.summary.gateway.charged, 0)}</b><span>charged by the paid API (${m.summary.gateway.requests} requests)</span></div>` : ''}
        <div class="card stat"><b>${m.entries}</b><span>ledger entries</span></div>
      </div>
      <div class="card"><h2>Earnings over time</h2>${m.earnings.length === 0 ? empty('No ledger entries for this node yet.') : lineChart(m.earnings)}</div>
      <div class="cols">
        <div class="card"><h2>Receipts</h2>${m.receipts.length === 0 ? empty('No receipts yet.') : html`<div class="table-wrap"><table>
          <thead><tr><th>when</th><th>what</th><th>with</th><th style="text-align:right">credits</th></tr></thead>
          <tbody>${m.receipts.map((r) => html`<tr><td class="muted">${ago(r.ts)}</td><td>${r.memo}</td><td>${r.counterparty}</td>
            <td style="text-align:right;color:var(${r.direction === 'in' ? '--good' : r.direction === 'out' ? '--bad' : '--muted'})">${r.direction === 'out' ? '−' : r.direction === 'in' ? '+' : ''}${num(r.amount, 0)}</td></tr>`)}</tbody></table></div>`}</div>
        <div class="card"><h2>Balances</h2>${m.balances.length === 0 ? empty('The ledger is empty.') : html`<table>
          <thead><tr><th>account</th><th style="text-align:right">balance</th></tr></thead>
          <tbody>${m.balances.map((b) => html`<tr><td class="mono">${b.label}${b.ours ? html` <span class="pill info">ours</span>` : ''}</td><td style="text-align:right">${num(b.balance, 0)}</td></tr>`)}</tbody></table>`}</div>
      </div>
      <div class="card"><h2>Gateway usage per key</h2>${m.gateway ? dumpTable(m.gateway) : empty('No API keys yet: clawmesh keys create --credits N (the paid API needs a "gateway" section in config.json).')}</div>`
  }
}
