// The soak: a mesh made with the CLI and default settings (one head selling a generated model through its
// paid API, several workers) serves paid requests for many minutes while a worker is killed (kill -9) and
// restarted on a schedule. It measures what a user would see: the share of requests answered, the longest
// outage, streams and dials per second and memory of every process over time, and whether every node's
// ledger agrees at the end.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { generateTestModel } from '../../runtime/engine/test-model.ts'
import { allBalances } from '../../runtime/ledger/ledger.ts'
import { Store } from '../../runtime/store/store.ts'
import { DATABASE_FILE } from '../../runtime/config.ts'
import { round } from '../lib/stats.ts'
import { CliMesh } from './cli-mesh.ts'
import { outages, requestLoop, type RequestOutcome } from './client.ts'

export interface SoakOptions {
  minutes: number
  workers: number
  /** A worker is killed every this many minutes (0: never). */
  killEveryMin: number
  /** How long a killed worker stays down before it is started again. */
  downS: number
  layers: number
  basePort: number
  /** Keep the homes (and the logs) instead of deleting them. */
  keep: boolean
  log: (line: string) => void
}

export interface Sample {
  at: number
  name: string
  rss: number
  connections: number
  streams: number
  dhtStreams: number
  dials: number
  state: string
}

export interface SoakReport {
  minutes: number
  nodes: number
  requests: number
  answered: number
  answeredShare: number
  /** Answered share of the requests sent outside re-assembly windows (a kill until the next answer). */
  answeredOutsideWindowsShare: number
  longestOutageMs: number
  outages: Array<{ fromS: number, ms: number, failures: number }>
  kills: Array<{ atS: number, name: string, recoveredAfterMs: number | null }>
  p50Ms: number
  perNode: Array<{ name: string, streamsPerS: { first: number, last: number }, dhtStreamsPerS: { first: number, last: number }, dialsPerS: { first: number, last: number }, rssMiB: { first: number, max: number, last: number } }>
  ledger: { agree: boolean, views: Record<string, Record<string, number>>, differences: string[] }
  root: string
}

function sum (rec: Record<string, number> | undefined, pick: (key: string) => boolean = () => true): number {
  return Object.entries(rec ?? {}).filter(([k]) => pick(k)).reduce((a, [, v]) => a + v, 0)
}

/** Rate of a cumulative counter over the first and the last third of a node's samples (restarts reset it). */
function rates (samples: Sample[], field: 'streams' | 'dhtStreams' | 'dials'): { first: number, last: number } {
  const rate = (part: Sample[]): number => {
    let total = 0
    let ms = 0
    for (let i = 1; i < part.length; i++) {
      const d = part[i][field] - part[i - 1][field]
      if (d < 0) continue // the node restarted between these samples
      total += d
      ms += part[i].at - part[i - 1].at
    }
    return ms > 0 ? round(total / (ms / 1000), 2) : 0
  }
  const third = Math.max(2, Math.floor(samples.length / 3))
  return { first: rate(samples.slice(0, third)), last: rate(samples.slice(-third)) }
}

