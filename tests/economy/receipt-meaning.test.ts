// Issue #15, finding 10: a bystander books a receipt only for a contract it can verify, within the
// contract's price and term, for tokens the contract could have served; signatures alone are not enough
// (two keys an attacker owns sign anything).
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { MAX_CONTRACT_TERM_MS } from '../../protocols/market.ts'
import { ReceiptRefused, plausibleTokens, type ReceiptRefusal } from '../../protocols/receipt-terms.ts'
import { Store } from '../../runtime/store/store.ts'
import { agentAccount, balanceOf, verifyChain } from '../../runtime/ledger/ledger.ts'
import { ingestReceipt } from '../../runtime/ledger/mirror.ts'
import { insertContractRow } from '../../runtime/engine/contracts.ts'
import { contractId } from '../../protocols/market.ts'
import { tempDir } from '../helpers/mesh.ts'
import { peerOf, receiptUnder, signedContract } from '../helpers/receipts.ts'

const MODEL = 'ef'.repeat(32)
const NOW = 1_750_000_000_000
let dir: { path: string, cleanup: () => Promise<void> }
let store: Store
let head: PrivateKey
let worker: PrivateKey
let me: string

beforeEach(async () => {
  dir = await tempDir('clawmesh-meaning-')
  store = await Store.open(join(dir.path, 'db.sqlite'))
  ;[head, worker] = await Promise.all([generateKeyPair('Ed25519'), generateKeyPair('Ed25519')])
  me = peerOf(await generateKeyPair('Ed25519'))
})
afterEach(async () => {
  await store.close()
  await dir.cleanup()
})

async function refusal (input: unknown): Promise<ReceiptRefusal | 'booked'> {
  try {
    await ingestReceipt(store.db, me, input, {}, NOW)
    return 'booked'
  } catch (err) {
    if (err instanceof ReceiptRefused) return err.reason
    throw err
  }
}

const earned = async (): Promise<number> => await balanceOf(store.db, agentAccount(peerOf(worker)))

describe('a bystander books what a contract allows', () => {
  it('refuses a receipt two attacker keys signed for a contract nobody can see (1.8e13 credits)', async () => {
    // The finding: tokens and price are whatever the attacker writes; both signatures are its own.
    const contract = await signedContract(head, worker, { model: MODEL, price: 1e9, serveUntil: NOW + 60_000 })
    const forged = await receiptUnder(head, worker, contract, { seq: 1, tokens: 9_000_000_000, prior: 0, ts: NOW }, false)
    expect(await refusal(forged)).toBe('no-contract')
    expect(await earned()).toBe(0)
    // Attached, the contract verifies, but 9e9 tokens do not fit in its term at any plausible rate.
    expect(await refusal({ ...forged, contract })).toBe('implausible-tokens')
    expect(await earned()).toBe(0)
    expect((await verifyChain(store.db)).entries).toBe(0)
  })

  it('checks the receipt against the contract: parties, model, layers, price, signatures', async () => {
    const contract = await signedContract(head, worker, { model: MODEL, price: 1000, serveUntil: NOW + 60_000 })
    const good = await receiptUnder(head, worker, contract, { seq: 1, tokens: 1000, prior: 0, ts: NOW })
    // Price or layers other than the contract's, signed by both all the same.
    const pricier = await signedContract(head, worker, { model: MODEL, price: 9000, serveUntil: NOW + 60_000, cfpId: contract.doc.cfpId })
    const overpriced = await receiptUnder(head, worker, pricier, { seq: 2, tokens: 1000, prior: 1000, ts: NOW })
    expect(await refusal({ ...overpriced, contract })).toBe('contract-mismatch')
    // A contract the worker never signed (its signature is the head's).
    expect(await refusal({ ...good, contract: { ...contract, workerSig: contract.headSig } })).toBe('contract-signature')
    // A genuine contract of other parties attached to our attacker's receipt.
    const [x, y] = await Promise.all([generateKeyPair('Ed25519'), generateKeyPair('Ed25519')])
    const theirs = await signedContract(x, y, { model: MODEL, price: 1000, serveUntil: NOW + 60_000 })
    expect(await refusal({ ...good, contract: theirs })).toBe('contract-mismatch')
    // Tampered receipt: its signatures fail first.
    expect(await refusal({ ...good, receipt: { ...good.receipt, tokens: 5000 } })).toBe('signature')
    expect(await refusal({ ...good, extra: 1 })).toBe('malformed')
    expect(await refusal(good)).toBe('booked')
    expect(await earned()).toBe(2)
    expect((await verifyChain(store.db)).ok).toBe(true)
  })

  it('refuses receipts outside the term or ahead of our clock', async () => {
    const contract = await signedContract(head, worker, { model: MODEL, price: 1000, serveUntil: NOW - 1000 })
    expect(await refusal(await receiptUnder(head, worker, contract, { seq: 1, tokens: 1000, prior: 0, ts: NOW }))).toBe('after-term')
    expect(await refusal(await receiptUnder(head, worker, contract, { seq: 1, tokens: 1000, prior: 0, ts: NOW - 1000 - MAX_CONTRACT_TERM_MS - 1 }))).toBe('before-term')
    const open = await signedContract(head, worker, { model: MODEL, price: 1000, serveUntil: NOW + 3_600_000 })
    expect(await refusal(await receiptUnder(head, worker, open, { seq: 1, tokens: 1000, prior: 0, ts: NOW + 120_000 }))).toBe('from-future')
    expect(await refusal(await receiptUnder(head, worker, open, { seq: 1, tokens: 1000, prior: 0, ts: NOW - 1000 }))).toBe('booked')
  })

  it('bounds the tokens of a whole contract, whatever each receipt says came before it', async () => {
    const serveUntil = NOW + 60_000
    const contract = await signedContract(head, worker, { model: MODEL, price: 1000, serveUntil })
    const bound = plausibleTokens(serveUntil, NOW)
    expect(bound).toBe(1_000_000 + (MAX_CONTRACT_TERM_MS - 60_000) * 10)
    const half = Math.floor(bound / 2)
    expect(await refusal(await receiptUnder(head, worker, contract, { seq: 1, tokens: half, prior: 0, ts: NOW }))).toBe('booked')
    // prior 0 again on seq 2: the bystander counts what it holds, not what the receipt claims.
    expect(await refusal(await receiptUnder(head, worker, contract, { seq: 2, tokens: half + 2, prior: 0, ts: NOW }))).toBe('implausible-tokens')
    expect(await refusal(await receiptUnder(head, worker, contract, { seq: 2, tokens: half, prior: half, ts: NOW }))).toBe('booked')
  })

  it('a node that holds the contract (its worker) books receipts that do not carry it', async () => {
    const contract = await signedContract(head, worker, { model: MODEL, price: 1000, serveUntil: NOW + 60_000 })
    const bare = await receiptUnder(head, worker, contract, { seq: 1, tokens: 1000, prior: 0, ts: NOW }, false)
    expect(await refusal(bare)).toBe('no-contract')
    const d = contract.doc
    await insertContractRow(store, {
      id: contractId(d), modelSha256: d.model, head: d.head, worker: d.worker, layerStart: d.start, layerEnd: d.end, price: d.price,
      expiresAt: d.serveUntil, status: 'active', document: JSON.stringify(contract), createdAt: NOW
    })
    expect(await refusal(bare)).toBe('booked')
    // Stored with the contract, so that it can be handed on to peers that lack it.
    const row = await store.db.get<{ document: string }>('SELECT document FROM receipts')
    expect(JSON.parse(row!.document).contract).toEqual(contract)
  })
})
