import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { HumanMessage, AIMessage } from '@langchain/core/messages'
import { MemorySaver } from '@langchain/langgraph'
import { tool } from '@langchain/core/tools'
import { z } from 'zod'
import { LlamaCppChatModel, toolCallsFrom } from '../../agents/brains/llama-cpp.ts'
import { OfflineNegotiator } from '../../agents/brains/offline.ts'
import { buildAgentGraph, garbageIn, type BrainFailure } from '../../agents/graph.ts'
import { publicLabel } from '../../agents/brains/providers.ts'
import { generateTestModel } from '../../runtime/engine/test-model.ts'
import { tempDir } from '../helpers/mesh.ts'

describe('the llama-cpp brain: tool calls out of grammar-constrained JSON', () => {
  it('turns well-formed calls into tool calls and keeps malformed ones apart, with the reason', () => {
    const { toolCalls, invalidToolCalls } = toolCallsFrom({
      say: 'noise',
      calls: [
        { name: 'propose', args: '{"start": 0, "end": 4, "price": 2, "text": "hi"}' },
        { name: 'propose', args: '{"start": 0, "end' },
        { name: 'accept', args: '[1, 2]' },
        { name: 'accept', args: '"peer"' },
        { args: '{}' }
      ]
    })
    expect(toolCalls.map((c) => [c.name, c.args])).toEqual([['propose', { start: 0, end: 4, price: 2, text: 'hi' }]])
    expect(invalidToolCalls.map((c) => c.error)).toEqual([
      expect.stringMatching(/^arguments are not JSON: /),
      'arguments are not a JSON object but an array',
      'arguments are not a JSON object but string',
      'the call names no tool'
    ])
    // And the agent refuses such an answer as a whole rather than act on part of it.
    expect(garbageIn(new AIMessage({ content: 'noise', tool_calls: toolCalls, invalid_tool_calls: invalidToolCalls }), new Set(['propose', 'accept']), true)).toMatch(/4 malformed tool call\(s\)/)
  })
})

/**
 * A real GGUF through node-llama-cpp (its prebuilt binary, no llama.cpp build needed): generated
 * seeded-random models, so their words are noise, decoded greedily (so the same noise every run).
 * One agent turn runs on each: the model is loaded, the grammar built from the tools' names, the
 * answer parsed. Seed 7 answers a short "say" and no call: the turn ends on the LLM's own answer.
 * Seed 1 rambles past maxTokens, so its JSON never closes: the agent refuses it, and the offline
 * negotiator plays the turn, saying whom it stands in for. Noise never reaches a tool.
 */
describe('agent turns on generated GGUFs through node-llama-cpp', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  const paths: Record<number, string> = {}

  beforeAll(async () => {
    tmp = await tempDir()
    for (const seed of [1, 7]) {
      paths[seed] = join(tmp.path, `noise-${seed}.gguf`)
      await generateTestModel({ path: paths[seed], seed, nEmbd: 64, nLayer: 2, nHead: 2, nHeadKv: 1, nFf: 128, type: 'f32', contextLength: 4096 })
    }
  })

  afterAll(async () => { await tmp?.cleanup() })

  async function turn (seed: number, maxTokens: number): Promise<{ last: AIMessage, failures: BrainFailure[], called: string[] }> {
    const called: string[] = []
    const propose = tool(async () => { called.push('propose'); return 'ok' }, { name: 'propose', description: 'Offer to serve layers.', schema: z.object({ start: z.number(), end: z.number(), price: z.number(), text: z.string() }) })
    const failures: BrainFailure[] = []
    const graph = buildAgentGraph({
      model: new LlamaCppChatModel({ modelPath: paths[seed], temperature: 0, maxTokens }),
      tools: [propose],
      systemPrompt: 'You are a ClawBot.',
      perceive: async () => new HumanMessage({ id: `obs-${seed}`, content: 'A head asks for layers 0 to 3. Propose if it suits you.' }),
      checkpointer: new MemorySaver(),
      label: publicLabel(`llama-cpp:${paths[seed]}`),
      fallback: new OfflineNegotiator(),
      // Under load on 2 cores one grammar-constrained answer of this model took up to 2 minutes.
      llmTimeoutMs: 280_000,
      onFallback: (f) => { failures.push(f) }
    })
    const out = await graph.invoke({ event: { type: 'cfp', cfpId: 'c1' } }, { configurable: { thread_id: `t${seed}` } })
    return { last: out.messages.at(-1) as AIMessage, failures, called }
  }

  it('ends the turn on a well-formed answer without calls', async () => {
    const { last, failures, called } = await turn(7, 48)
    expect(failures).toEqual([])
    expect(called).toEqual([])
    expect(AIMessage.isInstance(last)).toBe(true)
    expect(typeof last.content).toBe('string')
    expect(last.content).not.toBe('')
    expect(last.content).not.toMatch(/offline negotiator/)
    expect(last.tool_calls).toEqual([])
  }, 300_000)

  it('refuses JSON that never closes and lets the offline negotiator play the turn', async () => {
    const { last, failures, called } = await turn(1, 32)
    expect(failures).toHaveLength(1)
    expect(failures[0]).toMatchObject({ kind: 'garbage', detail: expect.stringMatching(/^llama-cpp \(.*noise-1\.gguf\) answered JSON that does not parse \(\d+ characters, maxTokens 32\)/) })
    expect(called).toEqual([])
    expect(last.content).toBe('[offline negotiator, standing in for llama-cpp:noise-1.gguf, which answered garbage] I only act on market observations.')
  }, 300_000)
})
