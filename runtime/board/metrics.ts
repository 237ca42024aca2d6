import { Counter, Gauge, Registry } from 'prom-client'
import type { MeshNode } from '../node/node.ts'
import { SOFTWARE_VERSION } from '../version.ts'
import { agentAccount } from '../ledger/ledger.ts'
import { moneySummary, type MoneySummary } from '../ledger/summary.ts'

/** States the gauge always lists (0 or 1), so that dashboards see a flat 0 rather than a missing series. */
const KNOWN_STATES = ['offline', 'booting', 'idle', 'paused', 'draining', 'stopped']

/**
 * /metrics: one registry per node (several nodes share a process in tests and the demo, and the global
 * registry would mix them). Every value is read when scraped, so nothing here can drift from the node.
 */
export function createMetrics (node: MeshNode): Registry {
  const registry = new Registry()
  const self = node.peerId.toString()

  new Gauge({
    name: 'clawmesh_info', help: 'This node (always 1), with its identity as labels', labelNames: ['peer_id', 'name', 'network', 'version'], registers: [registry],
    collect () { this.reset(); this.set({ peer_id: self, name: node.config.name, network: node.config.networkId, version: SOFTWARE_VERSION }, 1) }
  })
  new Gauge({
    name: 'clawmesh_peers', help: 'Peers by how we know them: present (live heartbeat), connected (direct link), known (ever seen)', labelNames: ['view'], registers: [registry],
    async collect () {
      this.set({ view: 'present' }, node.presence?.peers().length ?? 0)
      this.set({ view: 'connected' }, new Set((node.host?.getConnections() ?? []).map((c) => c.remotePeer.toString())).size)
      this.set({ view: 'known' }, (await node.store.listPeers()).filter((p) => p.peerId !== self).length)
    }
  })
  const gossip = (name: string, help: string, pick: 'accepted' | 'published'): void => {
    new Counter({
      name, help, labelNames: ['kind'], registers: [registry],
      collect () {
        this.reset()
        for (const [kind, n] of Object.entries(node.bus?.getStats()[pick] ?? {})) this.inc({ kind }, n)
      }
    })
  }
  gossip('clawmesh_gossip_accepted_total', 'Signed gossip envelopes accepted from peers, by kind', 'accepted')
  gossip('clawmesh_gossip_published_total', 'Gossip envelopes this node published, by kind', 'published')
  new Counter({
    name: 'clawmesh_gossip_rejected_total', help: 'Gossip messages rejected by validation, by reason', labelNames: ['reason'], registers: [registry],
    collect () {
      this.reset()
      for (const [reason, n] of Object.entries(node.bus?.getStats().rejected ?? {})) this.inc({ reason }, n)
    }
  })
  new Gauge({
    name: 'clawmesh_messages_stored', help: 'Envelopes in the node\'s transcript', registers: [registry],
    async collect () { this.set(await node.store.countMessages()) }
  })
  new Counter({
    name: 'clawmesh_tokens_served_total', help: 'Tokens this node served since it started (as a head through its paid API, as a worker per receipt it signed), by model sha256', labelNames: ['model'], registers: [registry],
    async collect () {
      this.reset()
      // Models this node holds or has contracts for show 0 before their first token, not a missing series.
      for (const model of await modelsOfInterest(node)) this.inc({ model }, 0)
      for (const [model, n] of node.serving.total()) this.inc({ model }, n)
    }
  })
  new Gauge({
    name: 'clawmesh_credits', help: 'Balance of each of our ledger accounts (credited minus debited); agent:<peer id> is always listed', labelNames: ['account'], registers: [registry],
    async collect () {
      this.reset()
      this.set({ account: agentAccount(self) }, 0)
      const rows = await node.store.db.all<{ account: string, balance: number }>(
        `SELECT account, SUM(delta) AS balance FROM (
           SELECT credit AS account, amount AS delta FROM ledger UNION ALL SELECT debit AS account, -amount AS delta FROM ledger
         ) WHERE instr(account, ?) > 0 GROUP BY account`, [self])
      for (const r of rows) this.set({ account: r.account }, r.balance)
    }
  })
  // One summary per scrape feeds the money series below: they come from the same queries as
  // `clawmesh status --json` and the board, and cannot disagree with them.
  let summary: Promise<MoneySummary> | undefined
  const money = async (): Promise<MoneySummary> => {
    summary ??= moneySummary(node.store.db, self).finally(() => { setTimeout(() => { summary = undefined }, 0) })
    return await summary
  }
  new Counter({
    name: 'clawmesh_earned_credits_total', help: 'Credits paid to this agent for settled receipts, as a worker', registers: [registry],
    async collect () { this.reset(); this.inc((await money()).earned) }
  })
  new Gauge({
    name: 'clawmesh_pending_earnings_credits', help: 'Credits of receipts this agent signed as a worker that have not settled yet', registers: [registry],
    async collect () { this.set((await money()).pendingEarnings) }
  })
  new Counter({
    name: 'clawmesh_gateway_requests_total', help: 'Requests the paid API served and billed', registers: [registry],
    async collect () { this.reset(); this.inc((await money()).gateway?.requests ?? 0) }
  })
  new Counter({
    name: 'clawmesh_gateway_tokens_total', help: 'Tokens the paid API billed, by kind (prompt, completion)', labelNames: ['kind'], registers: [registry],
    async collect () {
      this.reset()
      const g = (await money()).gateway
      this.inc({ kind: 'prompt' }, g?.promptTokens ?? 0)
      this.inc({ kind: 'completion' }, g?.completionTokens ?? 0)
    }
  })
  new Counter({
    name: 'clawmesh_gateway_charged_credits_total', help: 'Credits the paid API took from API keys (worker payouts and network fees)', registers: [registry],
    async collect () { this.reset(); this.inc((await money()).gateway?.charged ?? 0) }
  })
  new Gauge({
    name: 'clawmesh_contracts', help: 'Contracts in the node\'s database, by status', labelNames: ['status'], registers: [registry],
    async collect () {
      this.reset()
      for (const r of await node.store.db.all<{ status: string, n: number }>('SELECT status, COUNT(*) AS n FROM contracts GROUP BY status')) this.set({ status: r.status }, r.n)
    }
  })
  new Gauge({
    name: 'clawmesh_lifecycle_state', help: 'The agent\'s lifecycle state: 1 for the current one', labelNames: ['state'], registers: [registry],
    collect () {
      this.reset()
      for (const state of new Set([...KNOWN_STATES, node.state])) this.set({ state }, state === node.state ? 1 : 0)
    }
  })
  new Gauge({
    name: 'clawmesh_uptime_seconds', help: 'Seconds since the node opened', registers: [registry],
    collect () { this.set((Date.now() - node.status().startedAt) / 1000) }
  })
  return registry
}

/** Models on this node's disk (as last announced) and in its contracts, as head or worker. */
async function modelsOfInterest (node: MeshNode): Promise<Set<string>> {
  const self = node.peerId.toString()
  const out = new Set((node.presence?.lastPublished()?.body.models ?? []).map((m) => m.sha256))
  for (const r of await node.store.db.all<{ model: string }>('SELECT DISTINCT model_sha256 AS model FROM contracts WHERE head = ? OR worker = ?', [self, self])) out.add(r.model)
  return out
}
