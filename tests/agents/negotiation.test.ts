import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { coverage, verifyContract } from '../../protocols/index.ts'
import { loadTranscripts, formatTranscript } from '../../agents/transcript.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { cliEnv, runCli } from '../helpers/cli.ts'
import { headRanges, makeTestModel, RecordingRunner, startBotMesh, type BotMesh } from './helpers.ts'

/**
 * Four ClawBots with the offline negotiator on loopback: one head that wants a 12-layer model served,
 * three workers that may each lend 6 layers (so any two cover the model and the third can step in).
 */
describe('ClawBots with the offline negotiator', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let mesh: BotMesh
  const runner = new RecordingRunner()
  let model: Awaited<ReturnType<typeof makeTestModel>>

  beforeAll(async () => {
    tmp = await tempDir()
    model = await makeTestModel(join(tmp.path, 'models'))
    // Floors differ per worker; the head's budget (1.5 per layer) sits between floors and opening asks.
    const floors = [1, 1.2, 0.8, 1]
    mesh = await startBotMesh(join(tmp.path, 'mesh'), 4, model, {
      layersEach: 6,
      agent: (i) => ({ floor: floors[i], budget: 18 }),
      bot: (i) => ({ runner: i === 0 ? runner : undefined })
    })
  })

  afterAll(async () => {
    for (const b of mesh?.bots ?? []) await b.stop().catch(() => {})
    await stopAll(mesh?.nodes ?? [])
    await tmp.cleanup()
  })

  it('reach signed contracts that cover every layer exactly once, then run the pipeline', async () => {
    const [head, ...workers] = mesh.bots
    await head.assemble(model)
    await waitFor('the head to run the pipeline', () => runner.runs.length === 1, 30_000)

    const ranges = await headRanges(head, model.sha256)
    expect(coverage(ranges, model.nLayer)).toMatchObject({ complete: true })
    // The runner got exactly these contracts, in layer order, each signed by both sides.
    const run = runner.runs[0]
    expect(run.model.sha256).toBe(model.sha256)
    expect(run.contracts.map((c) => [c.doc.start, c.doc.end])).toEqual(ranges.map((r) => [r.start, r.end]))
    for (const c of run.contracts) expect(await verifyContract(c)).toEqual({ ok: true })

    // Every worker's side of the bargain is in its own database too, and within its bounds.
    for (const r of ranges) {
      const worker = workers.find((w) => w.node.peerId.toString() === r.worker)!
      const theirs = await worker.book.contracts({ model: model.sha256, status: 'active' })
      expect(theirs.map((c) => [c.signed.doc.start, c.signed.doc.end, c.signed.doc.price])).toContainEqual([r.start, r.end, r.price])
      expect(r.price).toBeGreaterThanOrEqual(worker.settings.floor!)
      expect(r.end - r.start).toBeLessThanOrEqual(6)
    }
    const cost = ranges.reduce((s, r) => s + r.price * (r.end - r.start), 0)
    expect(cost).toBeLessThanOrEqual(18)
    expect(head.state).toBe('serving')

    // The transcript reads as a dialogue labelled as the offline negotiator's, with the terms beside it.
    // (Usually one call; a second one when a worker subscribed to the model's topic too late for the first.)
    const transcripts = await loadTranscripts(head.node.store)
    for (const t of transcripts) {
      expect(t.lines[0]).toMatchObject({ kind: 'cfp', fromName: 'n0' })
      expect(t.lines.every((l) => l.text.startsWith('[offline negotiator]'))).toBe(true)
    }
    expect(transcripts.flatMap((t) => t.contracts).length).toBe(ranges.length)
    const text = transcripts.map(formatTranscript).join('\n')
    expect(text).toMatch(/PROPOSE/)
    expect(text).toMatch(/Outcome: \d contracts?/)
  })

  it('print the negotiation with `clawmesh transcripts` (one CLI run: it is slow to start)', async () => {
    const home = mesh.bots[0].node.home
    const [first] = await loadTranscripts(mesh.bots[0].node.store)
    const r = await runCli(['transcripts', '--home', home, '--thread', first.cfpId.slice(0, 8), '--json'], cliEnv(tmp.path), 60_000)
    expect(r.code).toBe(0)
    const printed = JSON.parse(r.stdout) as Array<{ cfpId: string, lines: Array<{ kind: string, text: string, terms?: unknown }> }>
    expect(printed.map((t) => t.cfpId)).toEqual([first.cfpId])
    expect(printed[0].lines[0]).toMatchObject({ kind: 'cfp', text: expect.stringMatching(/^\[offline negotiator\]/) })
    expect(printed[0].lines.some((l) => l.kind === 'contract' && l.terms !== undefined)).toBe(true)
    // The readable form: who → whom, the kind, the words, and the binding terms beside them.
    const text = formatTranscript(first)
    expect(text).toMatch(/n0 → all\s+CFP\s+"\[offline negotiator\]/)
    expect(text).toMatch(/terms: layers \[\d+, \d+\) @ [\d.]+, signed by both/)
  })

  it('re-negotiate the range of a worker that leaves', async () => {
    const head = mesh.bots[0]
    const before = await headRanges(head, model.sha256)
    const leaving = before[0]
    const idx = mesh.bots.findIndex((b) => b.node.peerId.toString() === leaving.worker)
    await mesh.bots[idx].halt()
    await mesh.nodes[idx].stop()

    await waitFor('a new contract for the departed worker\'s layers', async () => {
      const now = await headRanges(head, model.sha256)
      return coverage(now, model.nLayer).complete && !now.some((r) => r.worker === leaving.worker)
    }, 30_000)
    const after = await headRanges(head, model.sha256)
    const broken = await head.book.contracts({ model: model.sha256, status: 'broken' })
    expect(broken.map((c) => c.signed.doc.worker)).toEqual([leaving.worker])
    // The departed worker's layers are now served by someone still in the mesh.
    const cover = after.filter((r) => r.start < leaving.end && leaving.start < r.end)
    expect(cover.length).toBeGreaterThan(0)
    expect(cover.every((r) => r.worker !== leaving.worker)).toBe(true)
    await waitFor('the pipeline to restart over the new contracts', () => runner.runs.length === 2, 10_000)
    expect(runner.stopped).toBe(1)
  })
})
