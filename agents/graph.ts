import { Annotation, END, MessagesAnnotation, START, StateGraph, type BaseCheckpointSaver } from '@langchain/langgraph'
import { ToolNode } from '@langchain/langgraph/prebuilt'
import { AIMessage, HumanMessage, SystemMessage, type BaseMessage } from '@langchain/core/messages'
import type { BaseChatModel } from '@langchain/core/language_models/chat_models'
import type { StructuredToolInterface } from '@langchain/core/tools'
import type { AgentEvent } from './observation.ts'

export const AgentState = Annotation.Root({
  ...MessagesAnnotation.spec,
  /** Why this turn runs; perceive turns it into an observation. */
  event: Annotation<AgentEvent | undefined>({ reducer: (_, next) => next, default: () => undefined }),
  /** LLM calls in this turn, to stop a model that never stops calling tools. */
  steps: Annotation<number>({ reducer: (_, next) => next, default: () => 0 }),
  /** Why the offline negotiator plays the rest of this turn (the LLM failed in it); undefined while the LLM plays. */
  fallback: Annotation<string | undefined>({ reducer: (_, next) => next, default: () => undefined })
})
export type AgentStateType = typeof AgentState.State

export interface GraphDeps {
  model: BaseChatModel
  tools: StructuredToolInterface[]
  systemPrompt: string
  /** Looks at the mesh, the machine and the market and describes the event (peer text wrapped). */
  perceive (event: AgentEvent): Promise<HumanMessage>
  checkpointer: BaseCheckpointSaver
  /** LLM calls allowed per turn (each may be followed by one round of tool calls). */
  maxSteps?: number
  /** Messages of history sent to the LLM, besides the system prompt. */
  historyWindow?: number
  /** How transcripts name the LLM (used in the fallback's words). */
  label?: string
  /**
   * Plays the turn when the LLM throws, answers garbage or does not answer within llmTimeoutMs: the
   * offline negotiator, which needs no LLM. Without it such a turn fails.
   */
  fallback?: BaseChatModel
  /** How long one LLM call may take (default 90 s). */
  llmTimeoutMs?: number
  /** Told each time the fallback takes over a turn: why, in full (the agent logs it). */
  onFallback?: (why: BrainFailure) => void
}

/** Why an LLM's answer was not used. */
export interface BrainFailure {
  kind: 'timeout' | 'garbage' | 'error'
  /** The full story, for the owner's log. */
  detail: string
}

const OFFLINE_PREFIX = '[offline negotiator]'

/**
 * An LLM's reply the agent cannot act on, and why; undefined when it can. `toObservation`: the reply
 * answers an observation (not tool results), where saying nothing at all is no answer: some clients
 * (ollama-js) skip lines that do not parse, so a garbage response arrives as an empty message.
 */
export function garbageIn (reply: BaseMessage, tools: ReadonlySet<string>, toObservation = false): string | undefined {
  if (!AIMessage.isInstance(reply)) return `answered a ${reply.getType()} message instead of an AI message`
  const invalid = reply.invalid_tool_calls ?? []
  if (invalid.length > 0) {
    const c = invalid[0]
    return `${invalid.length} malformed tool call(s), first ${JSON.stringify(c.name ?? null)} with arguments ${JSON.stringify(String(c.args ?? '')).slice(0, 120)}: ${c.error ?? 'not valid JSON'}`
  }
  for (const c of reply.tool_calls ?? []) {
    if (!tools.has(c.name)) return `called a tool that does not exist: ${JSON.stringify(c.name).slice(0, 80)} (tools: ${[...tools].join(', ')})`
    if (typeof c.args !== 'object' || c.args === null || Array.isArray(c.args)) return `called ${c.name} with arguments that are not a JSON object: ${JSON.stringify(c.args).slice(0, 120)}`
  }
  if (typeof reply.content !== 'string' && !Array.isArray(reply.content)) return `answered content of type ${typeof reply.content}`
  if (toObservation && (reply.tool_calls ?? []).length === 0 && reply.text.trim() === '') return 'answered nothing: no words and no tool calls'
  return undefined
}

/** The fallback's words say who stands in for whom, in the thread and in every message peers see. */
function relabel (reply: AIMessage, label: string): AIMessage {
  const swap = (text: string): string => text.startsWith(OFFLINE_PREFIX) ? label + text.slice(OFFLINE_PREFIX.length) : `${label} ${text}`
  return new AIMessage({
    id: reply.id,
    content: typeof reply.content === 'string' ? swap(reply.content) : reply.content,
    tool_calls: (reply.tool_calls ?? []).map((c) => typeof c.args.text === 'string' ? { ...c, args: { ...c.args, text: swap(c.args.text) } } : c)
  })
}

class BrainTimeout extends Error {}
class GarbageReply extends Error {}

