import type { ContractRow } from '../ledger/contracts.ts'

/**
 * What a request costs. A contract prices its slice in credits per million layer-tokens, so a token
 * through the whole pipeline costs
 *
 *   price per token = Σ over the pipeline's contracts (price × (layerEnd − layerStart) / 1e6)
 *                     + networkFeePerMTok / 1e6
 *
 * A request of T tokens is billed, in whole credits, each worker's receiptAmount (its contract's usage
 * rounded down on the running total, so at most ⌈T × layers × price / 1e6⌉) plus the fee
 * ⌊T × networkFeePerMTok / 1e6⌋. chargeFor gives that bound: every term only grows with T, so what the
 * tokens actually used are billed never exceeds the reservation made for the most tokens possible.
 */
export function pricePerToken (contracts: readonly ContractRow[], networkFeePerMTok: number): number {
  return contracts.reduce((sum, c) => sum + c.price * (c.layerEnd - c.layerStart) / 1e6, 0) + networkFeePerMTok / 1e6
}

export interface Charge {
  workers: Array<{ contract: string, worker: string, amount: number }>
  fee: number
  total: number
}

export function chargeFor (tokens: number, contracts: readonly ContractRow[], networkFeePerMTok: number): Charge {
  const workers = contracts.map((c) => ({ contract: c.id, worker: c.worker, amount: Math.ceil(tokens * (c.layerEnd - c.layerStart) * c.price / 1e6) }))
  const fee = Math.floor(tokens * networkFeePerMTok / 1e6)
  return { workers, fee, total: workers.reduce((s, w) => s + w.amount, 0) + fee }
}

/**
 * Request fields besides the messages that a chat template or llama-server renders into the prompt (tool
 * definitions, the tool choice, a response format or grammar, template arguments), or that we cannot
 * rule out costing tokens (stop strings). Their bytes count towards the bound like the messages'.
 */
const PROMPT_INPUTS = ['tools', 'tool_choice', 'functions', 'function_call', 'parallel_tool_calls', 'response_format', 'json_schema', 'grammar', 'stop', 'chat_template_kwargs'] as const

/** The preamble a template writes around tool definitions ("You have access to the following functions…"). */
const TOOLS_PREAMBLE_TOKENS = 1024

/**
 * An upper bound on a request's prompt tokens, before tokenizing: one token per byte of the JSON
 * encoding of each message and of every other input that reaches the prompt (no tokenizer yields more
 * tokens than bytes, bar a BOS) plus room for the chat template's markup. Generous on purpose: it sizes
 * the reservation, and caps the bill, so an input left out of it is served without being paid for.
 * For /v1/completions, pass one prompt at a time (see promptsOf).
 */
export function estimatePromptTokens (body: Record<string, unknown>): number {
  let extra = 0
  for (const field of PROMPT_INPUTS) if (body[field] !== undefined) extra += Buffer.byteLength(JSON.stringify(body[field]))
  if (body.tools !== undefined || body.functions !== undefined) extra += TOOLS_PREAMBLE_TOKENS
  if (Array.isArray(body.messages)) {
    return 16 + extra + body.messages.reduce((n: number, m: unknown) => n + 32 + Buffer.byteLength(JSON.stringify(m ?? '')), 0)
  }
  return 16 + extra + Buffer.byteLength(typeof body.prompt === 'string' ? body.prompt : JSON.stringify(body.prompt ?? ''))
}

/** The most prompts one /v1/completions request may carry: each is a completion of its own. */
export const MAX_PROMPTS = 16

/**
 * The prompts of a /v1/completions request, one per completion llama-server will run: a string or an
 * array of token ids (or of ids mixed with strings) is one prompt; an array of strings or of token
 * arrays is one prompt per element. Returns undefined for an empty array or one over MAX_PROMPTS.
 */
export function promptsOf (prompt: unknown): unknown[] | undefined {
  if (!Array.isArray(prompt)) return [prompt]
  if (prompt.length === 0) return undefined
  if (!prompt.every((p) => typeof p === 'string' || Array.isArray(p))) return [prompt]
  if (prompt.length > MAX_PROMPTS) return undefined
  return prompt
}
