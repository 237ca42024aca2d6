import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { coverage } from '../../protocols/index.ts'
import { ClawBot } from '../../agents/clawbot.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { openNode, stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { headRanges, makeTestModel, RecordingRunner, startBotMesh, type BotMesh } from './helpers.ts'

/**
 * The head crashes while its call for proposals is open (offers already in), and comes back from the
 * same home: its lifecycle snapshot, its book and its graph threads must carry the negotiation on.
 */
describe('a ClawBot restarted mid-negotiation', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let mesh: BotMesh
  let reborn: { node: MeshNode, bot: ClawBot } | undefined
  const runner = new RecordingRunner()

  beforeAll(async () => { tmp = await tempDir() })
  afterAll(async () => {
    await reborn?.bot.stop().catch(() => {})
    await reborn?.node.stop().catch(() => {})
    for (const b of mesh?.bots.slice(1) ?? []) await b.stop().catch(() => {})
    await stopAll(mesh?.nodes.slice(1) ?? [])
    await tmp.cleanup()
  })

  it('resumes from its snapshot and completes the same negotiation', async () => {
    const model = await makeTestModel(join(tmp.path, 'models'))
    mesh = await startBotMesh(join(tmp.path, 'mesh'), 4, model, {
      layersEach: 6,
      agent: (i) => (i === 0 ? { proposalWindowMs: 4000 } : {}),
      bot: (i) => ({ runner: i === 0 ? runner : undefined })
    })
    const head = mesh.bots[0]
    await head.assemble(model)
    let cfpId = ''
    await waitFor('offers to reach the head', async () => {
      const [n] = await head.book.negotiations({ role: 'head', status: ['open'] })
      cfpId = n?.cfpId ?? ''
      return n !== undefined && (await head.book.threads(n.cfpId)).length >= 2
    }, 15_000)
    expect(head.state).toBe('negotiating')
    const threadBefore = await head.graph.getState({ configurable: { thread_id: `assemble:${model.sha256}` } })
    const messagesBefore = (threadBefore.values.messages as unknown[]).length
    expect(messagesBefore).toBeGreaterThan(0)

    // Crash: no drain, no clean stop of the lifecycle.
    await head.halt()
    await mesh.nodes[0].stop()

    const node = await openNode(mesh.nodes[0].home, 'n0', { bootstrap: mesh.nodes.slice(1).flatMap((n) => n.multiaddrs()) })
    await node.start()
    const bot = await ClawBot.start(node, { runner, departAfterMs: 4000, settings: { proposalWindowMs: 4000, offerTtlMs: 20_000, maxMemoryBytes: model.layerBytes * 6 } })
    reborn = { node, bot }
    expect(bot.resumedFrom).toBe('negotiating')
    expect(bot.lifecycle.getSnapshot().context.negotiations).toContain(cfpId)
    expect(bot.state).toBe('negotiating')

    await waitFor('the resumed head to run the pipeline', () => runner.runs.length === 1, 30_000)
    const ranges = await headRanges(bot, model.sha256)
    expect(coverage(ranges, model.nLayer).complete).toBe(true)
    // The offers made before the crash were honoured: the call that was open is the one that closed the deal.
    const contracts = await bot.book.contracts({ model: model.sha256, status: 'active' })
    expect(contracts.some((c) => c.cfpId === cfpId)).toBe(true)
    // The graph's thread picked up where it was: its history survived in the checkpoint.
    const threadAfter = await bot.graph.getState({ configurable: { thread_id: `assemble:${model.sha256}` } })
    expect((threadAfter.values.messages as unknown[]).length).toBeGreaterThanOrEqual(messagesBefore)
    const deadlineThread = await bot.graph.getState({ configurable: { thread_id: `cfp:${cfpId}` } })
    expect((deadlineThread.values.messages as unknown[]).length).toBeGreaterThan(0)
    await waitFor('the head to serve', () => bot.state === 'serving', 10_000)
  })
})
