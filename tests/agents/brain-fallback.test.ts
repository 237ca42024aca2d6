import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { AIMessage } from '@langchain/core/messages'
import { coverage } from '../../protocols/index.ts'
import { createBrain, publicLabel } from '../../agents/brains/providers.ts'
import { garbageIn } from '../../agents/graph.ts'
import { AgentSettingsSchema } from '../../runtime/config.ts'
import { loadTranscripts } from '../../agents/transcript.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { startOllamaStandIn, startOpenAIStandIn, type StandIn } from '../helpers/llm-stand-ins.ts'
import { proseNegotiator } from '../helpers/prose-negotiator.ts'
import { headRanges, makeTestModel, RecordingRunner, startBotMesh, type BotMesh } from './helpers.ts'

const llm = (o: Record<string, unknown>): ReturnType<typeof AgentSettingsSchema.parse>['llm'] => AgentSettingsSchema.parse({ llm: o }).llm
const TOOLS = new Set(['propose', 'accept'])
const reply = (o: ConstructorParameters<typeof AIMessage>[0]): AIMessage => new AIMessage(o)

describe('what counts as an answer the agent cannot act on', () => {
  it('refuses malformed or unknown tool calls, and silence where an observation needs an answer', () => {
    expect(garbageIn(reply({ content: 'ok', tool_calls: [{ id: '1', name: 'propose', args: { start: 0 }, type: 'tool_call' }] }), TOOLS, true)).toBeUndefined()
    expect(garbageIn(reply({ content: 'I pass on this one.' }), TOOLS, true)).toBeUndefined()
    expect(garbageIn(reply({ content: '' }), TOOLS, false)).toBeUndefined()
    expect(garbageIn(reply({ content: '' }), TOOLS, true)).toMatch(/answered nothing/)
    expect(garbageIn(reply({ content: '', invalid_tool_calls: [{ id: '1', name: 'propose', args: '{"start": ', error: 'Unexpected end of JSON input', type: 'invalid_tool_call' }] }), TOOLS, true))
      .toMatch(/1 malformed tool call\(s\), first "propose".*Unexpected end of JSON input/)
    expect(garbageIn(reply({ content: 'x', tool_calls: [{ id: '1', name: 'transfer_all_credits', args: {}, type: 'tool_call' }] }), TOOLS, true)).toMatch(/tool that does not exist: "transfer_all_credits"/)
  })

  it('names the LLM to peers without its endpoint or file path', () => {
    expect(publicLabel('openai:gpt-4o-mini@http://10.0.0.5:8080/v1')).toBe('openai:gpt-4o-mini')
    expect(publicLabel('ollama:qwen2.5:7b')).toBe('ollama:qwen2.5:7b')
    expect(publicLabel('llama-cpp:/home/me/models/secret.gguf')).toBe('llama-cpp:secret.gguf')
    expect(publicLabel('[offline negotiator]')).toBe('[offline negotiator]')
  })
})

/**
 * Brains that fail in the three ways real servers do: the head's Ollama never answers, one worker's
 * OpenAI endpoint answers an HTML error page, the other's answers a tool call whose arguments are cut
 * off. Each agent logs it, lets the offline negotiator play that turn, says so in what it sends, and
 * asks its LLM again on the next turn. The negotiation still covers the model.
 */
