import type { MeshNode } from '../node/node.ts'
import { nameOf, peerNames } from './names.ts'

export interface Shard {
  contractId: string
  worker: string
  workerName: string
  head: string
  headName: string
  /** Half-open layer range [layerStart, layerEnd), as runtime/engine/split.ts counts layers. */
  layerStart: number
  layerEnd: number
  price: number
  status: string
  expiresAt: number
  /** Counts toward the pipeline: not ended by its status, not expired. */
  active: boolean
  /** The worker's heartbeat is live and it is not paused or stopped. */
  workerUp: boolean
}

export interface ModelView {
  sha256: string
  name: string
  architecture: string | null
  /** Total layers, from a peer that has the file; else the highest contracted layer. */
  layers: number
  shards: Shard[]
  /** Layer ranges no active shard covers. */
  gaps: Array<[number, number]>
  health: 'healthy' | 'degraded' | 'incomplete' | 'idle'
  healthReason: string
  tokensPerSec: number
  tokensServed: number
  holders: Array<{ peerId: string, name: string }>
}

const ENDED = /^(expired|cancel|reject|fail|closed|ended|revoked|void)/i
const DOWN_STATES = new Set(['paused', 'draining', 'stopped', 'gone', 'offline'])

function gapsOf (shards: Shard[], layers: number): Array<[number, number]> {
  const ranges = shards.filter((s) => s.active).map((s) => [s.layerStart, s.layerEnd] as const).sort((a, b) => a[0] - b[0])
  const gaps: Array<[number, number]> = []
  let at = 0
  for (const [start, end] of ranges) {
    if (start > at) gaps.push([at, start])
    at = Math.max(at, end)
  }
  if (at < layers) gaps.push([at, layers])
  return gaps
}

/**
 * The shard map: for each model that appears in a contract, which worker serves which layers, and
 * whether the pipeline is whole (every layer covered by an active contract whose worker is up). Models
 * that peers merely hold on disk are listed too, as idle.
 */
