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
  steps: Annotation<number>({ reducer: (_, next) => next, default: () => 0 })
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
  const system = new SystemMessage(deps.systemPrompt)
  const toolNode = new ToolNode(deps.tools, { handleToolErrors: true })

  const perceive = async (state: AgentStateType): Promise<Partial<AgentStateType>> => {
    if (state.event === undefined) throw new Error('a turn needs an event to perceive')
    return { messages: [await deps.perceive(state.event)], steps: 0 }
  }

  const deliberate = async (state: AgentStateType): Promise<Partial<AgentStateType>> => {
    // The system prompt is ours alone and always first; peer text only ever appears in observations.
    const reply = await bound.invoke([system, ...historyWindow(state.messages, window)])
    return { messages: [reply], steps: state.steps + 1 }
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
