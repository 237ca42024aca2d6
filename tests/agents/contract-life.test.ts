import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { contractId, coverage, type ModelRef, type SignedContract } from '../../protocols/index.ts'
import { ClawBot } from '../../agents/clawbot.ts'
import type { Pipeline, PipelineFault, PipelineRunner } from '../../skills/assembly/pipeline.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { headRanges, makeTestModel, startBotMesh, type BotMesh } from './helpers.ts'

/** Pipelines that fail when the test says so, as the engine's would when a worker dies or a link breaks. */
class FaultyRunner implements PipelineRunner {
  readonly runs: Array<{ contracts: SignedContract[], fail: (f: PipelineFault) => void, stopped: boolean }> = []
  async run (contracts: SignedContract[], _model: ModelRef): Promise<Pipeline> {
    const listeners: Array<(f: PipelineFault) => void> = []
    const run = { contracts, fail: (f: PipelineFault) => { for (const l of listeners) l(f) }, stopped: false }
    this.runs.push(run)
    return {
      complete: async (prompt) => `echo(${prompt})`,
      stop: async () => { run.stopped = true },
      onFailure: (l) => { listeners.push(l) }
    }
  }
}

/**
 * A contract has one life on both sides: a head whose pipeline fails rebuilds it (on the same contracts
 * when the fault passes, without the contract at fault when its worker is gone), the worker hears that
 * its contract was broken, and a worker that missed the notice learns it by comparing notes.
 */
describe('contracts and pipelines after a failure', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let mesh: BotMesh
  const runner = new FaultyRunner()
  let model: Awaited<ReturnType<typeof makeTestModel>>

  beforeAll(async () => {
    tmp = await tempDir()
    model = await makeTestModel(join(tmp.path, 'models'), 8)
    mesh = await startBotMesh(join(tmp.path, 'mesh'), 4, model, {
      layersEach: 4,
      bot: (i) => ({ runner: i === 0 ? runner : undefined })
    })
    await mesh.bots[0].assemble(model)
    await waitFor('the first pipeline', () => runner.runs.length === 1, 30_000)
  })

  afterAll(async () => {
    for (const b of mesh?.bots ?? []) await b.stop().catch(() => {})
    await stopAll(mesh?.nodes ?? [])
    await tmp.cleanup()
  })

  it('rebuilds on the same contracts when the fault was passing', async () => {
    const first = runner.runs[0]
    first.fail({ reason: 'tunnel to the worker broke: connection reset', kind: 'other', worker: first.contracts[0].doc.worker, contractId: contractId(first.contracts[0].doc) })
    await waitFor('a second pipeline', () => runner.runs.length === 2, 10_000)
    const ids = (cs: SignedContract[]): string[] => cs.map((c) => contractId(c.doc)).sort()
    expect(ids(runner.runs[1].contracts)).toEqual(ids(first.contracts))
    expect(await mesh.bots[0].book.contracts({ status: 'broken' })).toEqual([])
    expect(mesh.nodes[0].pipelines.get(model.sha256)?.state).toBe('running')
  })

  it('breaks the contract of a worker that is gone, tells it, and buys the range again', async () => {
    const [head] = mesh.bots
    const current = runner.runs.at(-1)!
    const victim = current.contracts[0].doc
    const id = contractId(victim)
    const n = runner.runs.length
    current.fail({ reason: 'unreachable: connection refused', kind: 'gone', worker: victim.worker, contractId: id })
    await waitFor('the head to break the contract', async () => (await head.book.contracts({ status: 'broken' })).some((c) => c.id === id), 5000)
    const workerBot = mesh.bots.find((b) => b.node.peerId.toString() === victim.worker)!
    await waitFor('the worker to hear that its contract is broken', async () => (await workerBot.book.contracts({ status: 'broken' })).some((c) => c.id === id), 5000)
    await waitFor('a pipeline over new contracts', () => runner.runs.length > n && !runner.runs.at(-1)!.contracts.some((c) => contractId(c.doc) === id), 30_000)
    expect(coverage(await headRanges(head, model.sha256), model.nLayer).complete).toBe(true)
  })

  it('a worker that missed the notice drops the contract when it compares notes with its head', async () => {
    const [head] = mesh.bots
    const current = runner.runs.at(-1)!
    const doc = current.contracts[current.contracts.length - 1].doc
    const id = contractId(doc)
    const idx = mesh.bots.findIndex((b) => b.node.peerId.toString() === doc.worker)
    // The worker's agent is away (its node stays connected, but nobody listens to the market) …
    await mesh.bots[idx].halt()
    await head.desk.endContract(id, 'broken', 'test: the head ends it while the worker is away')
    await new Promise((resolve) => setTimeout(resolve, 500))
    const away = await mesh.bots[idx].book.contracts({ status: 'active' })
    expect(away.some((c) => c.id === id)).toBe(true)
    // … and comes back: it asks its head and ends the contract, freeing its memory for the next deal.
    mesh.bots[idx] = await ClawBot.start(mesh.nodes[idx], { departAfterMs: 4000, settings: { proposalWindowMs: 1200, offerTtlMs: 20_000, maxMemoryBytes: model.layerBytes * 4 } })
    await waitFor('the returning worker to drop the broken contract', async () => !(await mesh.bots[idx].book.contracts({ status: 'active' })).some((c) => c.id === id), 10_000)
    expect((await mesh.bots[idx].book.committedThreads()).some((t) => t.cfpId === doc.cfpId)).toBe(false)
  })
})
