// Contracts and receipts signed by real keys, as the market and a head make them, for tests that
// need receipts a bystander will book (signed contract attached, terms matching it).
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { contractId, signContract, type ContractDoc, type SignedContract } from '../../protocols/market.ts'
import { countersignAsHead, signAsWorker, type Receipt, type SignedReceipt } from '../../protocols/receipts.ts'

export const peerOf = (k: PrivateKey): string => peerIdFromPrivateKey(k).toString()

export async function signedContract (head: PrivateKey, worker: PrivateKey, o: { model: string, start?: number, end?: number, price: number, serveUntil: number, cfpId?: string }): Promise<SignedContract> {
  const doc: ContractDoc = {
    v: 1, net: 'test', cfpId: o.cfpId ?? `cfp-${Math.random().toString(36).slice(2, 10)}`, model: o.model, head: peerOf(head), worker: peerOf(worker),
    start: o.start ?? 0, end: o.end ?? 2, price: o.price, serveUntil: o.serveUntil
  }
  return { doc, headSig: (await signContract(head, doc)).sig, workerSig: (await signContract(worker, doc)).sig }
}

/** A receipt under `contract`, signed by both, with the contract attached (as a head settles it). */
export async function receiptUnder (head: PrivateKey, worker: PrivateKey, contract: SignedContract, r: Pick<Receipt, 'seq' | 'tokens' | 'prior' | 'ts'>, attach = true): Promise<SignedReceipt> {
  const d = contract.doc
  const receipt: Receipt = { contract: contractId(d), layers: d.end - d.start, modelHash: d.model, price: d.price, head: d.head, worker: d.worker, ...r }
  const signed = await countersignAsHead(head, await signAsWorker(worker, receipt))
  return attach ? { ...signed, contract } : signed
}
