import type { BaseChatModel } from '@langchain/core/language_models/chat_models'
import type { AgentSettings } from '../../runtime/config.ts'
import { OfflineNegotiator } from './offline.ts'
// Cheap to import: llama-cpp.ts loads node-llama-cpp (the native part) only when it first runs.
import { LlamaCppChatModel } from './llama-cpp.ts'

export interface Brain {
  model: BaseChatModel
  /** How transcripts name who wrote the agent's words. */
  label: string
}

/**
 * The brain's name as peers may read it (the fallback's words name the LLM it stands in for): no
 * endpoint address, no local file path.
 */
export function publicLabel (label: string): string {
  const [provider, ...rest] = label.split(':')
  const model = rest.join(':').replace(/@.*$/, '')
  return rest.length === 0 ? provider : `${provider}:${model.split(/[\\/]/).pop() ?? model}`
}

/**
 * One interface for every LLM: a LangChain chat model that can bind tools. Providers load lazily, so
 * an agent on the offline negotiator never imports an HTTP client or a native binary.
 */
export async function createBrain (llm: AgentSettings['llm'], env: NodeJS.ProcessEnv = process.env): Promise<Brain> {
  switch (llm.provider) {
    case 'offline':
      return { model: new OfflineNegotiator(), label: OfflineNegotiator.label }
    case 'ollama': {
      const { ChatOllama } = await import('@langchain/ollama')
      const model = llm.model ?? 'llama3.1'
      return { model: new ChatOllama({ model, baseUrl: llm.baseUrl ?? 'http://127.0.0.1:11434', temperature: llm.temperature }), label: `ollama:${model}` }
    }
    case 'openai': {
      const { ChatOpenAI } = await import('@langchain/openai')
      const model = llm.model ?? 'gpt-4o-mini'
      const apiKey = env[llm.apiKeyEnv]
      if ((apiKey === undefined || apiKey === '') && llm.baseUrl === undefined) {
        throw new Error(`the openai provider needs ${llm.apiKeyEnv} in the environment, or agent.llm.baseUrl for a keyless OpenAI-compatible endpoint`)
      }
      return {
        model: new ChatOpenAI({ model, apiKey: apiKey ?? 'none', temperature: llm.temperature, configuration: llm.baseUrl !== undefined ? { baseURL: llm.baseUrl } : undefined }),
        label: `openai:${model}${llm.baseUrl !== undefined ? `@${llm.baseUrl}` : ''}`
      }
    }
    case 'llama-cpp': {
      if (llm.model === undefined) throw new Error('the llama-cpp provider needs agent.llm.model: the path of a GGUF file')
      return { model: new LlamaCppChatModel({ modelPath: llm.model, temperature: llm.temperature }), label: `llama-cpp:${llm.model}` }
    }
  }
}
