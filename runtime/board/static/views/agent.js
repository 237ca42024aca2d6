import { html, pill, empty, clock, ago, num } from '../ui.js'

let notice = null

/** The "why" of an entry: its why/reason when it has one, else its fields in short. */
function detail (entry) {
  const d = entry.detail
  if (d === null || d === undefined || entry.kind === 'lifecycle') return '' // the summary already says it
  if (typeof d !== 'object') return String(d)
  if (typeof d.why === 'string') return d.why
  if (typeof d.reason === 'string') return d.reason
  const flat = (v) => typeof v === 'object' && v !== null ? Object.entries(v).map(([k, x]) => `${k} ${flat(x)}`).join(', ') : String(v)
  return flat(d)
}

export default {
  title: 'Agent',
  topics: ['agent'],
  ticks: true,
  load: (ctx) => ctx.get('/api/agent'),
  render (a, ctx) {
    const hasToken = ctx.token() !== ''
    const hours = a.policy.hours
    return html`
      <div class="grid">
        <div class="card stat"><b>${pill(a.state)}</b><span>since ${ago(a.since)}</span></div>
        <div class="card stat"><b>${a.accepting ? 'yes' : 'no'}</b><span>taking new work</span></div>
        <div class="card stat"><b>${num(a.policy.priceFloor)}</b><span>price floor (credits / M layer-tokens)</span></div>
        <div class="card stat"><b>${Math.round(a.policy.memoryShare * 100)}%</b><span>memory share · ${hours ? `${hours.start}–${hours.end}` : 'any hour'}</span></div>
      </div>
      <div class="cols">
        <div class="card"><h2>What it is doing, and why</h2>
          ${a.decisions.length === 0 ? empty('Nothing recorded yet.') : html`<ul class="timeline" id="activity">${a.decisions.map((d) => html`<li data-kind="${d.kind}">
            <time title="${new Date(d.ts).toISOString()}">${clock(d.ts)}</time>
            <div><span class="kind muted">${d.kind}</span> <b>${d.summary}</b>${detail(d) ? html`<div class="muted">${detail(d)}</div>` : ''}</div></li>`)}</ul>`}
        </div>
        <div style="display:grid;gap:16px;align-content:start">
          <div class="card"><h2>Owner controls</h2>
            ${hasToken
              ? html`<div class="controls">
                  <button id="pause" ${a.state === 'paused' || a.killed ? 'disabled' : ''}>Pause</button>
                  <button id="resume" ${a.state !== 'paused' || a.killed ? 'disabled' : ''}>Resume</button>
                  <button id="kill" class="danger" ${a.killed ? 'disabled' : ''}>Kill switch</button>
                  <button id="forget" title="forget the token in this tab">Lock</button></div>
                <h3 style="margin-top:14px">Policy bounds</h3>
                <form id="policy" class="form">
                  <label for="floor">price floor</label><input id="floor" type="number" min="0" step="any" value="${a.policy.priceFloor}">
                  <label for="share">memory share %</label><input id="share" type="number" min="5" max="100" step="1" value="${Math.round(a.policy.memoryShare * 100)}">
                  <label for="start">hours</label><span><input id="start" type="time" value="${hours?.start ?? ''}"> – <input id="end" type="time" value="${hours?.end ?? ''}"> <span class="muted">empty: any hour</span></span>
                  <span></span><span><button type="submit">Save bounds</button></span>
                </form>`
              : html`<p class="muted">Controls need the owner token that <span class="mono">clawmesh board</span> prints. Everything else here is read-only.</p>
                <form id="unlock" class="controls"><input id="token" type="password" placeholder="owner token" autocomplete="off" size="34"><button type="submit">Unlock</button></form>`}
            ${notice ? html`<div class="notice ${notice.tone}" id="notice" style="margin-top:12px">${notice.text}</div>` : ''}
          </div>
          <div class="card"><h2>Lifecycle</h2>
            <ul class="timeline">${a.history.slice().reverse().map((h) => html`<li><time>${clock(h.at)}</time><div>${pill(h.state)} ${h.reason ? html`<span class="muted">${h.reason}</span>` : ''}</div></li>`)}</ul>
          </div>
        </div>
      </div>`
  },
  after (el, a, ctx) {
    const act = async (what, fn) => {
      try { await fn(); notice = { tone: 'good', text: `${what}: done` } } catch (err) { notice = { tone: 'bad', text: `${what} refused: ${err.message}` } }
      ctx.refresh()
    }
    el.querySelector('#unlock')?.addEventListener('submit', (e) => { e.preventDefault(); ctx.setToken(el.querySelector('#token').value.trim()); notice = null; ctx.refresh() })
    el.querySelector('#forget')?.addEventListener('click', () => { ctx.setToken(''); notice = null; ctx.refresh() })
    el.querySelector('#pause')?.addEventListener('click', () => act('Pause', () => ctx.control('pause')))
    el.querySelector('#resume')?.addEventListener('click', () => act('Resume', () => ctx.control('resume')))
    el.querySelector('#kill')?.addEventListener('click', () => {
      if (!window.confirm('Kill switch: finish work in flight, stop serving and leave the mesh until the node restarts?')) return
      void act('Kill switch', () => ctx.control('kill'))
    })
    el.querySelector('#policy')?.addEventListener('submit', (e) => {
      e.preventDefault()
      const start = el.querySelector('#start').value; const end = el.querySelector('#end').value
      void act('Policy', () => ctx.control('policy', {
        priceFloor: Number(el.querySelector('#floor').value),
        memoryShare: Number(el.querySelector('#share').value) / 100,
        hours: start && end ? { start, end } : null
      }))
    })
  }
}
