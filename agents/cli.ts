import { access } from 'node:fs/promises'
import { join } from 'node:path'
import { DATABASE_FILE, type MeshNode } from '../runtime/node/node.ts'
import { Store } from '../runtime/store/store.ts'
import { printJson } from '../runtime/cli/format.ts'
import { modelRefFromGguf } from '../skills/assembly/model.ts'
import { ReceiptService } from '../runtime/ledger/service.ts'
import { startPaidApi } from '../runtime/gateway/serve.ts'
import { resolveModelPath } from '../runtime/engine/catalog.ts'
import type { Gateway } from '../runtime/gateway/server.ts'
import type { Replay } from '../runtime/gateway/spot-check.ts'
import { replaysFor } from '../runtime/gateway/replays.ts'
import type { Pipeline } from '../skills/assembly/pipeline.ts'
import { contractId } from '../protocols/index.ts'
import { ClawBot } from './clawbot.ts'
import type { Brain } from './brains/providers.ts'
import { engineFor } from './engine-runner.ts'
import { startContributor, type Contributor } from './contributor.ts'
import { migrateAgentTables } from './migrations.ts'
import { formatTranscript, loadTranscripts } from './transcript.ts'

export async function cmdTranscripts (home: string, opts: { thread?: string, json: boolean }): Promise<void> {
  const path = join(home, DATABASE_FILE)
  try { await access(path) } catch { throw new Error(`no clawmesh agent in ${home}; create one with "clawmesh init"`) }
  const store = await Store.open(path)
  try {
    await migrateAgentTables(store)
    const transcripts = await loadTranscripts(store, { thread: opts.thread })
    if (opts.json) return printJson(transcripts)
    if (transcripts.length === 0) return console.log('No negotiations yet.')
    console.log(transcripts.map(formatTranscript).join('\n\n'))
  } finally {
    await store.close()
  }
}

/** A node's running agent as `clawmesh start` wires it: the ClawBot, its receipts and its paid APIs. */
export interface RunningAgent {
  bot: ClawBot
  receipts: ReceiptService
  /** Takes task issues and opens pull requests, where config.governance lets this agent propose. */
  contributor?: Contributor
  /** The paid API, once a head with a gateway section assembled a model (one gateway sells every model). */
  gateways: () => Promise<Gateway[]>
  stop: () => Promise<void>
}

/**
 * `clawmesh start`: the node's agent, assembling agent.assemble when the owner configured one.
 * `brain` overrides the configured LLM (the simulator's adversaries bring their own).
 */
