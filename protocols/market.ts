import { createHash } from 'node:crypto'
import { z } from 'zod'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { canonicalBytes, concatBytes, fromBase64Url, toBase64Url, utf8 } from './encoding.ts'
import { defineKind } from './envelope.ts'
import { NETWORK_ID_PATTERN } from './topics.ts'

/**
 * The layer market: FIPA Contract Net (a head calls for proposals, workers propose) with alternating
 * offers (COUNTER back and forth, bounded by rounds) ending in a CONTRACT signed by both sides.
 *
 * Every message carries `text`, what the agent says (written by its LLM, or by the offline
 * negotiator), and, where it binds anything, `terms`. Only terms bind: a contract is derived from
 * terms alone, never from text. Everything here is pure (no I/O), so both sides and the tests compute
 * the same contract from the same terms.
 */

export const SHA256_HEX = /^[0-9a-f]{64}$/
/** Market topics are scoped by this prefix of the model's SHA-256: one topic per model. */
export const MODEL_SCOPE_CHARS = 16

export function marketScope (modelSha256: string): string {
  return modelSha256.slice(0, MODEL_SCOPE_CHARS)
}

const peerId = z.string().min(40).max(80)
const sha256 = z.string().regex(SHA256_HEX)
const id = z.string().regex(/^[A-Za-z0-9_-]{8,64}$/)
const epochMs = z.number().int().nonnegative()
/** What an agent says. Bounded so that a chatty peer cannot fill a context window. */
const text = z.string().max(2000)
/** Credits per million layer-tokens: serving k layers for a million tokens costs price × k. */
const price = z.number().nonnegative().finite().max(1e9)

export const ModelRefSchema = z.object({
  sha256,
  name: z.string().max(200),
  nLayer: z.number().int().positive().max(4096),
  /** Approximate bytes one layer needs in memory: what a worker checks against its free memory. */
  layerBytes: z.number().int().positive()
}).strict()
export type ModelRef = z.infer<typeof ModelRefSchema>

/** A half-open layer range [start, end). */
export const LayerRangeSchema = z.object({
  start: z.number().int().nonnegative().max(4096),
  end: z.number().int().positive().max(4096)
}).strict().refine((r) => r.end > r.start, { message: 'a layer range must hold at least one layer (end > start)' })
export type LayerRange = z.infer<typeof LayerRangeSchema>

export const TermsSchema = z.object({
  start: z.number().int().nonnegative().max(4096),
  end: z.number().int().positive().max(4096),
  price,
  /** The offer lapses after this instant (sender's clock). */
  expiresAt: epochMs
}).strict().refine((t) => t.end > t.start, { message: 'terms must cover at least one layer (end > start)' })
export type Terms = z.infer<typeof TermsSchema>

/**
 * Longest term a contract may have, from the call's deadline to serveUntil. Bystanders refuse receipts
 * dated earlier than serveUntil minus this (protocols/receipt-terms.ts), so a call may not ask for more:
 * long-lived pipelines renew their contracts instead.
 */
export const MAX_CONTRACT_TERM_MS = 24 * 3600_000

export const CfpSchema = z.object({
  cfpId: id,
  model: sha256,
  modelRef: ModelRefSchema,
  want: LayerRangeSchema,
  /** The most the head will pay, in credits per million tokens, for the whole wanted range. */
  budget: price,
  /** Proposals are collected until then; the head chooses afterwards, never on the first offer. */
  deadline: epochMs,
  /** Contracts bind until then. */
  serveUntil: epochMs,
  maxRounds: z.number().int().min(1).max(20),
  text
}).strict().refine((c) => c.serveUntil - c.deadline <= MAX_CONTRACT_TERM_MS, { message: `a contract term may last at most ${MAX_CONTRACT_TERM_MS / 3600_000} h after the deadline (renew instead)` })
export type Cfp = z.infer<typeof CfpSchema>

const addressed = {
  cfpId: id,
  model: sha256,
  /** The one peer this message is for; everyone on the model's topic sees it (the market is public). */
  to: peerId,
  text
}

