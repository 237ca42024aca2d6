import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { sha256Hex, signAsWorker, type Receipt, type SignedReceipt } from '../../protocols/receipts.ts'
import { toBase64Url, utf8 } from '../../protocols/index.ts'

/**
 * A forger's receipt for work never done: 5 M tokens through 10 layers, the forger's own (valid)
 * worker signature, and a "countersignature" of the victim head that the forger made with its own key.
 * Every receipt service must refuse to book it. Used by both simulators' forgers.
 */
export async function receiptWithForgedHead (key: PrivateKey, o: { head: string, modelHash: string, price: number, now: number }): Promise<SignedReceipt> {
  const worker = peerIdFromPrivateKey(key).toString()
  const fake: Receipt = { contract: sha256Hex(`fake-${o.now}-${worker}`).slice(0, 32), seq: 1, tokens: 5_000_000, prior: 0, layers: 10, modelHash: o.modelHash, price: o.price, head: o.head, worker, ts: o.now }
  const ws = await signAsWorker(key, fake)
  const headSig = toBase64Url(await key.sign(utf8(`clawmesh/receipt-head/v1\n${JSON.stringify(fake)}`)))
  return { ...ws, headSig }
}
