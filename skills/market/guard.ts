import type { Cfp, ContractDoc, ModelRef, Terms } from '../../protocols/index.ts'
import type { Role, Thread } from './book.ts'

/**
 * A move the agent's LLM wants to make, as the owner's policy sees it. Tools build one of these from
 * the tool call and ask the guard before touching the market; the guard (policy-guard.ts) reads the
 * owner's policy (owner-policy.ts) and the machine, the tools only know that every move must pass it.
 */
export type MarketAction =
  | { type: 'publish_cfp', model: ModelRef, want: { start: number, end: number }, budget: number }
  | { type: 'propose', cfp: Cfp, terms: Terms }
  | { type: 'counter', role: Role, cfp: Cfp, peer: string, terms: Terms, thread: Thread }
  | { type: 'accept', role: Role, cfp: Cfp, peer: string, terms: Terms }
  | { type: 'sign_contract', role: Role, cfp: Cfp, peer: string, contract: ContractDoc }

export type Verdict = { ok: true } | { ok: false, reason: string }

export interface MarketGuard {
  check (action: MarketAction): Promise<Verdict>
}