export const ProposeSchema = z.object({ ...addressed, terms: TermsSchema }).strict()
export const CounterSchema = z.object({ ...addressed, round: z.number().int().min(1).max(20), terms: TermsSchema }).strict()

export const ContractDocSchema = z.object({
  v: z.literal(1),
  net: z.string().regex(NETWORK_ID_PATTERN),
  cfpId: id,
  model: sha256,
  head: peerId,
  worker: peerId,
  start: z.number().int().nonnegative(),
  end: z.number().int().positive(),
  price,
  serveUntil: epochMs
}).strict()
export type ContractDoc = z.infer<typeof ContractDocSchema>

const signature = z.string().regex(/^[A-Za-z0-9_-]{80,100}$/)

/** ACCEPT binds the acceptor: it carries the contract drawn from the accepted terms, signed by it. */
export const AcceptSchema = z.object({ ...addressed, terms: TermsSchema, contract: ContractDocSchema, sig: signature }).strict()
export const RejectSchema = z.object({ ...addressed, reason: z.string().max(300) }).strict()

export const SignedContractSchema = z.object({
  doc: ContractDocSchema,
  headSig: signature,
  workerSig: signature
}).strict()
export type SignedContract = z.infer<typeof SignedContractSchema>

export const ContractMsgSchema = z.object({ ...addressed, contract: SignedContractSchema }).strict()

/**
 * A party ends a contract before its term: the head's pipeline lost the worker, or a worker stops
 * serving. Either party may send it (the envelope's author must be one of the two); the other party
 * ends the contract too, so it never lives on one side only.
 */
export const ContractEndSchema = z.object({
  ...addressed,
  contractId: z.string().regex(/^[0-9a-f]{32}$/),
  /** 'broken': a party failed or left; 'ended': a party closed it. */
  status: z.enum(['broken', 'ended']),
  reason: z.string().max(300)
}).strict()
export type ContractEnd = z.infer<typeof ContractEndSchema>

export type Propose = z.infer<typeof ProposeSchema>
export type Counter = z.infer<typeof CounterSchema>
export type Accept = z.infer<typeof AcceptSchema>
export type Reject = z.infer<typeof RejectSchema>
export type ContractMsg = z.infer<typeof ContractMsgSchema>

const TTL = 10 * 60_000
export const CfpKind = defineKind('market-cfp', CfpSchema, TTL)
export const ProposeKind = defineKind('market-propose', ProposeSchema, TTL)
export const CounterKind = defineKind('market-counter', CounterSchema, TTL)
export const AcceptKind = defineKind('market-accept', AcceptSchema, TTL)
export const RejectKind = defineKind('market-reject', RejectSchema, TTL)
export const ContractKind = defineKind('market-contract', ContractMsgSchema, TTL)
export const ContractEndKind = defineKind('market-end', ContractEndSchema, TTL)
export const MARKET_KINDS = [CfpKind, ProposeKind, CounterKind, AcceptKind, RejectKind, ContractKind, ContractEndKind] as const

/** Domain separation: a contract signature can never pass for an envelope signature, nor the reverse. */
export const CONTRACT_SIGNING_DOMAIN = 'clawmesh/market-contract/v1\n'

function contractSigningBytes (doc: ContractDoc): Uint8Array {
  return concatBytes(utf8(CONTRACT_SIGNING_DOMAIN), canonicalBytes(ContractDocSchema.parse(doc)))
}

/** Both sides derive the same document from the same terms; neither can slip in a field the other did not agree to. */
export function contractFromTerms (opts: { net: string, cfp: Pick<Cfp, 'cfpId' | 'model' | 'serveUntil'>, head: string, worker: string, terms: Terms }): ContractDoc {
  return {
    v: 1,
    net: opts.net,
    cfpId: opts.cfp.cfpId,
    model: opts.cfp.model,
    head: opts.head,
    worker: opts.worker,
    start: opts.terms.start,
    end: opts.terms.end,
    price: opts.terms.price,
    serveUntil: opts.cfp.serveUntil
  }
}