export async function startAgentFor (node: MeshNode, opts: { brain?: Brain } = {}): Promise<RunningAgent> {
  const engine = await engineFor(node)
  // Every node cosigns and books receipts (workers sign what they served, bystanders verify balances).
  const receipts = new ReceiptService(node)
  receipts.start()
  if (engine.meter !== undefined) {
    // A worker signs only what it computed by its own count (runtime/ledger/audit.ts); a head caught
    // under-billing or not paying is refused further service on that contract.
    const meter = engine.meter
    receipts.attachMeter({ counted: (c) => meter()?.counted(c) })
    receipts.onMeterReport((r) => { meter()?.suspend(contractId(r.contract.doc), `its head ${r.reason === 'unpaid' ? 'did not pay' : 'under-billed'} us: claimed ${r.claimed}, counted ${r.counted}`) })
  }
  const bot = await ClawBot.start(node, { runner: engine.runner, brain: opts.brain })
  // A head with a `gateway` section sells every model it assembles through one paid API (one port;
  // `model` picks the pipeline; one place counts each key's reservations), kept across re-assemblies
  // (clients keep their URL) and pointed at each model's current pipeline.
  let gateway: Promise<Gateway | undefined> | undefined
  const announced = new Set<string>()
  // Once per model: the owner (and scripts) learn the URL and the `model` id clients send.
  const announce = (g: Gateway, model: string): void => {
    if (announced.has(model)) return
    announced.add(model)
    console.log(`Paid API for ${model}: ${g.url}/v1 (clawmesh keys create --credits N makes a key)`)
  }
  // Spot checks (on by default) replay on another provider of the same range, where the head holds
  // one; the list is refilled at each assembly and read by the gateway at each check.
  const replays: Replay[] = []
  const replayPipelines: Pipeline[] = []
  const warnedUnchecked = new Set<string>()
  bot.onAssembled((a) => {
    if (node.config.gateway === undefined || a.pipeline?.url === undefined) return
    void bot.book.contracts({ head: node.peerId.toString(), model: a.model.sha256, status: 'active' }).then((held) => {
      const r = replaysFor(a.contracts, held.map((c) => c.signed), async (cs) => {
        const p = await engine.runner.run(cs, a.model)
        replayPipelines.push(p)
        if (p.url === undefined) throw new Error('the replay pipeline has no URL')
        return p.url
      })
      replays.splice(0, replays.length, ...r.replays)
      for (const id of r.unchecked) {
        if (warnedUnchecked.has(id)) continue
        warnedUnchecked.add(id)
        node.log.info('no other provider of this contract\'s range: its outputs are not spot-checked (its token counts still are, by the worker)', { contract: id })
      }
    }).catch((err: unknown) => { node.log.warn('could not list replays for spot checks', { error: (err as Error).message }) })
    const route = { upstream: a.pipeline.url, contractIds: a.contracts.map((c) => contractId(c.doc)), modelSha256: a.model.sha256, modelName: a.model.name }
    if (gateway !== undefined) {
      void gateway.then((g) => { if (g !== undefined) { g.serve(route); announce(g, a.model.name) } })
      return
    }
    gateway = startPaidApi(node, receipts, { url: route.upstream, contractIds: route.contractIds, modelSha256: route.modelSha256, modelName: route.modelName, replays }).then((g) => {
      announce(g, a.model.name)
      return g
    }, (err: unknown) => {
      node.log.warn('the paid API did not start', { error: (err as Error).message })
      return undefined
    })
  })
  bot.onBroken((model) => { void gateway?.then((g) => { if (g?.models().includes(model.name) === true) g.retarget(undefined, undefined, model.sha256) }) })
  // Serving starts with the first contract as a worker, not at start: it may need a llama.cpp build,
  // which an agent that never sells has no reason to pay for. (The head retries a pipeline that
  // raced a worker's start.)
  let serving: Promise<(() => Promise<void>) | undefined> | undefined
  const serve = (): void => {
    if (engine.serve === undefined || serving !== undefined) return
    serving = engine.serve().catch((err: unknown) => {
      node.log.warn('cannot serve layer slices', { error: (err as Error).message })
      return undefined
    })
  }
  bot.onContract((_c, role) => { if (role === 'worker') serve() })
  // The kill switch finishes what the engine has in flight: the paid API and the served slices stop
  // before the agent leaves the mesh. Each stops once: the node's own stop after a kill comes again.
  const stopGateway = once(async () => { await (await gateway)?.stop() })
  const stopServing = once(async () => { await (await serving)?.() })
  // The shared code's task issues, one at a time while the agent is idle; the owner's pause stops it too.
  const contributor = await startContributor(node, bot)
  const stopContributor = once(async () => { await contributor?.stop() })
  node.controls.onDrain(stopContributor)
  node.controls.onDrain(async () => { try { await stopGateway() } finally { await stopServing() } })
  // A worker restarted with contracts still in force serves them at once: its heads are rebuilding on them.
  if ((await bot.book.contracts({ worker: node.peerId.toString(), status: 'active' })).length > 0) serve()
  console.log(`ClawBot ${bot.name} is ${bot.state} (brain: ${bot.brain.label}${bot.resumedFrom !== undefined ? `, resumed from ${bot.resumedFrom}` : ''})`)
  const target = bot.settings.assemble
  if (target !== undefined) {
    const path = resolveModelPath(target, node.modelsDir)
    const model = await modelRefFromGguf(path)
    await bot.assemble(model)
    console.log(`Assembling ${model.name} (${model.nLayer} layers) from the mesh.`)
  }
  return {
    bot,
    receipts,
    contributor,
    gateways: async () => { const g = await gateway; return g === undefined ? [] : [g] },
    // Every part stops even when another fails (after a crash the node's database may be closed).
    stop: async () => {
      const errors: unknown[] = []
      const step = async (f: () => unknown): Promise<void> => { try { await f() } catch (err) { errors.push(err) } }
      await step(stopContributor)
      await step(stopGateway)
      for (const p of replayPipelines) await step(async () => { await p.stop() })
      await step(async () => { await bot.stop() })
      await step(async () => { await receipts.stop() })
      await step(stopServing)
      if (errors.length > 0) throw new AggregateError(errors, `stopping the agent of ${node.config.name}: ${errors.map((e) => (e as Error).message).join('; ')}`)
    }
  }
}

/** `f` runs on the first call; later calls wait for that run. */
function once (f: () => Promise<void>): () => Promise<void> {
  let run: Promise<void> | undefined
  return async () => { run ??= f(); await run }
}
