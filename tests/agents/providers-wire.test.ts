import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { ChatOpenAI } from '@langchain/openai'
import { HumanMessage, SystemMessage, type AIMessageChunk } from '@langchain/core/messages'
import { coverage } from '../../protocols/index.ts'
import { createBrain } from '../../agents/brains/providers.ts'
import { AgentSettingsSchema } from '../../runtime/config.ts'
import { loadTranscripts } from '../../agents/transcript.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { startOllamaStandIn, startOpenAIStandIn, type StandIn } from '../helpers/llm-stand-ins.ts'
import { proseNegotiator } from '../helpers/prose-negotiator.ts'
import { headRanges, makeTestModel, RecordingRunner, startBotMesh, type BotMesh } from './helpers.ts'

const llm = (o: Record<string, unknown>): ReturnType<typeof AgentSettingsSchema.parse>['llm'] => AgentSettingsSchema.parse({ llm: o }).llm

/**
 * A whole negotiation between real ClawBots on real libp2p nodes whose brains are the real LangChain
 * providers made by createBrain, talking over HTTP to stand-ins that speak Ollama's and OpenAI's wire
 * formats: the head through @langchain/ollama (NDJSON stream), the workers through @langchain/openai
 * (one JSON answer each). OpenAI's streaming format (server-sent events) is checked on its own below:
 * ChatOpenAI's invoke() with `streaming: true` hangs on a closed network (it estimates token counts
 * with tiktoken encodings fetched from the internet), which is why createBrain does not stream.
 */
