import type { Hardware, ModelOnDisk } from '../../protocols/index.ts'
import type { MeshNode } from '../node/node.ts'
import type { GossipStats } from '../node/gossip.ts'

export interface PeerView {
  peerId: string
  name: string
  /** A heartbeat from it has not expired. */
  live: boolean
  /** We hold a direct connection to it (else we only hear it through gossip). */
  connected: boolean
  addr: string | null
  latencyMs: number | null
  state: string
  software: string | null
  hardware: Hardware | null
  models: ModelOnDisk[]
  priceFloor: number | null
  uptimeS: number | null
  lastSeen: number
}

export interface MeshView {
  self: { peerId: string, name: string, networkId: string, privateMesh: boolean, state: string, addrs: string[], startedAt: number, hardware: Hardware | null, models: ModelOnDisk[], priceFloor: number }
  peers: PeerView[]
  gossip: GossipStats & { perMinute: { accepted: number, published: number, rejected: number } | null }
  messagesStored: number
}

const sum = (r: Record<string, number>): number => Object.values(r).reduce((a, b) => a + b, 0)

/**
 * Round-trip times to directly connected peers, by libp2p ping every few seconds. Gossip timestamps
 * would mix in clock skew; a ping measures the link itself.
 */
export class LatencyProbe {
  private readonly rtt = new Map<string, number>()
  private timer: NodeJS.Timeout | undefined

  constructor (private readonly node: MeshNode, private readonly everyMs = 5000) {}

  start (): void {
    void this.probe()
    this.timer = setInterval(() => { void this.probe() }, this.everyMs)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
  }

  get (peerId: string): number | null {
    return this.rtt.get(peerId) ?? null
  }

  private async probe (): Promise<void> {
    const host = this.node.host
    if (host === undefined) return
    const peers = new Set(host.getConnections().map((c) => c.remotePeer))
    await Promise.allSettled([...peers].map(async (peer) => {
      try {
        this.rtt.set(peer.toString(), await host.services.ping.ping(peer, { signal: AbortSignal.timeout(3000) }))
      } catch {
        this.rtt.delete(peer.toString())
      }
    }))
  }
}

interface RatePoint { at: number, accepted: number, published: number, rejected: number }

/**
 * Gossip counters sampled on a timer, so the board shows rates over the last minute, not noise from
 * two page loads a second apart. Null until there is a few seconds of history.
 */
export class GossipRate {
  private readonly samples: RatePoint[] = []
  private timer: NodeJS.Timeout | undefined

  constructor (private readonly stats: () => GossipStats | undefined, private readonly everyMs = 2000) {}

  start (): void {
    this.sample()
    this.timer = setInterval(() => { this.sample() }, this.everyMs)
    this.timer.unref()
  }

  stop (): void {
    clearInterval(this.timer)
  }

  perMinute (now = Date.now()): { accepted: number, published: number, rejected: number } | null {
    const current = this.point(now)
    const first = this.samples.find((s) => s.at >= now - 60_000)
    if (current === undefined || first === undefined || now - first.at < 2 * this.everyMs - 100) return null
    const minutes = (now - first.at) / 60_000
    return {
      accepted: (current.accepted - first.accepted) / minutes,
      published: (current.published - first.published) / minutes,
      rejected: (current.rejected - first.rejected) / minutes
    }
  }

  private point (now: number): RatePoint | undefined {
    const stats = this.stats()
    return stats === undefined ? undefined : { at: now, accepted: sum(stats.accepted), published: sum(stats.published), rejected: sum(stats.rejected) }
  }

  private sample (now = Date.now()): void {
    const p = this.point(now)
    if (p !== undefined) this.samples.push(p)
    while (this.samples.length > 0 && this.samples[0].at < now - 70_000) this.samples.shift()
  }
}

export async function readMesh (node: MeshNode, latency: LatencyProbe, rate: GossipRate): Promise<MeshView> {
  const now = Date.now()
  const live = new Map((node.presence?.peers(now) ?? []).map((p) => [p.peerId, p]))
  const conns = new Map((node.host?.getConnections() ?? []).map((c) => [c.remotePeer.toString(), c.remoteAddr.toString()]))
  const self = node.peerId.toString()
  const peers: PeerView[] = []
  for (const row of await node.store.listPeers()) {
    if (row.peerId === self) continue
    const p = live.get(row.peerId)?.presence ?? row.presence
    peers.push({
      peerId: row.peerId,
      name: p?.name ?? row.name ?? row.peerId.slice(-8),
      live: live.has(row.peerId),
      connected: conns.has(row.peerId),
      addr: conns.get(row.peerId) ?? null,
      latencyMs: latency.get(row.peerId),
      // A peer whose heartbeat expired is gone, whatever its last heartbeat said.
      state: live.has(row.peerId) ? (p?.state ?? 'unknown') : 'gone',
      software: p?.software ?? null,
      hardware: p?.hardware ?? null,
      models: p?.models ?? [],
      priceFloor: p?.priceFloor ?? null,
      uptimeS: p?.uptimeS ?? null,
      lastSeen: live.get(row.peerId)?.receivedAt ?? row.lastSeen
    })
  }
  peers.sort((a, b) => Number(b.live) - Number(a.live) || a.name.localeCompare(b.name))
  const stats = node.bus?.getStats() ?? node.status().gossip
  const own = node.presence?.lastPublished()?.body
  return {
    self: {
      peerId: self,
      name: node.config.name,
      networkId: node.config.networkId,
      privateMesh: node.config.meshKey !== undefined,
      state: node.state,
      addrs: node.multiaddrs(),
      startedAt: node.status().startedAt,
      hardware: own?.hardware ?? null,
      models: own?.models ?? [],
      priceFloor: node.config.priceFloor
    },
    peers,
    gossip: { ...stats, perMinute: rate.perMinute(now) },
    messagesStored: await node.store.countMessages()
  }
}
