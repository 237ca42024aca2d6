import { createHash } from 'node:crypto'
import { z } from 'zod'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { canonicalBytes, concatBytes, fromBase64Url, toBase64Url, utf8 } from './encoding.ts'
import { defineKind } from './envelope.ts'
import { SignedContractSchema } from './market.ts'

/**
 * Usage receipts: the only thing credits move on. A receipt says "worker W served `layers` layers of
 * model M for `tokens` tokens under contract C, at `price` credits per million layer-tokens"; the
 * worker signs it (it agrees it was paid that much), then the head countersigns worker signature
 * included (it agrees it owes that much). Receipts carry the contract's price so that any peer can
 * recompute what a receipt is worth without holding the contract.
 *
 * Signatures use their own domain prefixes, distinct from envelopes' and from each other's, so that
 * no signature over one kind of object can be replayed as another (a worker signature never passes
 * as a head countersignature).
 */
export const RECEIPT_WORKER_DOMAIN = 'clawmesh/receipt-worker/v1\n'
export const RECEIPT_HEAD_DOMAIN = 'clawmesh/receipt-head/v1\n'

const peerIdString = z.string().min(40).max(80)
const hashSchema = z.string().regex(/^[0-9a-f]{64}$/)
const signature = z.string().regex(/^[A-Za-z0-9_-]{80,100}$/)

export const ReceiptSchema = z.object({
  contract: z.string().min(1).max(128),
  /** Per-contract sequence number, from 1; (contract, seq) identifies a receipt. */
  seq: z.number().int().positive(),
  /** Tokens that went through the worker's layers (prompt and generated). */
  tokens: z.number().int().positive(),
  /**
   * Tokens billed on this contract by its earlier receipts (seq 1..seq-1). Amounts are rounded on the
   * running total, so a contract's receipts add up to its whole usage rounded once, not once per request.
   */
  prior: z.number().int().nonnegative(),
  layers: z.number().int().positive().max(10_000),
  modelHash: hashSchema,
  /** Credits per million layer-tokens, as agreed in the contract. */
  price: z.number().nonnegative().finite(),
  head: peerIdString,
  worker: peerIdString,
  ts: z.number().int().nonnegative()
}).strict()

export const WorkerSignedReceiptSchema = z.object({
  receipt: ReceiptSchema,
  workerSig: signature
}).strict()

export const SignedReceiptSchema = z.object({
  receipt: ReceiptSchema,
  workerSig: signature,
  headSig: signature,
  /**
   * The contract the receipt bills, signed by both parties: attached by the head when it settles, so
   * that a bystander that never saw the contract can still check the receipt against its terms
   * (protocols/receipt-terms.ts). Not covered by the receipt signatures; it carries its own two.
   */
  contract: SignedContractSchema.optional()
}).strict()

export type Receipt = z.infer<typeof ReceiptSchema>
export type WorkerSignedReceipt = z.infer<typeof WorkerSignedReceiptSchema>
export type SignedReceipt = z.infer<typeof SignedReceiptSchema>

export class ReceiptInvalid extends Error {
  constructor (detail: string) {
    super(`invalid receipt: ${detail}`)
    this.name = 'ReceiptInvalid'
  }
}

/** Stable identity of a receipt: the hash of its canonical terms (signatures excluded). */
export function receiptId (r: Receipt): string {
  return createHash('sha256').update(canonicalBytes(r)).digest('hex')
}

/** Whole credits that `tokens` through `layers` at `price` per million layer-tokens are worth, rounded down. */
export function creditsFor (tokens: number, layers: number, price: number): number {
  return Math.floor(tokens * layers * price / 1e6)
}

/**
 * Credits a receipt is worth, in whole credits (the ledger keeps integers): what the contract's usage
 * is worth after it minus what it was worth before it, both rounded down. A worker is never paid more
 * than the contract says, and small requests are not rounded away one by one: over a contract the
 * receipts add up to its whole usage rounded down once. Any peer can recompute it from the receipt.
 */
export function receiptAmount (r: Pick<Receipt, 'tokens' | 'layers' | 'price' | 'prior'>): number {
  return creditsFor(r.prior + r.tokens, r.layers, r.price) - creditsFor(r.prior, r.layers, r.price)
}

function workerBytes (r: Receipt): Uint8Array {
  return concatBytes(utf8(RECEIPT_WORKER_DOMAIN), canonicalBytes(r))
}

function headBytes (r: Receipt, workerSig: string): Uint8Array {
  return concatBytes(utf8(RECEIPT_HEAD_DOMAIN), canonicalBytes({ receipt: r, workerSig }))
}

function publicKeyOf (peerId: string, role: string): NonNullable<ReturnType<typeof peerIdFromString>['publicKey']> {
  let key
  try {
    key = peerIdFromString(peerId).publicKey
  } catch (err) {
    throw new ReceiptInvalid(`${role} ${peerId} is not a peer id (${(err as Error).message})`)
  }
  if (key === undefined) throw new ReceiptInvalid(`${role} ${peerId} embeds no public key`)
  return key
}

