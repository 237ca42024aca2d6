import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { coverage, type SignedContract } from '../../protocols/index.ts'
import type { Pipeline, PipelineRunner } from '../../skills/assembly/pipeline.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { makeTestModel, startBotMesh, type BotMesh } from './helpers.ts'

/** Records when each pipeline started and stopped. */
class TimedRunner implements PipelineRunner {
  readonly runs: Array<{ contracts: SignedContract[], at: number, stoppedAt?: number }> = []
  async run (contracts: SignedContract[]): Promise<Pipeline> {
    const run: { contracts: SignedContract[], at: number, stoppedAt?: number } = { contracts, at: Date.now() }
    this.runs.push(run)
    return { complete: async () => '', stop: async () => { run.stoppedAt = Date.now() } }
  }
}

/**
 * Contracts bind for a term. A head renews before the term ends (here: 12 s terms, renewed in their
 * last third) and moves its pipeline onto the new contracts before the old ones lapse; lapsed
 * contracts end on both sides, and the worker's memory is free again.
 */
describe('contract terms: renewal before the end, and lapse', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let mesh: BotMesh
  const runner = new TimedRunner()
  let model: Awaited<ReturnType<typeof makeTestModel>>

  beforeAll(async () => {
    tmp = await tempDir()
    model = await makeTestModel(join(tmp.path, 'models'))
    // Four workers of 6 layers each: two cover the model, two are free to take the renewals.
    mesh = await startBotMesh(join(tmp.path, 'mesh'), 5, model, {
      layersEach: 6,
      agent: () => ({ floor: 1, budget: 30, renewBeforeMs: 4000 }),
      bot: (i) => ({ runner: i === 0 ? runner : undefined, serveForMs: 12_000 })
    })
  })

  afterAll(async () => {
    for (const b of mesh?.bots ?? []) await b.stop().catch(() => {})
    await stopAll(mesh?.nodes ?? [])
    await tmp.cleanup()
  })

  it('renews before the old terms end, moves the pipeline, and the old contracts lapse on both sides', async () => {
    const [head, ...workers] = mesh.bots
    await head.assemble(model)
    await waitFor('the first pipeline', () => runner.runs.length === 1, 30_000)
    const first = runner.runs[0]
    const firstEnds = Math.min(...first.contracts.map((c) => c.doc.serveUntil))

    await waitFor('the pipeline to move onto renewed contracts', () => runner.runs.length >= 2, 30_000)
    const second = runner.runs[1]
    // Make before break: the new pipeline ran before the old terms ended, and the old one was stopped then.
    expect(second.at).toBeLessThan(firstEnds)
    expect(first.stoppedAt).toBeGreaterThanOrEqual(second.at)
    expect(coverage(second.contracts.map((c) => c.doc), model.nLayer)).toMatchObject({ complete: true })
    expect(Math.min(...second.contracts.map((c) => c.doc.serveUntil))).toBeGreaterThan(firstEnds)

    // After the old terms: ended in the head's book and in each old worker's, whose memory is free again.
    const oldWorkers = first.contracts.map((c) => c.doc.worker)
    await waitFor('the old contracts to end on both sides', async () => {
      for (const c of first.contracts) {
        const mine = (await head.book.contracts({ cfpId: c.doc.cfpId })).find((x) => x.signed.doc.worker === c.doc.worker)
        const w = workers.find((x) => x.node.peerId.toString() === c.doc.worker)!
        const theirs = (await w.book.contracts({ cfpId: c.doc.cfpId }))[0]
        if (mine?.status !== 'ended' || theirs?.status !== 'ended') return false
      }
      return true
    }, 20_000, 200)
    for (const id of oldWorkers) {
      const w = workers.find((x) => x.node.peerId.toString() === id)!
      const held = (await w.book.committedThreads()).filter((t) => first.contracts.some((c) => c.doc.cfpId === t.cfpId))
      expect(held).toEqual([])
    }
    // The head still serves, on the renewed contracts.
    expect(head.assembly(model.sha256)?.contracts).toEqual(second.contracts)
    expect(head.state).toBe('serving')
  }, 90_000)
})
