/**
 * Negotiation benchmark: for 4, 8 and 16 ClawBots on 127.0.0.1 (one process, offline negotiator), one
 * head asks the mesh to serve a 48-layer test model; each worker may lend about 1.25x its even share
 * of layers, so most workers are needed and some are turned away. Prints, per size:
 *   - time to full coverage: from the head's goal to contracts covering every layer (includes the
 *     proposal window, which the head waits out on purpose: it never takes the first offer);
 *   - market messages: signed envelopes published by all agents (CFP, PROPOSE, COUNTER, ACCEPT,
 *     REJECT, CONTRACT), and how many calls for proposals it took;
 *   - contracts and what the model cost per million tokens.
 * Usage: npx tsx sims/bench-negotiation.ts [--sizes 4,8,16] [--layers 48] [--window-ms 1000] [--transcripts]
 */
import '../runtime/polyfill.ts'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { MARKET_KINDS, type ModelRef } from '../protocols/index.ts'
import { openLoopbackNode, stopAll, waitFor } from '../runtime/node/local-mesh.ts'
import type { MeshNode } from '../runtime/node/node.ts'
import { generateTestModel } from '../runtime/engine/test-model.ts'
import { modelRefFromGguf } from '../skills/assembly/model.ts'
import { ClawBot, type Assembly } from '../agents/clawbot.ts'
import { formatTranscript, loadTranscripts } from '../agents/transcript.ts'

const { values } = parseArgs({
  options: {
    sizes: { type: 'string', default: '4,8,16' },
    layers: { type: 'string', default: '48' },
    'window-ms': { type: 'string', default: '1000' },
    transcripts: { type: 'boolean', default: false }
  }
})
const sizes = values.sizes.split(',').map(Number)
const nLayer = Number(values.layers)
const windowMs = Number(values['window-ms'])

interface Row { n: number, meshMs: number, coverageMs: number, messages: number, byKind: Record<string, number>, calls: number, contracts: number, cost: number }

async function runSize (n: number, modelPath: string): Promise<Row> {
  const root = await mkdtemp(join(tmpdir(), `clawmesh-bench-neg-${n}-`))
  await mkdir(join(root, 'n0', 'models'), { recursive: true })
  const { copyFile } = await import('node:fs/promises')
  await copyFile(modelPath, join(root, 'n0', 'models', 'bench.gguf'))
  const model: ModelRef = await modelRefFromGguf(join(root, 'n0', 'models', 'bench.gguf'))
  const t0 = Date.now()
  // Nodes start one after another, each bootstrapping from n0. startLocalMesh starts them all at
  // once, and with 8+ nodes some bootstrap dials fail here (connections reset while n0 handles the
  // burst) and those nodes stay alone with no retry: a runtime issue, reported; not what this measures.
  const extra = { networkId: 'bench', presenceIntervalMs: 1000, probeGpu: false }
  const nodes: MeshNode[] = []
  for (let i = 0; i < n; i++) {
    const bootstrap = i === 0 ? [] : nodes[0].multiaddrs()
    const node = await openLoopbackNode(join(root, `n${i}`), `n${i}`, { ...extra, bootstrap })
    await node.start()
    nodes.push(node)
  }
  const bots: ClawBot[] = []
  try {
    const layersEach = Math.ceil(nLayer / (n - 1) * 1.25)
    for (let i = 0; i < n; i++) {
      bots.push(await ClawBot.start(nodes[i], {
        runner: i === 0 ? { run: async () => ({ complete: async () => '', stop: async () => {} }) } : undefined,
        settings: { floor: 1 + (i % 5) * 0.1, maxMemoryBytes: model.layerBytes * layersEach, proposalWindowMs: windowMs, budget: nLayer * 1.5 },
        maxCalls: 20
      }))
    }
    // The market needs head <-> worker presence (workers learn the model from the head's heartbeat),
    // not all-pairs: at 16 nodes all-pairs presence did not complete here within minutes.
    await waitFor('the head and every worker to hear each other', () => headAndWorkersPresent(nodes), 120_000)
    const meshMs = Date.now() - t0
    // Let every worker subscribe to the model's topic (they learn it from the head's presence).
    await new Promise((resolve) => setTimeout(resolve, 1500))
    const before = published(nodes.map((node) => node.bus!.getStats().published))
    const head = bots[0]
    const done = new Promise<Assembly>((resolve) => head.onAssembled(resolve))
    const t1 = Date.now()
    await head.assemble(model)
    const assembly = await Promise.race([done, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no coverage with ${n} agents in 120 s`)), 120_000))])
    const coverageMs = Date.now() - t1
    if (values.transcripts === true) for (const t of await loadTranscripts(head.node.store)) console.log(formatTranscript(t))
    const after = published(nodes.map((node) => node.bus!.getStats().published))
    const byKind: Record<string, number> = {}
    for (const k of Object.keys(after)) byKind[k.replace('market-', '')] = after[k] - (before[k] ?? 0)
    return {
      n,
      meshMs,
      coverageMs,
      messages: Object.values(byKind).reduce((a, b) => a + b, 0),
      byKind,
      calls: (await head.book.negotiations({ role: 'head' })).length,
      contracts: assembly.contracts.length,
      cost: Math.round(assembly.contracts.reduce((s, c) => s + c.doc.price * (c.doc.end - c.doc.start), 0) * 100) / 100
    }
  } finally {
    for (const b of bots) await b.stop().catch(() => {})
    await stopAll(nodes)
    await rm(root, { recursive: true, force: true })
  }
}

function headAndWorkersPresent (nodes: MeshNode[]): boolean {
  const head = nodes[0]
  const heardByHead = new Set(head.presence!.peers().map((p) => p.peerId))
  return nodes.slice(1).every((w) => heardByHead.has(w.peerId.toString()) && w.presence!.peers().some((p) => p.peerId === head.peerId.toString()))
}

function published (stats: Array<Record<string, number>>): Record<string, number> {
  const out: Record<string, number> = {}
  for (const s of stats) for (const kind of MARKET_KINDS) out[kind.kind] = (out[kind.kind] ?? 0) + (s[kind.kind] ?? 0)
  return out
}

async function main (): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'clawmesh-bench-model-'))
  const path = join(dir, 'bench.gguf')
  await generateTestModel({ path, seed: 3, nEmbd: 64, nLayer, nHead: 2, nHeadKv: 1, nFf: 128, type: 'f32' })
  console.log(`negotiation benchmark: ${nLayer}-layer model, offline negotiator, proposal window ${windowMs} ms, loopback, one process`)
  const rows: Row[] = []
  try {
    for (const n of sizes) {
      const row = await runSize(n, path)
      rows.push(row)
      console.log(`  ${String(n).padStart(2)} agents: full coverage in ${row.coverageMs} ms, ${row.messages} market messages (${Object.entries(row.byKind).map(([k, v]) => `${k} ${v}`).join(', ')}), ${row.calls} call(s), ${row.contracts} contracts, cost ${row.cost}/M tokens (mesh formed in ${row.meshMs} ms)`)
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
  console.log('\n| agents | time to full coverage | market messages | calls | contracts |')
  console.log('|---|---|---|---|---|')
  for (const r of rows) console.log(`| ${r.n} | ${(r.coverageMs / 1000).toFixed(2)} s | ${r.messages} | ${r.calls} | ${r.contracts} |`)
  process.exit(0)
}

main().catch((err: unknown) => {
  console.error(`bench-negotiation: ${(err as Error).stack ?? String(err)}`)
  process.exit(1)
})
