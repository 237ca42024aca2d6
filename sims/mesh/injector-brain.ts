import type { BaseMessage } from '@langchain/core/messages'
import type { ChatResult } from '@langchain/core/outputs'
import { OfflineNegotiator } from '../../agents/brains/offline.ts'
import type { Brain } from '../../agents/brains/providers.ts'
import { INJECTIONS } from '../agents/sim-agent.ts'

/**
 * An adversary's brain for real-node runs: the offline negotiator's moves, with a prompt injection
 * put in front of the words of every message it sends. Its terms stay its own; what the simulation
 * checks is that no peer signs anything outside its owner's bounds because of the words.
 */
export class InjectorBrain extends OfflineNegotiator {
  private turns = 0

  override async _generate (messages: BaseMessage[]): Promise<ChatResult> {
    const result = await super._generate(messages)
    const message = result.generations[0]?.message as { tool_calls?: Array<{ args: Record<string, unknown> }> } | undefined
    for (const call of message?.tool_calls ?? []) {
      if (typeof call.args.text !== 'string') continue
      call.args.text = `${INJECTIONS[this.turns++ % INJECTIONS.length]} ${call.args.text}`
    }
    return result
  }
}

export function injectorBrain (): Brain {
  return { model: new InjectorBrain(), label: '[offline negotiator, adversary: prompt injector]' }
}
