import { randomUUID } from 'node:crypto'
import { BaseChatModel } from '@langchain/core/language_models/chat_models'
import { AIMessage, SystemMessage, ToolMessage, type BaseMessage, type InvalidToolCall, type ToolCall } from '@langchain/core/messages'
import type { ChatResult } from '@langchain/core/outputs'
import type { StructuredToolInterface } from '@langchain/core/tools'
import { toJsonSchema } from '@langchain/core/utils/json_schema'

type NodeLlama = typeof import('node-llama-cpp')

/**
 * A local GGUF through node-llama-cpp, as a LangChain chat model with tool calling. node-llama-cpp
 * has no LangChain binding of its own, so tool calls are obtained by constraining the output with a
 * JSON-schema grammar: {"say": "...", "calls": [{"name": "...", "args": "<JSON>"}]}. The grammar
 * guarantees the shape; the tools' own zod schemas then validate the arguments.
 */
export class LlamaCppChatModel extends BaseChatModel {
  private tools: StructuredToolInterface[] = []
  private loaded: Promise<{ mod: NodeLlama, llama: Awaited<ReturnType<NodeLlama['getLlama']>>, model: unknown }> | undefined

  constructor (private readonly opts: { modelPath: string, temperature: number, maxTokens?: number }) {
    super({})
  }

  _llmType (): string {
    return 'clawmesh-llama-cpp'
  }

  override bindTools (tools: StructuredToolInterface[]): this {
    const bound = new LlamaCppChatModel(this.opts) as this
    bound.tools = tools
    bound.loaded = this.load()
    return bound
  }

  private load (): NonNullable<LlamaCppChatModel['loaded']> {
    this.loaded ??= (async () => {
      const mod = await import('node-llama-cpp')
      const llama = await mod.getLlama({ build: 'never' })
      const model = await llama.loadModel({ modelPath: this.opts.modelPath })
      return { mod, llama, model }
    })()
    return this.loaded
  }

  async _generate (messages: BaseMessage[], options: this['ParsedCallOptions']): Promise<ChatResult> {
    const { mod, llama, model } = await this.load()
    const names = this.tools.map((t) => t.name)
    const grammar = await llama.createGrammarForJsonSchema({
      type: 'object',
      properties: {
        say: { type: 'string' },
        calls: { type: 'array', items: { type: 'object', properties: { name: names.length > 0 ? { enum: names } : { type: 'string' }, args: { type: 'string' } } } }
      }
    } as const)
    const ctx = await (model as { createContext: (o: object) => Promise<{ getSequence: () => unknown, dispose: () => Promise<void> }> }).createContext({ contextSize: 4096 })
    try {
      const system = messages.filter((m) => SystemMessage.isInstance(m)).map((m) => String(m.content)).join('\n')
      const toolDoc = this.tools.map((t) => `- ${t.name}: ${t.description} Arguments (JSON, as a string): ${JSON.stringify(toJsonSchema(t.schema as never))}`).join('\n')
      const session = new mod.LlamaChatSession({ contextSequence: ctx.getSequence() as never, systemPrompt: `${system}\n\nTools:\n${toolDoc}\nAnswer with JSON: {"say": what you think, "calls": tool calls, each {"name", "args"} with args a JSON string}.` })
      const transcript = messages.filter((m) => !SystemMessage.isInstance(m)).map((m) => ToolMessage.isInstance(m) ? `Tool result: ${String(m.content)}` : `${m.getType()}: ${String(m.content)}`).join('\n\n')
      const answer = await session.prompt(transcript, { grammar, temperature: this.opts.temperature, maxTokens: this.opts.maxTokens ?? 512, signal: options.signal })
      let parsed: GrammarAnswer
      try {
        parsed = grammar.parse(answer) as GrammarAnswer
      } catch (err) {
        // The grammar guarantees the shape only of a complete answer: one cut at maxTokens does not parse.
        throw new SyntaxError(`llama-cpp (${this.opts.modelPath}) answered JSON that does not parse (${answer.length} characters, maxTokens ${this.opts.maxTokens ?? 512}): ${(err as Error).message}`)
      }
      const { toolCalls, invalidToolCalls } = toolCallsFrom(parsed)
      // A tool result means the turn's work is done: do not loop on tool calls forever.
      const last = messages[messages.length - 1]
      const afterTools = last !== undefined && ToolMessage.isInstance(last)
      const message = new AIMessage({ id: randomUUID(), content: parsed.say ?? '', tool_calls: afterTools ? [] : toolCalls, invalid_tool_calls: afterTools ? [] : invalidToolCalls })
      return { generations: [{ text: String(message.content), message }] }
    } finally {
      await ctx.dispose()
    }
  }
}

/** What the grammar makes the model write. */
export interface GrammarAnswer {
  say?: string
  calls?: Array<{ name?: string, args?: string }>
}

/**
 * The model's calls as LangChain tool calls. A call whose arguments are not a JSON object, or that
 * names no tool, is kept apart as an invalid tool call with the reason, not dropped: the agent then
 * refuses the whole answer (agents/graph.ts) rather than act on part of it.
 */
export function toolCallsFrom (parsed: GrammarAnswer): { toolCalls: ToolCall[], invalidToolCalls: InvalidToolCall[] } {
  const toolCalls: ToolCall[] = []
  const invalidToolCalls: InvalidToolCall[] = []
  for (const c of parsed.calls ?? []) {
    const id = randomUUID()
    const bad = (error: string): void => { invalidToolCalls.push({ id, name: c.name, args: c.args, error, type: 'invalid_tool_call' }) }
    if (c.name === undefined || c.name === '') { bad('the call names no tool'); continue }
    let args: unknown
    try {
      args = JSON.parse(c.args ?? '{}')
    } catch (err) {
      bad(`arguments are not JSON: ${(err as Error).message}`)
      continue
    }
    if (typeof args !== 'object' || args === null || Array.isArray(args)) { bad(`arguments are not a JSON object but ${Array.isArray(args) ? 'an array' : args === null ? 'null' : typeof args}`); continue }
    toolCalls.push({ id, name: c.name, args: args as Record<string, unknown>, type: 'tool_call' })
  }
  return { toolCalls, invalidToolCalls }
}
