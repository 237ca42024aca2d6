import { html, esc, pill } from './ui.js'
import mesh from './views/mesh.js'
import models from './views/models.js'
import negotiations from './views/negotiations.js'
import agent from './views/agent.js'
import money from './views/money.js'
import governance from './views/governance.js'

const VIEWS = { mesh, models, negotiations, agent, money, governance }
const $ = (id) => document.getElementById(id)

// The owner's token arrives once in the URL fragment (never sent to the server, never in a cookie),
// then lives in this tab's sessionStorage and is sent only as an Authorization header by controls.
const hash = location.hash
const fragment = new URLSearchParams(hash.includes('?') ? hash.slice(hash.indexOf('?') + 1) : hash.replace(/^#/, ''))
if (fragment.get('token')) {
  sessionStorage.setItem('clawmesh-token', fragment.get('token'))
  history.replaceState(null, '', location.pathname + '#/' + (hash.match(/^#\/([a-z]+)/)?.[1] ?? 'agent'))
}

export const ctx = {
  token: () => sessionStorage.getItem('clawmesh-token') ?? '',
  setToken: (t) => { if (t) sessionStorage.setItem('clawmesh-token', t); else sessionStorage.removeItem('clawmesh-token') },
  async get (path) {
    const res = await fetch(path, { headers: { accept: 'application/json' } })
    if (!res.ok) throw new Error(`${path}: ${res.status} ${(await res.json().catch(() => ({}))).error ?? res.statusText}`)
    return await res.json()
  },
  async control (action, body = {}) {
    const res = await fetch(`/api/control/${action}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ctx.token()}` },
      body: JSON.stringify(body)
    })
    const out = await res.json().catch(() => ({}))
    if (!res.ok) throw new Error(out.error ?? `${res.status} ${res.statusText}`)
    return out
  },
  refresh: () => render()
}

let current = null
let rendering = false
let again = false

function route () {
  const name = location.hash.match(/^#\/([a-z]+)/)?.[1]
  return VIEWS[name] ? name : 'mesh'
}

async function renderMe () {
  try {
    const m = await ctx.get('/api/mesh')
    $('me').innerHTML = html`<div class="me-name">${m.self.name} ${pill(m.self.state)}</div>
      <div class="me-id">${m.self.peerId.slice(0, 8)}…${m.self.peerId.slice(-6)}</div>
      <div class="muted">${m.self.networkId}${m.self.privateMesh ? ' · private' : ''}</div>`.text
  } catch { /* the view shows errors; the badge just waits */ }
}

/** Renders the current view; calls during a render coalesce into one more render afterwards. */
async function render () {
  if (rendering) { again = true; return }
  rendering = true
  try {
    const name = route()
    const view = VIEWS[name]
    if (current !== name) {
      current = name
      $('title').textContent = view.title
      $('tools').innerHTML = view.tools ? view.tools(ctx).text : ''
      view.bindTools?.($('tools'), ctx)
      for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.view === name)
      $('view').innerHTML = ''
    }
    try {
      const data = await view.load(ctx)
      if (current !== name) return
      $('view').innerHTML = view.render(data, ctx).text
      view.after?.($('view'), data, ctx)
    } catch (err) {
      $('view').innerHTML = html`<div class="card notice bad">Could not load ${view.title}: ${err.message}</div>`.text
    }
  } finally {
    rendering = false
    if (again) { again = false; void render() }
  }
}

/** Is the owner typing in the view (a field, or a form they are about to submit)? */
function typing () {
  const focus = document.activeElement
  return focus !== null && $('view').contains(focus) && (focus.matches('input, textarea, select') || focus.closest('form') !== null)
}

let deferred = false
/**
 * Never re-render under the owner's fingers: a half-typed token, policy or search would be wiped, and a button
 * replaced between press and release never fires. A render that comes while they type waits until the focus leaves
 * the field and its form (a submit renders at once through ctx.refresh).
 */
function renderWhenFree () {
  if (!typing()) { void render(); return }
  if (deferred) return
  deferred = true
  const check = () => setTimeout(() => {
    if (typing()) return
    $('view').removeEventListener('focusout', check)
    deferred = false
    void render()
  }, 0)
  $('view').addEventListener('focusout', check)
}

function connect () {
  const events = new EventSource('/api/events')
  events.addEventListener('open', () => { $('live').classList.add('on'); $('live-text').textContent = 'live' })
  events.addEventListener('error', () => { $('live').classList.remove('on'); $('live-text').textContent = 'reconnecting…' })
  events.addEventListener('change', (e) => {
    const { topics } = JSON.parse(e.data)
    if (topics.includes('mesh') || topics.includes('agent')) void renderMe()
    if (!topics.some((t) => VIEWS[current]?.topics.includes(t))) return
    renderWhenFree()
  })
}

window.addEventListener('hashchange', () => { void render() })
void renderMe()
void render()
connect()
// Relative times ("12s ago") age even when nothing changes.
setInterval(() => { if (!document.hidden && VIEWS[current]?.ticks) renderWhenFree() }, 10_000)
export { esc }