export async function runSoak (o: SoakOptions): Promise<SoakReport> {
  const root = await mkdtemp(join(tmpdir(), 'clawmesh-soak-'))
  const mesh = new CliMesh(root)
  const log = o.log
  const modelsDir = join(root, 'head', 'models')
  const outcomes: RequestOutcome[] = []
  const samples: Sample[] = []
  const kills: Array<{ at: number, name: string }> = []
  const stop = new AbortController()
  const timers: NodeJS.Timeout[] = []
  try {
    const gatewayPort = o.basePort + 99
    await mesh.init('head', o.basePort, { gateway: { port: gatewayPort }, agent: { assemble: 'soak.gguf' } })
    await mkdir(modelsDir, { recursive: true })
    await generateTestModel({ path: join(modelsDir, 'soak.gguf'), seed: 7, nEmbd: 128, nLayer: o.layers, nHead: 4, nHeadKv: 2, nFf: 352, type: 'f16' })
    await mesh.start('head')
    const invite = (JSON.parse(await mesh.cliOk(['invite', '--name', 'head', '--json'])) as { invite: string }).invite
    const workers = Array.from({ length: o.workers }, (_, i) => `w${i + 1}`)
    for (const [i, w] of workers.entries()) await mesh.join(invite, w, o.basePort + 1 + i)
    await Promise.all(workers.map(async (w) => await mesh.start(w)))
    const key = JSON.parse(await mesh.cliOk(['keys', 'create', '--name', 'head', '--credits', '100000000', '--json'])) as { secret: string }
    log(`mesh of ${workers.length + 1} nodes up in ${root}; waiting for the paid API`)
    const api = await mesh.waitFor('head', /Paid API for (\S+): (\S+)\/v1/, 240_000)
    const model = api[1]
    const baseUrl = `${api[2]}/v1`
    log(`paid API for ${model} at ${baseUrl}; soaking for ${o.minutes} min`)

    const t0 = Date.now()
    const sample = async (): Promise<void> => {
      for (const name of mesh.members.keys()) {
        const s = await mesh.status(name)
        if (s === undefined) continue
        samples.push({
          at: Date.now(),
          name,
          rss: s.memory?.rss ?? 0,
          connections: s.connections.length,
          streams: sum(s.traffic?.streams),
          dhtStreams: sum(s.traffic?.streams, (p) => p.includes('/kad/')),
          dials: s.traffic?.connections.outbound ?? 0,
          state: s.state
        })
      }
    }
    timers.push(setInterval(() => { void sample() }, 5000))
    const loop = requestLoop({ baseUrl, apiKey: key.secret, model, intervalMs: 500 }, stop.signal, (r) => { outcomes.push(r) })
    if (o.killEveryMin > 0) {
      let next = 0
      timers.push(setInterval(() => {
        const name = workers[next++ % workers.length]
        kills.push({ at: Date.now(), name })
        log(`kill -9 ${name}`)
        void mesh.kill(name, 'SIGKILL').then(async () => {
          await new Promise((resolve) => setTimeout(resolve, o.downS * 1000))
          if (stop.signal.aborted) return
          log(`restart ${name}`)
          await mesh.start(name).catch((err: Error) => log(`restart of ${name} failed: ${err.message}`))
        })
      }, o.killEveryMin * 60_000))
    }
    const progress = setInterval(() => {
      const recent = outcomes.filter((r) => r.at > Date.now() - 60_000)
      log(`${round((Date.now() - t0) / 60_000, 1)} min: ${outcomes.filter((r) => r.ok).length}/${outcomes.length} answered, last minute ${recent.filter((r) => r.ok).length}/${recent.length}`)
    }, 60_000)
    timers.push(progress)
    await new Promise((resolve) => setTimeout(resolve, o.minutes * 60_000))
    stop.abort()
    for (const t of timers) clearInterval(t)
    await loop
    // Receipts settle after the gateway's challenge window (30 s by default), then travel by gossip.
    for (const w of workers) if (!mesh.running(w)) await mesh.start(w).catch(() => {})
    log('waiting for the last receipts to settle and spread')
    await new Promise((resolve) => setTimeout(resolve, 45_000))
    await mesh.stopAll('SIGTERM')

    const views: Record<string, Record<string, number>> = {}
    for (const name of mesh.members.keys()) {
      const store = await Store.open(join(mesh.home(name), DATABASE_FILE))
      try {
        const balances = await allBalances(store.db)
        views[name] = Object.fromEntries([...balances].filter(([account]) => account.startsWith('agent:')).sort())
      } finally {
        await store.close()
      }
    }
    const reference = JSON.stringify(views.head)
    const differences = Object.entries(views).filter(([, v]) => JSON.stringify(v) !== reference).map(([name, v]) => `${name}: ${JSON.stringify(v)} vs head ${reference}`)

    const sorted = [...outcomes].sort((a, b) => a.at - b.at)
    const killWindows = kills.map((k) => {
      const next = sorted.find((r) => r.at > k.at && r.ok)
      return { ...k, end: next?.at ?? Infinity }
    })
    const outside = sorted.filter((r) => !killWindows.some((w) => r.at >= w.at && r.at <= w.end))
    const spans = outages(sorted)
    const latencies = sorted.filter((r) => r.ok).map((r) => r.ms).sort((a, b) => a - b)
    const perNode = [...mesh.members.keys()].map((name) => {
      const mine = samples.filter((s) => s.name === name)
      const rss = mine.map((s) => s.rss / 2 ** 20)
      return {
        name,
        streamsPerS: rates(mine, 'streams'),
        dhtStreamsPerS: rates(mine, 'dhtStreams'),
        dialsPerS: rates(mine, 'dials'),
        rssMiB: { first: round(rss[0] ?? 0, 0), max: round(Math.max(0, ...rss), 0), last: round(rss.at(-1) ?? 0, 0) }
      }
    })
    return {
      minutes: o.minutes,
      nodes: mesh.members.size,
      requests: sorted.length,
      answered: sorted.filter((r) => r.ok).length,
      answeredShare: round(sorted.filter((r) => r.ok).length / Math.max(1, sorted.length), 4),
      answeredOutsideWindowsShare: round(outside.filter((r) => r.ok).length / Math.max(1, outside.length), 4),
      longestOutageMs: Math.max(0, ...spans.map((s) => s.ms)),
      outages: spans.map((s) => ({ fromS: round((s.from - t0) / 1000, 1), ms: s.ms, failures: s.failures })),
      kills: killWindows.map((k) => ({ atS: round((k.at - t0) / 1000, 1), name: k.name, recoveredAfterMs: Number.isFinite(k.end) ? k.end - k.at : null })),
      p50Ms: latencies[Math.floor(latencies.length / 2)] ?? 0,
      perNode,
      ledger: { agree: differences.length === 0, views, differences },
      root
    }
  } finally {
    stop.abort()
    for (const t of timers) clearInterval(t)
    await mesh.stopAll('SIGKILL', 1000).catch(() => {})
    if (!o.keep) await rm(root, { recursive: true, force: true })
  }
}

export async function writeSoakReport (dir: string, report: SoakReport, outcomes?: RequestOutcome[]): Promise<void> {
  await mkdir(dir, { recursive: true })
  await writeFile(join(dir, 'soak.json'), JSON.stringify({ report, ...(outcomes !== undefined ? { outcomes } : {}) }, null, 2) + '\n')
}
