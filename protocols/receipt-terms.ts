import { MAX_CONTRACT_TERM_MS, contractId, verifyContract, type SignedContract } from './market.ts'
import { ReceiptInvalid, type Receipt } from './receipts.ts'
import { MAX_CLOCK_SKEW_MS } from './version.ts'

/**
 * What a receipt means, checked by a node that did not take part in it. Two valid signatures only say
 * that the head and the worker agree; both may be one attacker's keys. So a bystander books a receipt
 * only under a contract it can verify (signed by both, the same parties, model, layer count and price
 * as the receipt), dated within the contract's term and not ahead of the bystander's clock, and for no
 * more tokens than the contract could have served by then.
 *
 * The bound on tokens: a contract's term lasts at most MAX_CONTRACT_TERM_MS (calls for proposals
 * cannot ask for more), so its serving started no earlier than serveUntil − MAX_CONTRACT_TERM_MS; by
 * a receipt's ts it can have billed at most burstTokens + maxTokensPerSecond × the seconds since then,
 * over all its receipts. Honest contracts stay far below it (an hour-long contract has 23 h of slack);
 * a contract an attacker signs with itself can book at most that many tokens, at its own price.
 */
export const RECEIPT_PLAUSIBILITY = {
  /** Prompt and generated tokens per second through one worker's layers: well above llama.cpp on one GPU. */
  maxTokensPerSecond: 10_000,
  /** Tokens billable before any time has passed: a large first request (16 prompts of a long context). */
  burstTokens: 1_000_000,
  maxTermMs: MAX_CONTRACT_TERM_MS,
  /** How far a receipt's ts may run ahead of the bystander's clock. */
  maxClockSkewMs: MAX_CLOCK_SKEW_MS
} as const

export type ReceiptRefusal =
  | 'malformed' | 'signature' | 'no-contract' | 'contract-signature' | 'contract-mismatch'
  | 'from-future' | 'before-term' | 'after-term' | 'implausible-tokens' | 'conflict'

export const RECEIPT_REFUSALS: readonly ReceiptRefusal[] = [
  'malformed', 'signature', 'no-contract', 'contract-signature', 'contract-mismatch',
  'from-future', 'before-term', 'after-term', 'implausible-tokens', 'conflict'
]

/** A receipt a bystander will not book, and why (the reason is counted by whoever heard it). */
export class ReceiptRefused extends ReceiptInvalid {
  constructor (readonly reason: ReceiptRefusal, detail: string) {
    super(`${reason}: ${detail}`)
    this.name = 'ReceiptRefused'
  }
}

/** The most tokens a contract ending at serveUntil can have billed, over all its receipts, by `ts`. */
export function plausibleTokens (serveUntil: number, ts: number): number {
  const { maxTokensPerSecond, burstTokens, maxTermMs } = RECEIPT_PLAUSIBILITY
  const served = Math.max(0, Math.min(ts, serveUntil) - (serveUntil - maxTermMs))
  return burstTokens + Math.floor(served / 1000 * maxTokensPerSecond)
}

export interface HeldOnContract {
  /** Tokens of the contract's other receipts this node already booked. */
  tokens: number
  /** The latest ts among them (0 if none). */
  latestTs: number
}

/**
 * Throws ReceiptRefused unless the receipt (whose own signatures were already verified) is one its
 * contract allows. `held` is what the bystander booked on the contract before: receipts may arrive in
 * any order, so the bound applies to everything held plus this one, at the latest ts among them, and a
 * `prior` that understates what came before does not reset the count.
 */
export async function checkReceiptTerms (r: Receipt, contract: SignedContract, held: HeldOnContract, now: number): Promise<void> {
  const what = `${r.contract}#${r.seq}`
  const v = await verifyContract(contract)
  if (!v.ok) throw new ReceiptRefused('contract-signature', `contract of ${what}: ${v.reason}`)
  const d = contract.doc
  if (contractId(d) !== r.contract) throw new ReceiptRefused('contract-mismatch', `${what} bills contract ${r.contract}, the attached one is ${contractId(d)}`)
  const mismatch = [
    d.head !== r.head && 'head', d.worker !== r.worker && 'worker', d.model !== r.modelHash && 'model',
    d.end - d.start !== r.layers && 'layers', d.price !== r.price && 'price'
  ].filter(Boolean)
  if (mismatch.length > 0) throw new ReceiptRefused('contract-mismatch', `${what} differs from its contract in ${mismatch.join(', ')}`)
  if (r.ts > now + RECEIPT_PLAUSIBILITY.maxClockSkewMs) throw new ReceiptRefused('from-future', `${what} is dated ${r.ts - now} ms ahead of our clock`)
  if (r.ts > d.serveUntil) throw new ReceiptRefused('after-term', `${what} is dated ${r.ts - d.serveUntil} ms after its contract ended`)
  if (r.ts < d.serveUntil - RECEIPT_PLAUSIBILITY.maxTermMs) throw new ReceiptRefused('before-term', `${what} is dated before its contract could have started (terms last at most ${RECEIPT_PLAUSIBILITY.maxTermMs} ms)`)
  const total = Math.max(r.prior, held.tokens) + r.tokens
  const bound = plausibleTokens(d.serveUntil, Math.max(r.ts, held.latestTs))
  if (total > bound) throw new ReceiptRefused('implausible-tokens', `${what} brings its contract to ${total} tokens; at most ${bound} fit in the time it served`)
}
