import type { ServerResponse } from 'node:http'
import type { MeshNode } from '../node/node.ts'
import { listRelations } from './tables.ts'

export type Topic = 'mesh' | 'negotiations' | 'models' | 'money' | 'agent' | 'governance'

/**
 * Live updates by Server-Sent Events. Other layers write to the database without telling the board, so
 * while anyone watches, the board polls cheap signatures (max rowids, counts, the node's live state)
 * and pushes the names of the topics that changed; pages then refetch just those. Nobody watching,
 * no polling.
 */
export class ChangeFeed {
  private readonly clients = new Set<ServerResponse>()
  private readonly last = new Map<Topic, string>()
  private timer: NodeJS.Timeout | undefined
  private keepAlive: NodeJS.Timeout | undefined
  private polling = false
  private readonly unsubscribe: () => void

  constructor (private readonly node: MeshNode, private readonly everyMs = 400) {
    // The agent's own words should appear at once, not at the next poll.
    this.unsubscribe = node.activity.onRecord(() => { this.push(['agent']) })
  }

  attach (res: ServerResponse): void {
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive', 'x-content-type-options': 'nosniff' })
    res.write('retry: 1000\n\n')
    this.clients.add(res)
    res.on('close', () => {
      this.clients.delete(res)
      if (this.clients.size === 0) this.idle()
    })
    if (this.timer === undefined) {
      this.timer = setInterval(() => { void this.poll() }, this.everyMs)
      // Proxies and browsers drop silent streams; a comment line every 15 s keeps it open.
      this.keepAlive = setInterval(() => { for (const c of this.clients) c.write(': keep-alive\n\n') }, 15_000)
      void this.poll()
    }
  }

  push (topics: Topic[]): void {
    if (topics.length === 0 || this.clients.size === 0) return
    const frame = `event: change\ndata: ${JSON.stringify({ topics, at: Date.now() })}\n\n`
    for (const c of this.clients) c.write(frame)
  }

  close (): void {
    this.unsubscribe()
    for (const c of this.clients) c.end()
    this.clients.clear()
    this.idle()
  }

  private idle (): void {
    clearInterval(this.timer)
    clearInterval(this.keepAlive)
    this.timer = undefined
    this.keepAlive = undefined
  }

  private async poll (): Promise<void> {
    if (this.polling) return // a slow database must not stack polls up
    this.polling = true
    try {
      const sigs = await this.signatures()
      const changed: Topic[] = []
      for (const [topic, sig] of sigs) {
        if (this.last.get(topic) !== sig) changed.push(topic)
        this.last.set(topic, sig)
      }
      this.push(changed)
    } catch {
      // The database closes under us when the node stops; the next poll (if any) tries again.
    } finally {
      this.polling = false
    }
  }

  private async signatures (): Promise<Map<Topic, string>> {
    const db = this.node.store.db
    const one = async (sql: string): Promise<string> => JSON.stringify(await db.get(sql))
    const peers = (this.node.presence?.peers() ?? []).map((p) => `${p.peerId}:${p.presence.state}:${p.presence.priceFloor}`).sort().join(',')
    const conns = (this.node.host?.getConnections() ?? []).map((c) => c.id).sort().join(',')
    const gov = await listRelations(db, 'gov\\_%')
    const govCounts = await Promise.all([...gov, ...await listRelations(db, 'governance\\_%'), ...await listRelations(db, 'board\\_%')]
      .map(async (t) => await one(`SELECT COUNT(*) AS n FROM "${t}"`)))
    const contracts = await one('SELECT COUNT(*) AS n, group_concat(id || status) AS s FROM contracts')
    return new Map<Topic, string>([
      ['mesh', `${peers}|${conns}|${this.node.state}`],
      ['negotiations', await one("SELECT MAX(rowid) AS m, COUNT(*) AS n FROM messages WHERE kind <> 'presence'")],
      ['models', `${contracts}|${peers}|${[...this.node.serving.total().values()].join(',')}`],
      ['money', await one('SELECT MAX(seq) AS m FROM ledger')],
      ['agent', `${await one('SELECT MAX(seq) AS m FROM activity')}|${this.node.state}`],
      ['governance', govCounts.join(',')]
    ])
  }
}
