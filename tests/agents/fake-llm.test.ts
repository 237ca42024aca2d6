import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { SystemMessage } from '@langchain/core/messages'
import { coverage } from '../../protocols/index.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { headRanges, makeTestModel, RecordingRunner, startBotMesh, type BotMesh } from './helpers.ts'
import { scriptedLlm } from './scripted-llm.ts'

/** The same mesh, but every agent's decisions come from LangChain's tool-calling fake model. */
describe('ClawBots driven by a tool-calling LLM (LangChain fake model)', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let mesh: BotMesh
  const runner = new RecordingRunner()
  const llms = Array.from({ length: 4 }, () => scriptedLlm())

  beforeAll(async () => {
    tmp = await tempDir()
    const model = await makeTestModel(join(tmp.path, 'models'))
    mesh = await startBotMesh(join(tmp.path, 'mesh'), 4, model, {
      layersEach: 4,
      agent: () => ({ floor: 1, budget: 100 }),
      bot: (i) => ({ runner: i === 0 ? runner : undefined, brain: { model: llms[i], label: 'fake-llm' } })
    })
    await mesh.bots[0].assemble(model)
  })

  afterAll(async () => {
    for (const b of mesh?.bots ?? []) await b.stop().catch(() => {})
    await stopAll(mesh?.nodes ?? [])
    await tmp.cleanup()
  })

  it('reach contracts covering every layer through tool calls checked by policy', async () => {
    const [head] = mesh.bots
    await waitFor('the head to run the pipeline', () => runner.runs.length === 1, 30_000)
    const model = runner.runs[0].model
    const ranges = await headRanges(head, model.sha256)
    expect(coverage(ranges, model.nLayer).complete).toBe(true)
    expect(ranges.map((r) => r.end - r.start)).toEqual([4, 4, 4])

    // Every move was a tool call the LLM made, logged with its outcome.
    const headTools = (await head.records.actions()).map((a) => `${a.tool}:${a.outcome}`)
    expect(headTools).toContain('publish_cfp:done')
    expect(headTools.filter((t) => t === 'sign_contract:done' || t === 'accept:done').length).toBeGreaterThanOrEqual(3)
    for (const w of mesh.bots.slice(1)) {
      expect((await w.records.actions()).map((a) => a.tool)).toContain('propose')
    }
    // The LLM saw our system prompt first, and the market only in observations.
    for (const call of llms[1].calls) {
      expect(SystemMessage.isInstance(call.messages[0])).toBe(true)
      expect(call.messages.slice(1).some((m) => SystemMessage.isInstance(m))).toBe(false)
    }
  })

  it('checkpoint each negotiation as a thread in the agent\'s home', async () => {
    const worker = mesh.bots[1]
    const [contract] = await worker.book.contracts({ worker: worker.node.peerId.toString() })
    const state = await worker.graph.getState({ configurable: { thread_id: `cfp:${contract.cfpId}` } })
    const kinds = (state.values.messages as Array<{ getType: () => string }>).map((m) => m.getType())
    // perceive → deliberate (propose) → act → deliberate, then later turns (accept/sign) on the same thread.
    expect(kinds.slice(0, 4)).toEqual(['human', 'ai', 'tool', 'ai'])
    expect(kinds.filter((k) => k === 'human').length).toBeGreaterThanOrEqual(2)
  })
})
