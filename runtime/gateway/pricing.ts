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
 * An upper bound on a request's prompt tokens, before tokenizing: one token per byte of the JSON
 * encoding of each message (no tokenizer yields more tokens than bytes, bar a BOS) plus room for the
 * chat template's markup. Generous on purpose: it only sizes the reservation, never the bill.
 */
export function estimatePromptTokens (body: { messages?: unknown, prompt?: unknown }): number {
  if (Array.isArray(body.messages)) {
    return 16 + body.messages.reduce((n: number, m: unknown) => n + 32 + Buffer.byteLength(JSON.stringify(m ?? '')), 0)
  }
  return 16 + Buffer.byteLength(typeof body.prompt === 'string' ? body.prompt : JSON.stringify(body.prompt ?? ''))
}
