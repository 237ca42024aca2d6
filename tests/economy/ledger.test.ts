// The ledger and receipts on their own: double-signed receipts and what tampering does to them, the
// hash chain and what tampering does to it, conservation, pricing, and the worker's cosigning rules.
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import {
  ReceiptInvalid, countersignAsHead, earningsFromReceipts, receiptAmount, receiptId, signAsWorker, verifyReceipt,
  type Receipt, type SignedReceipt
} from '../../protocols/receipts.ts'
import { Store } from '../../runtime/store/store.ts'
import {
  EXTERNAL_TOPUP, InsufficientCredit, agentAccount, appendTransfers, balanceOf, conservation, headAccount, userAccount, verifyChain
} from '../../runtime/ledger/ledger.ts'
import { ingestReceipt } from '../../runtime/ledger/mirror.ts'
import { ReceiptCosigner } from '../../runtime/ledger/cosigner.ts'
import { HeadBook } from '../../runtime/ledger/head-book.ts'
import { putContract, type ContractRow } from '../../runtime/ledger/contracts.ts'
import { chargeFor, pricePerToken } from '../../runtime/gateway/pricing.ts'
import { tempDir } from '../helpers/mesh.ts'
import { receiptUnder, signedContract } from '../helpers/receipts.ts'

const MODEL = 'ab'.repeat(32)
let dir: { path: string, cleanup: () => Promise<void> }
let store: Store
let head: PrivateKey
let worker: PrivateKey
const id = (k: PrivateKey): string => peerIdFromPrivateKey(k).toString()

beforeEach(async () => {
  dir = await tempDir('clawmesh-ledger-')
  store = await Store.open(join(dir.path, 'db.sqlite'))
  head = await generateKeyPair('Ed25519')
  worker = await generateKeyPair('Ed25519')
})

afterEach(async () => {
  await store.close()
  await dir.cleanup()
})

function receipt (over: Partial<Receipt> = {}): Receipt {
  return { contract: 'c1', seq: 1, tokens: 40, prior: 0, layers: 2, modelHash: MODEL, price: 1_000_000, head: id(head), worker: id(worker), ts: 1_700_000_000_000, ...over }
}

async function doubleSigned (over: Partial<Receipt> = {}): Promise<SignedReceipt> {
  return await countersignAsHead(head, await signAsWorker(worker, receipt(over)))
}