export async function signAsWorker (key: PrivateKey, receipt: Receipt): Promise<WorkerSignedReceipt> {
  const r = ReceiptSchema.parse(receipt)
  if (peerIdFromPrivateKey(key).toString() !== r.worker) throw new ReceiptInvalid(`this key is not worker ${r.worker}`)
  return { receipt: r, workerSig: toBase64Url(await key.sign(workerBytes(r))) }
}

/** The head countersigns only what the worker already signed, and checks that signature first. */
export async function countersignAsHead (key: PrivateKey, signed: WorkerSignedReceipt): Promise<SignedReceipt> {
  const s = WorkerSignedReceiptSchema.parse(signed)
  if (peerIdFromPrivateKey(key).toString() !== s.receipt.head) throw new ReceiptInvalid(`this key is not head ${s.receipt.head}`)
  await verifyWorkerSignature(s)
  return { ...s, headSig: toBase64Url(await key.sign(headBytes(s.receipt, s.workerSig))) }
}

export async function verifyWorkerSignature (s: WorkerSignedReceipt): Promise<void> {
  const ok = await publicKeyOf(s.receipt.worker, 'worker').verify(workerBytes(s.receipt), fromBase64Url(s.workerSig))
  if (!ok) throw new ReceiptInvalid(`worker signature of ${s.receipt.contract}#${s.receipt.seq} does not verify for ${s.receipt.worker}`)
}

/** Parses untrusted input and checks both signatures; returns the receipt or throws ReceiptInvalid. */
export async function verifyReceipt (input: unknown): Promise<SignedReceipt> {
  const parsed = SignedReceiptSchema.safeParse(input)
  if (!parsed.success) throw new ReceiptInvalid(z.prettifyError(parsed.error))
  const s = parsed.data
  if (s.receipt.head === s.receipt.worker) throw new ReceiptInvalid('head and worker are the same peer')
  await verifyWorkerSignature(s)
  const ok = await publicKeyOf(s.receipt.head, 'head').verify(headBytes(s.receipt, s.workerSig), fromBase64Url(s.headSig))
  if (!ok) throw new ReceiptInvalid(`head countersignature of ${s.receipt.contract}#${s.receipt.seq} does not verify for ${s.receipt.head}`)
  return s
}

/** Recomputes every worker's earnings from a set of double-signed receipts (each counted once). */
export function earningsFromReceipts (receipts: Iterable<SignedReceipt>): Map<string, number> {
  const seen = new Set<string>()
  const out = new Map<string, number>()
  for (const s of receipts) {
    const id = receiptId(s.receipt)
    if (seen.has(id)) continue
    seen.add(id)
    out.set(s.receipt.worker, (out.get(s.receipt.worker) ?? 0) + receiptAmount(s.receipt))
  }
  return out
}

/** Head → worker: "please sign this receipt for work you did". Gossiped, addressed by `worker`. */
export const ReceiptProposalKind = defineKind('receipt-proposal', ReceiptSchema, 5 * 60_000)
/** Worker → head: the worker's signature over a proposal. */
export const ReceiptSignatureKind = defineKind('receipt-signature', WorkerSignedReceiptSchema, 5 * 60_000)
/**
 * Worker → head: a receipt the worker proposed and signed from its own meter, for rows it computed that
 * the head proposed no receipt for (runtime/ledger/audit.ts); the head countersigns what it owes.
 */
export const WorkerProposalKind = defineKind('receipt-worker-proposal', WorkerSignedReceiptSchema, 5 * 60_000)
/** Head → everyone: a settled, double-signed receipt; any peer can verify it and recompute balances. */
export const ReceiptKind = defineKind('receipt', SignedReceiptSchema, 15 * 60_000)

/**
 * A spot check failed: the head replayed a request on another provider of the same layer range and
 * the outputs differed. The envelope's signature makes the report the reporter's signed statement.
 */
export const FraudReportSchema = z.object({
  accused: peerIdString,
  contract: z.string().min(1).max(128),
  modelHash: hashSchema,
  layerStart: z.number().int().nonnegative(),
  layerEnd: z.number().int().positive(),
  /** SHA-256 of the canonical request that was replayed (the request itself may be private). */
  requestHash: hashSchema,
  /** SHA-256 of the accused pipeline's output and of the reference replay's output. */
  outputHash: hashSchema,
  referenceHash: hashSchema,
  /** Which provider served the reference replay. */
  reference: z.string().min(1).max(200),
  /** Receipts of the accused that the reporter voided as a consequence. */
  voided: z.number().int().nonnegative(),
  ts: z.number().int().nonnegative()
}).strict()

export type FraudReport = z.infer<typeof FraudReportSchema>
export const FraudReportKind = defineKind('fraud-report', FraudReportSchema, 15 * 60_000)

export function sha256Hex (data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex')
}
