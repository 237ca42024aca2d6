import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fullyPresent, startLocalMesh, stopAll, waitFor } from '../runtime/node/local-mesh.ts'
import { table } from '../runtime/cli/format.ts'
import { contractId } from '../protocols/index.ts'
import { generateTestModel } from '../runtime/engine/test-model.ts'
import { modelRefFromGguf } from '../skills/assembly/model.ts'
import type { Assembly } from './clawbot.ts'
import { ClawBot } from './clawbot.ts'
import { engineFor, ensureEngineBuilt } from './engine-runner.ts'
import { formatTranscript, loadTranscripts } from './transcript.ts'

const NAMES = ['ada', 'bruno', 'chiara', 'dmitri', 'emeka', 'fatima', 'goran', 'hana', 'ivo', 'jun', 'kemal', 'lena']
/** Workers' floors differ so that the market has something to choose between. */
const FLOORS = [1, 1.2, 0.8, 1, 0.9, 1.1, 1.3, 0.7, 1, 1.2, 0.8, 1]

/**
 * `npm start`: n ClawBots on 127.0.0.1 with the offline negotiator. ada heads: she holds a generated
 * test model and wants it served; the others each lend memory for about 40% of its layers. They
 * negotiate over the model's market topic until contracts cover every layer, ada runs the pipeline
 * (when the engine provides one) and answers a prompt, then the demo prints the transcripts and the
 * contracts. Homes live in a temporary folder, deleted at the end.
 */
export async function cmdAgentsDemo (opts: { nodes: number, layers: number, prompt: string }): Promise<void> {
  const n = Math.max(3, Math.min(opts.nodes, NAMES.length))
  const root = await mkdtemp(join(tmpdir(), 'clawmesh-agents-demo-'))
  const modelsDir = join(root, NAMES[0], 'models')
  await mkdir(modelsDir, { recursive: true })
  console.log(`clawmesh demo: ${n} ClawBots on 127.0.0.1, offline negotiator (homes under ${root})`)
  const path = join(modelsDir, `demo-l${opts.layers}.gguf`)
  process.stdout.write(`Generating a ${opts.layers}-layer test model… `)
  await generateTestModel({ path, seed: 42, nEmbd: 128, nLayer: opts.layers, nHead: 4, nHeadKv: 2, nFf: 352, type: 'f16' })
  const model = await modelRefFromGguf(path)
  console.log(`${model.name}, ${(model.layerBytes * model.nLayer / 2 ** 20).toFixed(1)} MiB, sha256 ${model.sha256.slice(0, 12)}…`)

  // The one-time llama.cpp build (minutes on a fresh machine) runs first and is timed on its own, so that
  // the mesh figure below means mesh formation only.
  const build = await ensureEngineBuilt()
  if (build !== undefined) {
    console.log(build.builtNow
      ? `llama.cpp ${build.version}: built once in ${minutes(build.ms)} (cached in ${build.binDir}; later runs skip this)`
      : `llama.cpp ${build.version}: cached build (built earlier in ${minutes(build.buildSeconds * 1000)}), ready in ${build.ms} ms`)
  }

  const t0 = Date.now()
  const nodes = await startLocalMesh(root, n, { names: NAMES, extra: { networkId: 'demo', probeGpu: false }, logLevel: 'warn' })
  const bots: ClawBot[] = []
  const stops: Array<() => Promise<void>> = []
  try {
    const engines = await Promise.all(nodes.map(async (node) => await engineFor(node)))
    const layersEach = Math.max(1, Math.ceil(opts.layers * 0.4))
    for (let i = 0; i < n; i++) {
      bots.push(await ClawBot.start(nodes[i], {
        runner: i === 0 ? engines[0].runner : undefined,
        settings: {
          floor: FLOORS[i],
          maxMemoryBytes: model.layerBytes * layersEach,
          // The head's budget sits between the workers' floors and their opening asks: expect haggling.
          budget: Math.round(model.nLayer * 1.35 * 100) / 100,
          proposalWindowMs: 1500
        }
      }))
    }
    await waitFor('every agent to hear every other', () => fullyPresent(nodes), 30_000)
    console.log(`Mesh up in ${Date.now() - t0} ms (${n} nodes started, connected and heard from each other): ${bots.map((b) => b.name).join(', ')}. ${bots[0].name} asks the mesh to serve ${model.nLayer} layers; each worker may lend ${layersEach}.`)
    // Workers serve before the head asks, so that contracted layers find an rpc-server ready.
    process.stdout.write('Engine found: workers start serving layer slices (llama.cpp rpc-servers behind contract-checked libp2p streams)… ')
    const tServe = Date.now()
    for (const e of engines.slice(1)) stops.push(await e.serve!())
    console.log(`ok (${Date.now() - tServe} ms)`)

    const head = bots[0]
    const assembled = new Promise<Assembly>((resolve) => head.onAssembled(resolve))
    const tNeg = Date.now()
    await head.assemble(model)
    const assembly = await Promise.race([assembled, new Promise<never>((_, reject) => setTimeout(() => reject(new Error('no full coverage within 60 s')), 60_000))])
    console.log(`\nFull coverage (and the pipeline started over it) after ${Date.now() - tNeg} ms.\n`)

    const transcripts = await loadTranscripts(head.node.store)
    for (const t of transcripts) console.log(formatTranscript(t) + '\n')

    console.log('Contracts (signed by both sides, stored in both databases):')
    console.log(table(['LAYERS', 'WORKER', 'PRICE', 'CONTRACT', 'VALID UNTIL'], assembly.contracts.map((c) => [
      `[${c.doc.start}, ${c.doc.end})`, head.perception.nameOf(c.doc.worker), String(c.doc.price), contractId(c.doc).slice(0, 12), new Date(c.doc.serveUntil).toISOString().slice(11, 19)
    ])))
    const cost = assembly.contracts.reduce((s, c) => s + c.doc.price * (c.doc.end - c.doc.start), 0)
    console.log(`Total: ${Math.round(cost * 100) / 100} credits per million tokens (budget ${Math.round(model.nLayer * 1.35 * 100) / 100}).\n`)

    if (assembly.pipeline !== undefined) {
      console.log(`Prompt through the pipeline (${assembly.contracts.length} workers, ${(nodes[0].config.engine?.mode ?? 'chain') === 'star' ? 'a star of llama.cpp RPC workers' : 'a chain of layer stages'} over libp2p): ${opts.prompt}`)
      const t1 = Date.now()
      const answer = await assembly.pipeline.complete(opts.prompt, { maxTokens: 24 })
      console.log(`Answer (${Date.now() - t1} ms; a seeded-random test model, so the words are noise): ${JSON.stringify(answer)}`)
    } else {
      console.log(`Pipeline: failed to start: ${assembly.pipelineError ?? 'not started'}.`)
    }
  } finally {
    for (const b of bots) await b.stop().catch(() => {})
    for (const stop of stops) await stop().catch(() => {})
    await stopAll(nodes)
    await rm(root, { recursive: true, force: true })
  }
}

function minutes (ms: number): string {
  const s = Math.round(ms / 1000)
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`
}