describe('receipts', () => {
  it('a double-signed receipt verifies; any tampering is detected', async () => {
    const good = await doubleSigned()
    expect((await verifyReceipt(good)).receipt).toEqual(good.receipt)
    expect(receiptAmount(good.receipt)).toBe(80)

    await expect(verifyReceipt({ ...good, receipt: { ...good.receipt, tokens: 4000 } })).rejects.toThrow(/worker signature/)
    await expect(verifyReceipt({ ...good, receipt: { ...good.receipt, price: 9e6 } })).rejects.toThrow(ReceiptInvalid)
    const other = await doubleSigned({ seq: 2 })
    await expect(verifyReceipt({ ...good, headSig: other.headSig })).rejects.toThrow(/head countersignature/)
    // Domain separation: the worker's signature is no head countersignature, even over the same terms.
    await expect(verifyReceipt({ ...good, headSig: good.workerSig })).rejects.toThrow(/head countersignature/)
    // Someone else cannot sign in the worker's name.
    const stranger = await generateKeyPair('Ed25519')
    await expect(signAsWorker(stranger, receipt())).rejects.toThrow(/not worker/)
    await expect(verifyReceipt({ ...good, extra: 1 })).rejects.toThrow(ReceiptInvalid)
  })

  it('a bystander books a receipt once, refuses a tampered one, and recomputes earnings', async () => {
    const me = id(await generateKeyPair('Ed25519'))
    // Bystanders book only receipts that carry (or name a held) contract signed by both.
    const contract = await signedContract(head, worker, { model: MODEL, price: 1_000_000, serveUntil: Date.now() + 60_000 })
    const under = async (r: Partial<Receipt>): Promise<SignedReceipt> => await receiptUnder(head, worker, contract, { seq: 1, tokens: 40, prior: 0, ts: Date.now(), ...r })
    const r1 = await under({})
    const r2 = await under({ seq: 2, tokens: 10, prior: 40 })
    expect(await ingestReceipt(store.db, me, r1)).toBe('booked')
    expect(await ingestReceipt(store.db, me, r1)).toBe('duplicate')
    await expect(ingestReceipt(store.db, me, { ...r2, receipt: { ...r2.receipt, tokens: 1000 } })).rejects.toThrow(ReceiptInvalid)
    expect(await ingestReceipt(store.db, me, r2)).toBe('booked')
    expect(await balanceOf(store.db, agentAccount(id(worker)))).toBe(80 + 20)
    expect(await balanceOf(store.db, headAccount(id(head)))).toBe(-100)
    expect(earningsFromReceipts([r1, r2, r1]).get(id(worker))).toBe(100)
    expect(await ingestReceipt(store.db, id(head), r1)).toBe('own')
  })

  it('the worker cosigns only its contract\'s terms, and each slot once', async () => {
    const contract: ContractRow = { id: 'c1', modelSha256: MODEL, head: id(head), worker: id(worker), layerStart: 0, layerEnd: 2, price: 1_000_000, expiresAt: Date.now() + 60_000, status: 'active' }
    await putContract(store.db, contract)
    const cosigner = new ReceiptCosigner(store.db, worker)
    const signed = await cosigner.sign(receipt(), id(head))
    expect(signed.receipt).toEqual(receipt())
    expect(await cosigner.sign(receipt(), id(head))).toEqual(signed) // idempotent
    await expect(cosigner.sign(receipt({ seq: 2, price: 5_000_000 }), id(head))).rejects.toThrow(/price/)
    await expect(cosigner.sign(receipt({ seq: 2, layers: 3 }), id(head))).rejects.toThrow(/layers/)
    await expect(cosigner.sign(receipt({ seq: 2 }), id(worker))).rejects.toThrow(/came from/)
    await expect(cosigner.sign(receipt({ tokens: 999 }), id(head))).rejects.toThrow(/already signed/)
    // The running total a head rounds on cannot shrink below what the worker already signed for.
    await expect(cosigner.sign(receipt({ seq: 2, prior: 10 }), id(head))).rejects.toThrow(/billed before/)
    expect((await cosigner.sign(receipt({ seq: 2, prior: 40 }), id(head))).receipt.prior).toBe(40)
  })

  it('rounds on the running total: many small requests pay what their sum is worth', async () => {
    const contract: ContractRow = { id: 'c1', modelSha256: MODEL, head: id(head), worker: id(worker), layerStart: 0, layerEnd: 6, price: 1709, expiresAt: Date.now() + 60_000, status: 'active' }
    await putContract(store.db, contract)
    const book = new HeadBook(store.db, head)
    let total = 0
    let paid = 0
    for (let i = 0; i < 300; i++) {
      const tokens = 30 + (i % 17)
      total += tokens
      const [proposal] = (await book.recordUsage({ keyId: 'k', modelSha256: MODEL, promptTokens: tokens - 8, completionTokens: 8, contracts: [contract], fee: 0 })).proposals
      expect(proposal.prior).toBe(total - tokens)
      // Each request alone is worth under one credit (about 0.3-0.5): rounded per request, the worker would get nothing.
      expect(Math.floor(tokens * 6 * 1709 / 1e6)).toBe(0)
      paid += receiptAmount(proposal)
    }
    expect(paid).toBe(Math.floor(total * 6 * 1709 / 1e6))
    expect(paid).toBeGreaterThan(100)
  })
})