describe('ClawBots whose LLM hangs or answers garbage', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let mesh: BotMesh
  let ollama: StandIn, garbage: StandIn, badCall: StandIn
  const runner = new RecordingRunner()

  beforeAll(async () => {
    tmp = await tempDir()
    ollama = await startOllamaStandIn(proseNegotiator('ollama stand-in'))
    ollama.mode = 'hang'
    garbage = await startOpenAIStandIn(proseNegotiator('openai stand-in'))
    garbage.mode = 'garbage'
    badCall = await startOpenAIStandIn(proseNegotiator('openai stand-in 2'))
    badCall.mode = 'bad-call'
    const brains = [
      await createBrain(llm({ provider: 'ollama', model: 'qwen2.5:7b', baseUrl: ollama.url })),
      await createBrain(llm({ provider: 'openai', model: 'gpt-4o-mini', baseUrl: `${garbage.url}/v1` }), {}),
      await createBrain(llm({ provider: 'openai', model: 'gpt-4o-mini', baseUrl: `${badCall.url}/v1` }), {})
    ]
    const model = await makeTestModel(join(tmp.path, 'models'))
    mesh = await startBotMesh(join(tmp.path, 'mesh'), 3, model, {
      layersEach: 6,
      agent: () => ({ floor: 1, budget: 100, llm: llm({ timeoutMs: 1500 }) }),
      bot: (i) => ({ runner: i === 0 ? runner : undefined, brain: brains[i] })
    })
    await mesh.bots[0].assemble(model)
  })

  afterAll(async () => {
    for (const b of mesh?.bots ?? []) await b.stop().catch(() => {})
    await stopAll(mesh?.nodes ?? [])
    for (const s of [ollama, garbage, badCall]) await s?.stop()
    await tmp.cleanup()
  })

  it('lets the offline negotiator play those turns, says so in the transcript, and still covers the model', async () => {
    const [head, w1, w2] = mesh.bots
    await waitFor('the head to run the pipeline', () => runner.runs.length === 1, 60_000)
    const model = runner.runs[0].model
    expect(coverage(await headRanges(head, model.sha256), model.nLayer).complete).toBe(true)

    const lines = (await loadTranscripts(head.node.store)).flatMap((t) => t.lines)
    const said = (bot: typeof head): string[] => lines.filter((l) => l.from === bot.node.peerId.toString() && l.kind !== 'contract').map((l) => l.text)
    expect(said(head).length).toBeGreaterThanOrEqual(3)
    for (const t of said(head)) expect(t).toMatch(/^\[offline negotiator, standing in for ollama:qwen2\.5:7b, which did not answer in time\] /)
    for (const w of [w1, w2]) {
      expect(said(w).length).toBeGreaterThan(0)
      for (const t of said(w)) expect(t).toMatch(/^\[offline negotiator, standing in for openai:gpt-4o-mini, which answered garbage\] /)
    }
    // Nothing the broken brains said reached the market, and no endpoint address leaked into it.
    expect(lines.some((l) => l.text.includes('stand-in') || l.text.includes('127.0.0.1'))).toBe(false)
  })

  it('logs every fallback with the reason, and asks the LLM again on the next turn', async () => {
    const decisions = async (bot: (typeof mesh.bots)[number]): Promise<Array<{ summary: string, detail: { kind: string, detail: string } }>> =>
      (await bot.node.activity.list()).filter((e) => e.kind === 'decision') as never
    const [head, w1, w2] = mesh.bots
    const h = await decisions(head)
    expect(h.length).toBeGreaterThanOrEqual(2)
    expect(h[0].summary).toBe('LLM timed out; the offline negotiator played the turn')
    expect(h[0].detail).toMatchObject({ kind: 'timeout', detail: expect.stringMatching(/did not answer within 1500 ms/) })
    expect((await decisions(w1))[0].detail).toMatchObject({ kind: 'garbage' })
    expect((await decisions(w2))[0].detail).toMatchObject({ kind: 'garbage', detail: expect.stringMatching(/1 malformed tool call\(s\), first "[a-z_]+" with arguments [^]*not valid JSON/) })
    // One request per turn: a failure does not make the agent give up on its LLM.
    expect(ollama.bodies.length).toBe(h.length)
    expect(ollama.bodies.length).toBeGreaterThanOrEqual(2)
    expect(garbage.bodies.length).toBeGreaterThanOrEqual(2)
    expect(badCall.bodies.length).toBeGreaterThanOrEqual(2)
  })
})