export async function readModels (node: MeshNode, now = Date.now()): Promise<ModelView[]> {
  const names = await peerNames(node)
  const self = node.peerId.toString()
  const liveState = new Map((node.presence?.peers(now) ?? []).map((p) => [p.peerId, p.presence.state]))
  liveState.set(self, node.state)
  const known = new Map<string, { name: string, architecture: string, layers: number, holders: Set<string> }>()
  const own = node.presence?.lastPublished()?.body.models ?? []
  const holdings = [...(node.presence?.peers(now) ?? []).map((p) => ({ peerId: p.peerId, models: p.presence.models })), { peerId: self, models: own }]
  for (const { peerId, models } of holdings) {
    for (const m of models) {
      const entry = known.get(m.sha256) ?? { name: m.name, architecture: m.architecture, layers: m.layers, holders: new Set<string>() }
      entry.holders.add(peerId)
      known.set(m.sha256, entry)
    }
  }
  for (const [sha, ref] of await announcedModels(node)) if (!known.has(sha)) known.set(sha, { ...ref, holders: new Set<string>() })
  const rows = await node.store.db.all<{ id: string, model_sha256: string, head: string, worker: string, layer_start: number, layer_end: number, price: number, expires_at: number, status: string, created_at: number }>(
    'SELECT id, model_sha256, head, worker, layer_start, layer_end, price, expires_at, status, created_at FROM contracts ORDER BY created_at DESC LIMIT 2000')
  const byModel = new Map<string, Shard[]>()
  for (const r of rows) {
    const workerState = liveState.get(r.worker)
    const shard: Shard = {
      contractId: r.id,
      worker: r.worker,
      workerName: nameOf(names, r.worker),
      head: r.head,
      headName: nameOf(names, r.head),
      layerStart: r.layer_start,
      layerEnd: r.layer_end,
      price: r.price,
      status: r.status,
      expiresAt: r.expires_at,
      active: !ENDED.test(r.status) && r.expires_at > now,
      workerUp: workerState !== undefined && !DOWN_STATES.has(workerState)
    }
    const list = byModel.get(r.model_sha256) ?? []
    list.push(shard)
    byModel.set(r.model_sha256, list)
  }
  const rates = node.serving.rates()
  const totals = node.serving.total()
  const out: ModelView[] = []
  for (const sha of new Set([...byModel.keys(), ...known.keys()])) {
    const shards = (byModel.get(sha) ?? []).sort((a, b) => a.layerStart - b.layerStart || Number(b.active) - Number(a.active))
    const info = known.get(sha)
    const layers = info?.layers ?? Math.max(0, ...shards.map((s) => s.layerEnd))
    const gaps = gapsOf(shards, layers)
    const active = shards.filter((s) => s.active)
    const down = active.filter((s) => !s.workerUp)
    let health: ModelView['health']
    let healthReason: string
    const pipeline = node.pipelines.get(sha)
    if (active.length === 0) { health = 'idle'; healthReason = 'no active contracts' } else if (pipeline !== undefined && pipeline.state !== 'running' && pipeline.state !== 'stopped') {
      // Signed contracts are not a running model: while the head rebuilds its pipeline, say so.
      health = 'degraded'; healthReason = `pipeline ${pipeline.state}${pipeline.reason !== undefined ? `: ${pipeline.reason}` : ''}`
    } else if (gaps.length > 0) { health = 'incomplete'; healthReason = `layers ${gaps.map(([a, b]) => `${a}–${b - 1}`).join(', ')} not contracted` } else if (down.length > 0) { health = 'degraded'; healthReason = `${down.map((s) => s.workerName).join(', ')} not serving` } else { health = 'healthy'; healthReason = `${layers} layers on ${new Set(active.map((s) => s.worker)).size} workers` }
    out.push({
      sha256: sha,
      name: info?.name ?? `model ${sha.slice(0, 12)}`,
      architecture: info?.architecture !== undefined && info.architecture !== '' ? info.architecture : null,
      layers,
      shards,
      gaps,
      health,
      healthReason,
      tokensPerSec: rates.get(sha) ?? 0,
      tokensServed: totals.get(sha) ?? 0,
      holders: [...(info?.holders ?? [])].map((peerId) => ({ peerId, name: nameOf(names, peerId) }))
    })
  }
  const rank = { healthy: 0, degraded: 1, incomplete: 2, idle: 3 }
  return out.sort((a, b) => rank[a.health] - rank[b.health] || a.name.localeCompare(b.name))
}

/**
 * Names of models nobody near us holds on disk, from what calls for proposals said about them: a body
 * (or its terms) with modelRef { sha256, name, nLayer }, the market protocol's shape. Newest wins.
 */
async function announcedModels (node: MeshNode): Promise<Map<string, { name: string, architecture: string, layers: number }>> {
  const rows = await node.store.db.all<{ envelope: string }>(
    "SELECT envelope FROM messages WHERE kind LIKE '%cfp%' ORDER BY received_at DESC LIMIT 200")
  const out = new Map<string, { name: string, architecture: string, layers: number }>()
  for (const row of rows) {
    let body: Record<string, unknown>
    try { body = (JSON.parse(row.envelope) as { body: Record<string, unknown> }).body } catch { continue }
    const terms = body?.terms as Record<string, unknown> | undefined
    const ref = (body?.modelRef ?? terms?.modelRef) as { sha256?: unknown, name?: unknown, nLayer?: unknown, architecture?: unknown } | undefined
    if (typeof ref?.sha256 !== 'string' || typeof ref.name !== 'string' || typeof ref.nLayer !== 'number' || out.has(ref.sha256)) continue
    out.set(ref.sha256, { name: ref.name, architecture: typeof ref.architecture === 'string' ? ref.architecture : '', layers: ref.nLayer })
  }
  return out
}
