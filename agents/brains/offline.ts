import { randomUUID } from 'node:crypto'
import { BaseChatModel } from '@langchain/core/language_models/chat_models'
import { AIMessage, ToolMessage, type BaseMessage } from '@langchain/core/messages'
import type { ChatResult } from '@langchain/core/outputs'
import { observationOf } from '../observation.ts'
import { decide, OFFLINE_LABEL } from './strategy.ts'

/**
 * The built-in negotiator: a chat model that needs no LLM, so the demo and the tests run offline. It
 * answers an observation with tool calls chosen by a real pricing strategy (strategy.ts) and plain
 * sentences labelled "[offline negotiator]", and answers tool results with a one-line summary, which
 * ends the agent's turn. It reads the structured observation only, never peers' text.
 */
export class OfflineNegotiator extends BaseChatModel {
  static readonly label = OFFLINE_LABEL

  constructor () {
    super({})
  }

  _llmType (): string {
    return 'clawmesh-offline-negotiator'
  }

  /** The tools are the agent's; the strategy names them itself. */
  override bindTools (): this {
    return this
  }

  async _generate (messages: BaseMessage[]): Promise<ChatResult> {
    const last = messages[messages.length - 1]
    let message: AIMessage
    if (last !== undefined && ToolMessage.isInstance(last)) {
      const results: string[] = []
      for (let i = messages.length - 1; i >= 0 && ToolMessage.isInstance(messages[i]); i--) results.unshift(String(messages[i].content))
      message = new AIMessage({ id: randomUUID(), content: `${OFFLINE_LABEL} Done. ${results.join(' ')}`.slice(0, 2000) })
    } else {
      const o = last === undefined ? undefined : observationOf(last)
      if (o === undefined) {
        message = new AIMessage({ id: randomUUID(), content: `${OFFLINE_LABEL} I only act on market observations.` })
      } else {
        const { moves, note } = decide(o)
        message = new AIMessage({
          id: randomUUID(),
          content: note,
          tool_calls: moves.map((m) => ({ id: randomUUID(), name: m.tool, args: m.args, type: 'tool_call' as const }))
        })
      }
    }
    return { generations: [{ text: String(message.content), message }] }
  }
}
