import { html, empty, dumpTable } from '../ui.js'

export default {
  title: 'Governance',
  topics: ['governance'],
  load: (ctx) => ctx.get('/api/governance'),
  render (g) {
    const none = !g.prs && !g.votes && g.tables.length === 0
    if (none) return empty('No governance yet: no agent PRs and no votes on this node.')
    return html`
      <div class="card" data-panel="prs"><h2>Agent pull requests</h2>${g.prs ? dumpTable(g.prs) : empty('No PR view yet (governance exposes board_prs).')}</div>
      <div class="card" data-panel="votes"><h2>Open votes</h2>${g.votes ? dumpTable(g.votes) : empty('No vote view yet (governance exposes board_votes).')}</div>
      ${g.tables.length === 0 ? '' : html`<details class="card" data-panel="raw"><summary>Governance tables as stored (${g.tables.length})</summary>
        ${g.tables.map((t) => html`<h2 class="mono" style="margin-top:14px">${t.name}</h2>${dumpTable(t)}`)}</details>`}`
  }
}
