import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { readFile, rm, writeFile } from 'node:fs/promises'
import { dirname, extname, join, normalize, sep } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { AddressInfo } from 'node:net'
import type { Registry } from 'prom-client'
import type { MeshNode } from '../node/node.ts'
import { ControlRefused } from '../node/controls.ts'
import { ChangeFeed } from './changes.ts'
import { HttpError, readJsonBody, sendError, sendJson, sendText } from './http.ts'
import { createMetrics } from './metrics.ts'
import { GossipRate, LatencyProbe, readMesh } from './read-mesh.ts'
import { readModels } from './read-models.ts'
import { readMoney } from './read-money.ts'
import { readNegotiations } from './read-negotiations.ts'
import { readGovernance } from './read-governance.ts'
import { bearerMatches, ensureToken } from './token.ts'

const STATIC_DIR = join(dirname(fileURLToPath(import.meta.url)), 'static')
const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml'
}
/** Where a running node tells `clawmesh board` its address. */
export const BOARD_FILE = 'board.json'

export interface BoardOptions {
  /** Default: node.config.board.port; 0 picks a free port. */
  port?: number
}

export interface BoardHandle {
  url: string
  port: number
  token: string
  stop (): Promise<void>
}

type Handler = (req: IncomingMessage, res: ServerResponse, url: URL) => Promise<void>

/**
 * The owner's board: pages, their JSON API, live updates and /metrics, on 127.0.0.1 only. Reading is
 * open to whoever can reach loopback (the same person who can read the database file); controls need
 * the owner's token.
 */
export async function startBoard (node: MeshNode, opts: BoardOptions = {}): Promise<BoardHandle> {
  const token = await ensureToken(node.home)
  const feed = new ChangeFeed(node)
  const latency = new LatencyProbe(node)
  const rate = new GossipRate(() => node.bus?.getStats())
  const metrics: Registry = createMetrics(node)
  let port = 0

  const control = (action: (body: unknown) => Promise<unknown>): Handler => async (req, res) => {
    if (req.method !== 'POST') throw new HttpError(405, 'controls are POST only')
    if (!bearerMatches(req.headers.authorization, token)) {
      res.setHeader('www-authenticate', 'Bearer realm="clawmesh board"')
      throw new HttpError(401, 'the owner token is required: Authorization: Bearer <token> (clawmesh board prints it)')
    }
    const body = await readJsonBody(req)
    try {
      const result = await action(body)
      feed.push(['agent', 'mesh'])
      sendJson(res, 200, { ok: true, state: node.state, ...(result !== undefined ? { result } : {}) })
    } catch (err) {
      if (err instanceof ControlRefused) throw new HttpError(409, err.message)
      if (err instanceof RangeError) throw new HttpError(400, err.message)
      throw err
    }
  }
  const reason = (body: unknown): string | undefined => {
    const r = (body as { reason?: unknown }).reason
    return typeof r === 'string' && r.length > 0 ? r.slice(0, 200) : undefined
  }

  const routes: Record<string, Handler> = {
    '/api/mesh': async (_req, res) => { sendJson(res, 200, await readMesh(node, latency, rate)) },
    '/api/models': async (_req, res) => { sendJson(res, 200, await readModels(node)) },
    '/api/negotiations': async (_req, res, url) => { sendJson(res, 200, await readNegotiations(node, { q: url.searchParams.get('q') ?? undefined })) },
    '/api/agent': async (_req, res) => { sendJson(res, 200, { ...await node.controls.lifecycle(), policy: node.controls.policy() }) },
    '/api/money': async (_req, res) => { sendJson(res, 200, await readMoney(node)) },
    '/api/governance': async (_req, res) => { sendJson(res, 200, await readGovernance(node)) },
    '/api/events': async (_req, res) => { feed.attach(res) },
    '/metrics': async (_req, res) => { sendText(res, 200, metrics.contentType, await metrics.metrics()) },
    '/api/control/pause': control(async (body) => { await node.controls.pause(reason(body)) }),
    '/api/control/resume': control(async () => { await node.controls.resume() }),
    '/api/control/kill': control(async (body) => { await node.controls.kill(reason(body)) }),
    // The policy validates the patch itself (RangeError → 400): one schema, in skills/market.
    '/api/control/policy': control(async (body) => await node.controls.setPolicy(body))
  }

  const server: Server = createServer((req, res) => {
    void (async () => {
      // DNS rebinding: a foreign site resolving its own name to 127.0.0.1 would send its own Host.
      if (!isLoopbackHost(req.headers.host, port)) throw new HttpError(421, 'the board answers only to 127.0.0.1 and localhost')
      const url = new URL(req.url ?? '/', `http://${req.headers.host ?? '127.0.0.1'}`)
      const route = routes[url.pathname]
      if (route !== undefined) {
        if (req.method !== 'GET' && !url.pathname.startsWith('/api/control/')) throw new HttpError(405, 'read-only: GET only')
        return await route(req, res, url)
      }
      if (req.method !== 'GET') throw new HttpError(405, 'read-only: GET only')
      await serveStatic(res, url.pathname)
    })().catch((err: unknown) => {
      if (!(err instanceof HttpError) || err.status >= 500) node.log.warn('board request failed', { path: req.url, error: (err as Error).message })
      sendError(res, err)
    })
  })

  port = await listen(server, opts.port ?? node.config.board.port, (msg) => node.log.warn(msg))
  latency.start()
  rate.start()
  const url = `http://127.0.0.1:${port}/`
  await writeFile(join(node.home, BOARD_FILE), JSON.stringify({ url, port, pid: process.pid }, null, 2) + '\n', { mode: 0o600 })
  node.log.info('board up', { url })
  return {
    url,
    port,
    token,
    stop: async () => {
      feed.close()
      latency.stop()
      rate.stop()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      await rm(join(node.home, BOARD_FILE), { force: true })
    }
  }
}

/** The configured port, or any free one when another agent on this machine already holds it. */
async function listen (server: Server, port: number, warn: (msg: string) => void): Promise<number> {
  const attempt = async (p: number): Promise<number> => await new Promise((resolve, reject) => {
    const onError = (err: Error): void => { server.off('listening', onListening); reject(err) }
    const onListening = (): void => { server.off('error', onError); resolve((server.address() as AddressInfo).port) }
    server.once('error', onError)
    server.once('listening', onListening)
    server.listen(p, '127.0.0.1')
  })
  try {
    return await attempt(port)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE' || port === 0) throw new Error(`the board cannot listen on 127.0.0.1:${port}: ${(err as Error).message}`)
    const other = await attempt(0)
    warn(`board port ${port} is taken; the board is on ${other} instead (clawmesh board finds it)`)
    return other
  }
}

function isLoopbackHost (host: string | undefined, port: number): boolean {
  if (host === undefined) return false
  return [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`].includes(host.toLowerCase())
}

async function serveStatic (res: ServerResponse, pathname: string): Promise<void> {
  const rel = pathname === '/' ? 'index.html' : decodeURIComponent(pathname.replace(/^\/static\//, ''))
  const full = normalize(join(STATIC_DIR, rel))
  const type = TYPES[extname(full)]
  if (!full.startsWith(STATIC_DIR + sep) || type === undefined) throw new HttpError(404, `no such page: ${pathname}`)
  let body: Buffer
  try {
    body = await readFile(full)
  } catch {
    throw new HttpError(404, `no such page: ${pathname}`)
  }
  sendText(res, 200, type, body)
}
