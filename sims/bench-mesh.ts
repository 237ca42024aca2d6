/**
 * Mesh benchmark: for 5, 10 and 20 real libp2p nodes on 127.0.0.1 (one process), prints
 *   - formation time: from the first node's start until every node holds a live heartbeat of every other;
 *   - gossip latency: publish-to-handler delay of signed probe envelopes, median and p99 (same clock);
 *   - presence cost: gossipsub bytes each node sends and receives per second while only heartbeats flow.
 * Usage: npx tsx sims/bench-mesh.ts [--sizes 5,10,20] [--interval-ms 3000] [--window-s 12]
 */
import '../runtime/polyfill.ts'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { z } from 'zod'
import { defineKind } from '../protocols/index.ts'
import { fullyPresent, startLocalMesh, stopAll, waitFor } from '../runtime/node/local-mesh.ts'
import type { MeshNode } from '../runtime/node/node.ts'
import { byteCountingRegister } from './lib/gossip-bytes.ts'
import { percentile } from './lib/stats.ts'

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '5,10,20' },
    'interval-ms': { type: 'string', default: '3000' },
    'window-s': { type: 'string', default: '12' },
    probes: { type: 'string', default: '10' }
  }
})
const sizes = values.sizes.split(',').map(Number)
const intervalMs = Number(values['interval-ms'])
const windowS = Number(values['window-s'])
const probesPerNode = Number(values.probes)
const DEFAULT_INTERVAL_MS = 15_000

const Probe = defineKind('bench-probe', z.object({ seq: z.number().int(), sentAt: z.number() }).strict(), 60_000)

interface Row { n: number, formationMs: number, medianMs: number, p99Ms: number, samples: number, sentBps: number, recvBps: number, perBeat: number }

async function runSize (n: number): Promise<Row> {
  const root = await mkdtemp(join(tmpdir(), `clawmesh-bench-${n}-`))
  const counters = Array.from({ length: n }, () => byteCountingRegister())
  let nodes: MeshNode[] = []
  try {
    const t0 = performance.now()
    nodes = await startLocalMesh(root, n, {
      extra: { networkId: 'bench', presenceIntervalMs: intervalMs },
      hostFor: (i) => ({ gossipsubMetrics: counters[i].register })
    })
    await waitFor('full presence', () => fullyPresent(nodes), 60_000, 10)
    const formationMs = performance.now() - t0

    // Let direct links settle, then measure heartbeat traffic alone over whole intervals.
    await new Promise((resolve) => setTimeout(resolve, 2000))
    const before = counters.map((c) => c.snapshot())
    const beats = nodes.map((node) => node.bus!.getStats().published.presence ?? 0)
    await new Promise((resolve) => setTimeout(resolve, windowS * 1000))
    const sent = counters.map((c, i) => c.snapshot().sent - before[i].sent)
    const recv = counters.map((c, i) => c.snapshot().recv - before[i].recv)
    const beatsInWindow = nodes.reduce((a, node, i) => a + (node.bus!.getStats().published.presence ?? 0) - beats[i], 0) / n

    const latencies: number[] = []
    for (const node of nodes) node.bus!.subscribe(Probe, (env) => { latencies.push(Date.now() - env.body.sentAt) })
    await new Promise((resolve) => setTimeout(resolve, 1500)) // subscriptions propagate and meshes graft
    let seq = 0
    await Promise.all(nodes.map(async (node) => {
      for (let i = 0; i < probesPerNode; i++) {
        await new Promise((resolve) => setTimeout(resolve, Math.random() * 200))
        await node.bus!.publish(Probe, { seq: seq++, sentAt: Date.now() })
      }
    }))
    const expected = n * probesPerNode * (n - 1)
    await waitFor('probes delivered', () => latencies.length >= expected, 20_000).catch(() => {})
    latencies.sort((a, b) => a - b)
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length
    return {
      n,
      formationMs,
      medianMs: percentile(latencies, 50),
      p99Ms: percentile(latencies, 99),
      samples: latencies.length,
      sentBps: mean(sent) / windowS,
      recvBps: mean(recv) / windowS,
      perBeat: beatsInWindow > 0 ? mean(sent) / beatsInWindow : NaN
    }
  } finally {
    await stopAll(nodes)
    await rm(root, { recursive: true, force: true })
  }
}

console.log(`clawmesh bench-mesh: loopback, one process, heartbeat every ${intervalMs} ms during the byte window of ${windowS} s`)
const rows: Row[] = []
for (const n of sizes) {
  const row = await runSize(n)
  rows.push(row)
  console.log(`  n=${n} done`)
}
console.log('\n| nodes | formation | gossip median | gossip p99 | probes | gossipsub B/s sent per node | received | at 15 s heartbeat (sent) |')
console.log('|---|---|---|---|---|---|---|---|')
for (const r of rows) {
  const scaled = r.sentBps * intervalMs / DEFAULT_INTERVAL_MS
  console.log(`| ${r.n} | ${(r.formationMs / 1000).toFixed(2)} s | ${r.medianMs.toFixed(1)} ms | ${r.p99Ms.toFixed(1)} ms | ${r.samples} | ${r.sentBps.toFixed(0)} | ${r.recvBps.toFixed(0)} | ~${scaled.toFixed(0)} |`)
}
console.log('\nBytes are gossipsub RPC bytes (payload, signatures and control frames, before noise/yamux framing), averaged over nodes.')
console.log('The last column scales the heartbeat share linearly to the default 15 s interval (an upper bound: control frames do not shrink with it).')
process.exit(0)