/** A stable id: the first 32 hex chars of SHA-256 over the canonical document. */
export function contractId (doc: ContractDoc): string {
  return createHash('sha256').update(canonicalBytes(doc)).digest('hex').slice(0, 32)
}

export function sameContract (a: ContractDoc, b: ContractDoc): boolean {
  return Buffer.from(canonicalBytes(a)).equals(Buffer.from(canonicalBytes(b)))
}

/** Signs as the head or the worker; refuses a key that is neither party. */
export async function signContract (key: PrivateKey, doc: ContractDoc): Promise<{ role: 'head' | 'worker', sig: string }> {
  const me = peerIdFromPrivateKey(key).toString()
  const role = me === doc.head ? 'head' : me === doc.worker ? 'worker' : undefined
  if (role === undefined) throw new Error(`peer ${me} is not a party to contract ${doc.cfpId} (${doc.head} / ${doc.worker})`)
  return { role, sig: toBase64Url(await key.sign(contractSigningBytes(doc))) }
}

export async function verifyContractSig (doc: ContractDoc, signer: string, sig: string): Promise<boolean> {
  const publicKey = peerIdFromString(signer).publicKey
  if (publicKey === undefined) return false
  try {
    return await publicKey.verify(contractSigningBytes(doc), fromBase64Url(sig))
  } catch {
    return false
  }
}

/** Checks a fully signed contract: schema, both signatures by the parties it names, head ≠ worker. */
export async function verifyContract (signed: SignedContract): Promise<{ ok: true } | { ok: false, reason: string }> {
  const parsed = SignedContractSchema.safeParse(signed)
  if (!parsed.success) return { ok: false, reason: `malformed contract: ${z.prettifyError(parsed.error)}` }
  const { doc, headSig, workerSig } = parsed.data
  if (doc.head === doc.worker) return { ok: false, reason: 'head and worker are the same peer' }
  if (doc.end <= doc.start) return { ok: false, reason: `empty layer range [${doc.start}, ${doc.end})` }
  if (!await verifyContractSig(doc, doc.head, headSig)) return { ok: false, reason: 'head signature does not verify' }
  if (!await verifyContractSig(doc, doc.worker, workerSig)) return { ok: false, reason: 'worker signature does not verify' }
  return { ok: true }
}

export interface CoverageReport {
  complete: boolean
  /** Layer ranges nobody serves. */
  gaps: LayerRange[]
  /** Ranges served by more than one contract. */
  overlaps: LayerRange[]
  /** Ranges outside [0, nLayer). */
  outside: LayerRange[]
}

/** Do these ranges tile [0, nLayer) exactly: every layer once, no gaps, no overlaps, nothing outside? */
export function coverage (ranges: readonly LayerRange[], nLayer: number): CoverageReport {
  const count = new Array<number>(nLayer).fill(0)
  const outside: LayerRange[] = []
  for (const r of ranges) {
    if (r.start < 0 || r.end > nLayer) outside.push({ start: r.start, end: r.end })
    for (let l = Math.max(0, r.start); l < Math.min(nLayer, r.end); l++) count[l]++
  }
  const runs = (pred: (n: number) => boolean): LayerRange[] => {
    const out: LayerRange[] = []
    for (let l = 0; l < nLayer; l++) {
      if (!pred(count[l])) continue
      const last = out[out.length - 1]
      if (last !== undefined && last.end === l) last.end = l + 1
      else out.push({ start: l, end: l + 1 })
    }
    return out
  }
  const gaps = runs((n) => n === 0)
  const overlaps = runs((n) => n > 1)
  return { complete: gaps.length === 0 && overlaps.length === 0 && outside.length === 0, gaps, overlaps, outside }
}

export function overlapsAny (r: LayerRange, others: readonly LayerRange[]): boolean {
  return others.some((o) => r.start < o.end && o.start < r.end)
}

export function layerCount (r: LayerRange): number {
  return r.end - r.start
}

/** What a deal costs per million tokens: price per layer × layers. */
export function dealCost (t: Pick<Terms, 'start' | 'end' | 'price'>): number {
  return t.price * (t.end - t.start)
}