describe('ledger', () => {
  it('detects an altered, re-hashed or removed entry', async () => {
    await store.db.transaction(async (tx) => {
      await appendTransfers(tx, [{ debit: EXTERNAL_TOPUP, credit: userAccount('k'), amount: 1000, memo: 'top-up' }])
      for (let i = 0; i < 5; i++) await appendTransfers(tx, [{ debit: userAccount('k'), credit: agentAccount('w'), amount: 10 + i, memo: `pay ${i}`, ref: `r${i}` }])
    })
    expect(await verifyChain(store.db)).toEqual({ ok: true, entries: 6 })
    await expect(store.db.run('UPDATE ledger SET amount = 1 WHERE seq = 3')).rejects.toThrow(/append-only/)
    await expect(store.db.run('DELETE FROM ledger WHERE seq = 3')).rejects.toThrow(/append-only/)

    // Someone with the file drops the triggers and edits history.
    await store.db.exec('DROP TRIGGER ledger_append_only_update; DROP TRIGGER ledger_append_only_delete')
    await store.db.run('UPDATE ledger SET amount = 500 WHERE seq = 3')
    expect((await verifyChain(store.db)).brokenAt).toEqual({ seq: 3, reason: expect.stringMatching(/altered/) })
    // Recomputing that entry's hash moves the break to the next entry.
    const row = await store.db.get<{ prev_hash: string, hash: string }>('SELECT prev_hash, hash FROM ledger WHERE seq = 3')
    const { entryHash } = await import('../../runtime/ledger/ledger.ts')
    const full = await store.db.get<{ seq: number, ts: number, debit: string, credit: string, amount: number, memo: string, receipt: string | null }>('SELECT seq, ts, debit, credit, amount, memo, receipt FROM ledger WHERE seq = 3')
    await store.db.run('UPDATE ledger SET hash = ? WHERE seq = 3', [entryHash(row!.prev_hash, full!)])
    expect((await verifyChain(store.db)).brokenAt?.seq).toBe(4)
    await store.db.run('DELETE FROM ledger WHERE seq = 5')
    expect((await verifyChain(store.db)).ok).toBe(false)
  })

  it('detects a running balance edited behind the ledger\'s back', async () => {
    await store.db.transaction(async (tx) => appendTransfers(tx, [
      { debit: EXTERNAL_TOPUP, credit: userAccount('k'), amount: 100, memo: 'top-up' },
      { debit: userAccount('k'), credit: agentAccount('w'), amount: 40, memo: 'pay' }
    ]))
    expect(await balanceOf(store.db, userAccount('k'))).toBe(60)
    expect((await verifyChain(store.db)).ok).toBe(true)
    await store.db.run("UPDATE ledger_balances SET balance = 1000 WHERE account = 'user:k'")
    expect((await verifyChain(store.db)).brokenAt?.reason).toMatch(/running balance of user:k is 1000, the ledger says 60/)
  })

  it('never overdraws, never settles a reference twice, and conserves credit', async () => {
    await store.db.transaction(async (tx) => appendTransfers(tx, [{ debit: EXTERNAL_TOPUP, credit: userAccount('a'), amount: 300, memo: 'top-up' }]))
    await expect(store.db.transaction(async (tx) => appendTransfers(tx, [{ debit: userAccount('a'), credit: agentAccount('w'), amount: 301, memo: 'too much' }])))
      .rejects.toThrow(InsufficientCredit)
    await store.db.transaction(async (tx) => appendTransfers(tx, [{ debit: userAccount('a'), credit: agentAccount('w'), amount: 100, memo: 'pay', ref: 'r1' }]))
    await expect(store.db.transaction(async (tx) => appendTransfers(tx, [{ debit: userAccount('a'), credit: agentAccount('w'), amount: 100, memo: 'pay again', ref: 'r1' }])))
      .rejects.toThrow(/UNIQUE/)
    // A failed transaction leaves nothing behind, not even the entries before the failure.
    await expect(store.db.transaction(async (tx) => {
      await appendTransfers(tx, [{ debit: userAccount('a'), credit: agentAccount('w'), amount: 50, memo: 'ok', ref: 'r2' }])
      await appendTransfers(tx, [{ debit: userAccount('a'), credit: agentAccount('w'), amount: 50, memo: 'dup', ref: 'r1' }])
    })).rejects.toThrow(/UNIQUE/)
    expect(await balanceOf(store.db, userAccount('a'))).toBe(200)
    expect(await conservation(store.db)).toEqual({ held: 300, external: 300, mirrored: 0, total: 0 })
    expect((await verifyChain(store.db)).ok).toBe(true)
  })
})

describe('pricing', () => {
  it('prices a token as Σ price × layers / 1e6 plus the fee, and bills whole credits no more than reserved', () => {
    const c = (id: string, start: number, end: number, price: number): ContractRow =>
      ({ id, modelSha256: MODEL, head: 'h', worker: id, layerStart: start, layerEnd: end, price, expiresAt: 0, status: 'active' })
    const pipeline = [c('a', 0, 3, 1_000_000), c('b', 3, 8, 400_000)]
    expect(pricePerToken(pipeline, 500_000)).toBeCloseTo(3 + 2 + 0.5)
    expect(chargeFor(10, pipeline, 500_000)).toEqual({ workers: [{ contract: 'a', worker: 'a', amount: 30 }, { contract: 'b', worker: 'b', amount: 20 }], fee: 5, total: 55 })
    for (let t = 1; t < 200; t++) expect(chargeFor(t, pipeline, 333_333).total).toBeLessThanOrEqual(chargeFor(t + 1, pipeline, 333_333).total)
    expect(chargeFor(7, pipeline, 0).total).toBeLessThanOrEqual(7 * pricePerToken(pipeline, 0))
  })
})

describe('receipt ids', () => {
  it('depend on every term', () => {
    const base = receipt()
    const ids = new Set([base, { ...base, seq: 2 }, { ...base, tokens: 41 }, { ...base, worker: id(head), head: id(worker) }].map(receiptId))
    expect(ids.size).toBe(4)
  })
})