describe('ClawBots whose brains talk to Ollama and OpenAI over their wire formats', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let mesh: BotMesh
  let ollama: StandIn, openai: StandIn, openaiSse: StandIn
  const runner = new RecordingRunner()

  beforeAll(async () => {
    tmp = await tempDir()
    ollama = await startOllamaStandIn(proseNegotiator('ollama stand-in'))
    openai = await startOpenAIStandIn(proseNegotiator('openai stand-in'))
    openaiSse = await startOpenAIStandIn(proseNegotiator('openai stand-in 2'))
    const brains = [
      await createBrain(llm({ provider: 'ollama', model: 'qwen2.5:7b', baseUrl: ollama.url })),
      await createBrain(llm({ provider: 'openai', model: 'gpt-4o-mini', baseUrl: `${openai.url}/v1` }), {}),
      await createBrain(llm({ provider: 'openai', model: 'gpt-4o-mini', baseUrl: `${openaiSse.url}/v1` }), {})
    ]
    const model = await makeTestModel(join(tmp.path, 'models'))
    mesh = await startBotMesh(join(tmp.path, 'mesh'), 3, model, {
      layersEach: 6,
      agent: () => ({ floor: 1, budget: 100 }),
      bot: (i) => ({ runner: i === 0 ? runner : undefined, brain: brains[i] })
    })
    await mesh.bots[0].assemble(model)
  })

  afterAll(async () => {
    for (const b of mesh?.bots ?? []) await b.stop().catch(() => {})
    await stopAll(mesh?.nodes ?? [])
    for (const s of [ollama, openai, openaiSse]) await s?.stop()
    await tmp.cleanup()
  })

  it('reach contracts over every layer, every move a tool call that crossed the wire', async () => {
    const [head, w1, w2] = mesh.bots
    await waitFor('the head to run the pipeline', () => runner.runs.length === 1, 45_000)
    const model = runner.runs[0].model
    const ranges = await headRanges(head, model.sha256)
    expect(coverage(ranges, model.nLayer).complete).toBe(true)
    expect(ranges.map((r) => r.worker).sort()).toEqual([w1, w2].map((w) => w.node.peerId.toString()).sort())

    // Each brain spoke through its own server, and the words peers saw are the ones those servers wrote.
    const lines = (await loadTranscripts(head.node.store)).flatMap((t) => t.lines)
    const said = (bot: typeof head): string[] => lines.filter((l) => l.from === bot.node.peerId.toString() && l.kind !== 'contract').map((l) => l.text)
    expect(said(head).length).toBeGreaterThanOrEqual(3)
    for (const t of said(head)) expect(t).toMatch(/^\[ollama stand-in\] /)
    for (const t of said(w1)) expect(t).toMatch(/^\[openai stand-in\] /)
    for (const t of said(w2)) expect(t).toMatch(/^\[openai stand-in 2\] /)
    expect(said(w1).length).toBeGreaterThan(0)
    expect(said(w2).length).toBeGreaterThan(0)
    expect(lines.some((l) => l.text.includes('standing in for'))).toBe(false)
    expect((await head.records.actions()).map((a) => `${a.tool}:${a.outcome}`)).toEqual(expect.arrayContaining(['publish_cfp:done', 'sign_contract:done']))
  })

  it('sent the tools, the system prompt first, and the tool results back in each format', async () => {
    const toolNames = ['publish_cfp', 'propose', 'counter', 'accept', 'reject', 'sign_contract']
    for (const s of [ollama, openai, openaiSse]) {
      expect(s.requests.length).toBeGreaterThanOrEqual(2)
      for (const r of s.requests) {
        expect(r.tools.map((t) => t.name)).toEqual(expect.arrayContaining(toolNames))
        expect(r.messages[0].role).toBe('system')
        expect(r.messages[0].content).toMatch(/You are \S+, a ClawBot/)
      }
      // A tool result follows the assistant message that called it.
      const after = s.requests.find((r) => r.messages.at(-1)?.role === 'tool')
      expect(after, 'no request carried a tool result').toBeDefined()
      const called = after!.messages.filter((m) => m.role === 'assistant').at(-1)
      expect(called?.toolCalls?.length).toBeGreaterThan(0)
    }
    // Ollama: JSON-schema parameters, arguments as objects, NDJSON streamed.
    expect(ollama.requests.every((r) => r.stream)).toBe(true)
    expect(ollama.requests[0].tools.find((t) => t.name === 'publish_cfp')?.parameters).toMatchObject({ type: 'object', properties: { start: {}, end: {}, budget: {}, text: {} } })
    // OpenAI: a tool result names the id of the call it answers.
    for (const s of [openai, openaiSse]) {
      const after = s.requests.find((r) => r.messages.at(-1)?.role === 'tool')!
      const ids = after.messages.filter((m) => m.role === 'assistant').at(-1)!.toolCalls!.map((c) => c.id)
      expect(ids).toContain(after.messages.at(-1)!.toolCallId)
      expect(ids.every((id) => id?.startsWith('call_') === true)).toBe(true)
    }
    expect(openai.requests.every((r) => !r.stream)).toBe(true)
    expect(openai.bodies[0]).toMatchObject({ model: 'gpt-4o-mini' })
    expect(ollama.bodies[0]).toMatchObject({ model: 'qwen2.5:7b' })
  })
  it('streams tool calls as server-sent events that ChatOpenAI puts back together', async () => {
    const sse = await startOpenAIStandIn(() => ({ content: 'I can serve these layers.', calls: [{ name: 'propose', args: { start: 0, end: 6, price: 1.5, text: 'Six layers at 1.5.' } }, { name: 'reject', args: { peer: 'n9', reason: 'no room', text: 'Sorry.' } }] }))
    try {
      const tools = ['propose', 'reject'].map((name) => ({ type: 'function' as const, function: { name, description: name, parameters: { type: 'object', properties: {} } } }))
      const model = new ChatOpenAI({ model: 'gpt-4o-mini', apiKey: 'sk-test', configuration: { baseURL: `${sse.url}/v1` } }).bindTools(tools)
      let whole: AIMessageChunk | undefined
      let chunks = 0
      for await (const chunk of await model.stream([new SystemMessage('You are a ClawBot.'), new HumanMessage('Offer layers 0 to 5.')])) {
        whole = whole === undefined ? chunk : whole.concat(chunk)
        chunks++
      }
      expect(sse.requests[0].stream).toBe(true)
      expect(chunks).toBeGreaterThan(6)
      expect(whole?.content).toBe('I can serve these layers.')
      expect(whole?.tool_calls?.map((c) => [c.name, c.args])).toEqual([
        ['propose', { start: 0, end: 6, price: 1.5, text: 'Six layers at 1.5.' }],
        ['reject', { peer: 'n9', reason: 'no room', text: 'Sorry.' }]
      ])
      expect(whole?.invalid_tool_calls ?? []).toEqual([])
    } finally {
      await sse.stop()
    }
  })
})