function classify (err: unknown): BrainFailure['kind'] {
  if (err instanceof BrainTimeout) return 'timeout'
  // A response that does not parse (HTML, truncated NDJSON or SSE, wrong JSON shape) surfaces as one of these.
  if (err instanceof SyntaxError || err instanceof TypeError) return 'garbage'
  return 'error'
}

/**
 * The last `n` messages, starting at an observation so that no tool result is cut from its call.
 * Older turns stay in the checkpoint (and the transcript), they just stop costing context.
 */
export function historyWindow (messages: BaseMessage[], n: number): BaseMessage[] {
  if (messages.length <= n) return messages
  let start = messages.length - n
  while (start < messages.length && !HumanMessage.isInstance(messages[start])) start++
  return messages.slice(start)
}

/**
 * One ClawBot's mind: perceive → deliberate (the LLM) → act (the tools, each checked by policy) →
 * deliberate … until the LLM stops calling tools or runs out of steps. Each negotiation is a thread,
 * checkpointed after every node, so a restart resumes the conversation where it was.
 */
// The return type is LangGraph's compiled graph, whose full generic type is best left inferred.
// eslint-disable-next-line @typescript-eslint/explicit-function-return-type
export function buildAgentGraph (deps: GraphDeps) {
  const maxSteps = deps.maxSteps ?? 4
  const window = deps.historyWindow ?? 40
  const bound = deps.model.bindTools?.(deps.tools)
  if (bound === undefined) throw new Error(`chat model ${deps.model._llmType()} cannot call tools`)
  const fallback = deps.fallback?.bindTools?.(deps.tools)
  if (deps.fallback !== undefined && fallback === undefined) throw new Error(`fallback chat model ${deps.fallback._llmType()} cannot call tools`)
  const toolNames = new Set(deps.tools.map((t) => t.name))
  const timeoutMs = deps.llmTimeoutMs ?? 90_000
  const label = deps.label ?? deps.model._llmType()
  const system = new SystemMessage(deps.systemPrompt)
  const toolNode = new ToolNode(deps.tools, { handleToolErrors: true })

  const perceive = async (state: AgentStateType): Promise<Partial<AgentStateType>> => {
    if (state.event === undefined) throw new Error('a turn needs an event to perceive')
    return { messages: [await deps.perceive(state.event)], steps: 0, fallback: undefined }
  }

  /** One LLM call, given up on after timeoutMs (the request is aborted) and checked before anything acts on it. */
  const ask = async (messages: BaseMessage[]): Promise<AIMessage> => {
    const abort = new AbortController()
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        reject(new BrainTimeout(`${label} did not answer within ${timeoutMs} ms`))
        abort.abort()
      }, timeoutMs)
    })
    try {
      const reply = await Promise.race([bound.invoke(messages, { signal: abort.signal }), late])
      const wrong = garbageIn(reply, toolNames, HumanMessage.isInstance(messages[messages.length - 1]))
      if (wrong !== undefined) throw new GarbageReply(`${label} ${wrong}`)
      return reply as AIMessage
    } finally {
      clearTimeout(timer)
    }
  }

  const deliberate = async (state: AgentStateType): Promise<Partial<AgentStateType>> => {
    // The system prompt is ours alone and always first; peer text only ever appears in observations.
    const messages = [system, ...historyWindow(state.messages, window)]
    if (fallback === undefined) return { messages: [await ask(messages)], steps: state.steps + 1 }
    let why = state.fallback
    if (why === undefined) {
      try {
        return { messages: [await ask(messages)], steps: state.steps + 1 }
      } catch (err) {
        const kind = err instanceof GarbageReply ? 'garbage' : classify(err)
        deps.onFallback?.({ kind, detail: (err as Error).message })
        why = kind === 'timeout' ? 'which did not answer in time' : kind === 'garbage' ? 'which answered garbage' : 'which failed'
      }
    }
    // The rest of this turn is the offline negotiator's; it reads the structured observation, not the failed reply.
    const reply = await fallback.invoke(messages) as AIMessage
    return { messages: [relabel(reply, `[offline negotiator, standing in for ${label}, ${why}]`)], steps: state.steps + 1, fallback: why }
  }

  const route = (state: AgentStateType): 'act' | typeof END => {
    const last = state.messages[state.messages.length - 1]
    const calls = last !== undefined && AIMessage.isInstance(last) ? last.tool_calls ?? [] : []
    return calls.length > 0 && state.steps <= maxSteps ? 'act' : END
  }

  return new StateGraph(AgentState)
    .addNode('perceive', perceive)
    .addNode('deliberate', deliberate)
    .addNode('act', toolNode)
    .addEdge(START, 'perceive')
    .addEdge('perceive', 'deliberate')
    .addConditionalEdges('deliberate', route, ['act', END])
    .addEdge('act', 'deliberate')
    .compile({ checkpointer: deps.checkpointer })
}

export type AgentGraph = ReturnType<typeof buildAgentGraph>
