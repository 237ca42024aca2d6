// Real kills mid-settlement: the settling side runs in a child process that is SIGKILLed while a
// settlement (head) or a receipt booking (worker) is half-way through its transaction. Reopening the
// database must show every usage either fully settled or not at all, no receipt counted twice, the
// hash chain intact and credit conserved; settling again must finish the job exactly once.
import { spawn } from 'node:child_process'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { earningsFromReceipts, receiptAmount, signAsWorker, type SignedReceipt } from '../../protocols/receipts.ts'
import { Store } from '../../runtime/store/store.ts'
import { loadOrCreateIdentity } from '../../runtime/node/identity.ts'
import { HeadBook } from '../../runtime/ledger/head-book.ts'
import { putContract, type ContractRow } from '../../runtime/ledger/contracts.ts'
import { NETWORK_FEES, agentAccount, balanceOf, conservation, userAccount, verifyChain } from '../../runtime/ledger/ledger.ts'
import { ingestReceipt, settledReceipts } from '../../runtime/ledger/mirror.ts'
import { createKey } from '../../runtime/gateway/keys.ts'
import { chargeFor } from '../../runtime/gateway/pricing.ts'
import { tempDir } from '../helpers/mesh.ts'
import { signedContract } from '../helpers/receipts.ts'
import { contractId, type SignedContract } from '../../protocols/market.ts'

const CHILD = fileURLToPath(new URL('../helpers/economy-child.ts', import.meta.url))
const MODEL = 'cd'.repeat(32)
const USAGES = 6
const CREDITS = 100_000

let dir: { path: string, cleanup: () => Promise<void> }
let headKey: PrivateKey
let workers: PrivateKey[]
let contracts: ContractRow[]
let signed: SignedContract[]
const pid = (k: PrivateKey): string => peerIdFromPrivateKey(k).toString()

beforeAll(async () => {
  dir = await tempDir('clawmesh-crash-')
  headKey = (await loadOrCreateIdentity(join(dir.path, 'head'))).key
  workers = [await generateKeyPair('Ed25519'), await generateKeyPair('Ed25519')]
  // Signed by both parties: the worker books the settled receipts as a bystander would, against them.
  const expiresAt = Date.now() + 3_600_000
  signed = await Promise.all(workers.map(async (w, i) => await signedContract(headKey, w, { model: MODEL, start: i * 2, end: i * 2 + 2, price: (i + 1) * 1_000_000, serveUntil: expiresAt })))
  contracts = signed.map((c) => ({
    id: contractId(c.doc), modelSha256: MODEL, head: c.doc.head, worker: c.doc.worker, layerStart: c.doc.start, layerEnd: c.doc.end,
    price: c.doc.price, expiresAt, status: 'active'
  }))
})

afterAll(async () => { await dir.cleanup() })

interface Child { lines: string[], exited: Promise<number | null>, kill: () => void, stderr: () => string }

function runChild (args: string[]): Child {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: string[] = []
  let stderr = ''
  let partial = ''
  child.stdout.on('data', (d: Buffer) => {
    partial += d.toString()
    const parts = partial.split('\n')
    partial = parts.pop() ?? ''
    lines.push(...parts)
  })
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
  return { lines, exited: new Promise((resolve) => child.on('close', resolve)), kill: () => child.kill('SIGKILL'), stderr: () => stderr }
}

async function waitForLines (c: Child, test: (lines: string[]) => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!test(c.lines)) {
    if (Date.now() > deadline) throw new Error(`child never got there; lines: ${c.lines.join(' | ')}; stderr: ${c.stderr()}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** Every usage settled exactly as a whole: its receipts settled ⇔ their entries exist, fee included. */
async function checkInvariants (store: Store): Promise<{ settledUsages: number }> {
  const db = store.db
  expect((await verifyChain(db)).ok).toBe(true)
  const cons = await conservation(db)
  expect(cons.held).toBe(cons.external)
  const refs = await db.all<{ receipt: string, n: number }>('SELECT receipt, COUNT(*) AS n FROM ledger WHERE receipt IS NOT NULL GROUP BY receipt HAVING n > 1')
  expect(refs).toEqual([])
  const usages = await db.all<{ id: string, status: string }>('SELECT id, status FROM usage')
  let settledUsages = 0
  for (const u of usages) {
    const receipts = await db.all<{ id: string, status: string }>('SELECT id, status FROM receipts WHERE usage_id = ?', [u.id])
    const booked = await db.get<{ n: number }>(`SELECT COUNT(*) AS n FROM ledger WHERE receipt IN (${receipts.map(() => '?').join(',')}) OR receipt = ?`, [...receipts.map((r) => r.id), `fee:${u.id}`])
    if (u.status === 'settled') {
      settledUsages++
      expect(receipts.every((r) => r.status === 'settled')).toBe(true)
      expect(booked?.n).toBe(receipts.length + 1)
    } else {
      expect(receipts.every((r) => r.status === 'signed')).toBe(true)
      expect(booked?.n).toBe(0)
    }
  }
  return { settledUsages }
}

describe('a real kill mid-settlement', () => {
  let headDb: string
  let keyId: string
  let expectedCharge = 0

  it('of the head loses no credit and counts none twice', async () => {
    headDb = join(dir.path, 'head.sqlite')
    let store = await Store.open(headDb)
    for (const [i, c] of contracts.entries()) await putContract(store.db, c, JSON.stringify(signed[i]))
    keyId = (await createKey(store.db, { credits: CREDITS })).key.id
    const book = new HeadBook(store.db, headKey)
    for (let i = 0; i < USAGES; i++) {
      const promptTokens = 10 + i
      const completionTokens = 5 + i
      const charge = chargeFor(promptTokens + completionTokens, contracts, 250_000)
      const rec = await book.recordUsage({ keyId, modelSha256: MODEL, promptTokens, completionTokens, contracts, fee: charge.fee })
      const billed = rec.proposals.reduce((sum, p) => sum + receiptAmount(p), 0) + charge.fee
      expect(billed).toBeLessThanOrEqual(charge.total)
      expectedCharge += billed
      for (const p of rec.proposals) await book.acceptWorkerSignature(await signAsWorker(workers[contracts.findIndex((c) => c.id === p.contract)], p))
    }
    await store.close()

    const child = runChild(['settle', headDb, join(dir.path, 'head'), '400'])
    await waitForLines(child, (l) => l.filter((x) => x.startsWith('settled')).length === 2 && l.filter((x) => x.startsWith('mid')).length === 3)
    child.kill()
    expect(await child.exited).toBe(null) // killed, not finished
    expect(child.lines).not.toContain('done')

    store = await Store.open(headDb)
    expect((await checkInvariants(store)).settledUsages).toBe(2)

    // Settling again (a restarted head) finishes the rest, each exactly once.
    const again = new HeadBook(store.db, headKey)
    expect((await again.settleReady()).length).toBe(USAGES - 2)
    expect(await again.settleReady()).toEqual([])
    expect((await checkInvariants(store)).settledUsages).toBe(USAGES)
    expect(await balanceOf(store.db, userAccount(keyId))).toBe(CREDITS - expectedCharge)
    const earned = earningsFromReceipts(await settledReceipts(store.db))
    for (const w of workers) expect(await balanceOf(store.db, agentAccount(pid(w)))).toBe(earned.get(pid(w)))
    expect(await balanceOf(store.db, NETWORK_FEES)).toBeGreaterThan(0)
    await store.close()
  })

  it('of a worker booking receipts loses none and counts none twice', async () => {
    const head = await Store.open(headDb)
    const receipts: SignedReceipt[] = await settledReceipts(head.db)
    await head.close()
    expect(receipts.length).toBe(USAGES * 2)
    const file = join(dir.path, 'receipts.json')
    await writeFile(file, JSON.stringify(receipts))
    const me = pid(workers[0])
    const workerDb = join(dir.path, 'worker.sqlite')

    const child = runChild(['ingest', workerDb, me, file, '300'])
    await waitForLines(child, (l) => l.filter((x) => x === 'booked').length === 3 && l.filter((x) => x.startsWith('mid')).length === 4)
    child.kill()
    await child.exited

    const store = await Store.open(workerDb)
    expect((await verifyChain(store.db)).ok).toBe(true)
    expect((await settledReceipts(store.db)).length).toBe(3)
    expect((await store.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM ledger'))?.n).toBe(3)
    const results = []
    for (const r of receipts) results.push(await ingestReceipt(store.db, me, r))
    expect(results.filter((r) => r === 'duplicate').length).toBe(3)
    expect(results.filter((r) => r === 'booked').length).toBe(USAGES * 2 - 3)
    const earned = earningsFromReceipts(receipts)
    for (const w of workers) expect(await balanceOf(store.db, agentAccount(pid(w)))).toBe(earned.get(pid(w)))
    const cons = await conservation(store.db)
    expect(cons.held).toBe(cons.mirrored)
    expect((await verifyChain(store.db)).ok).toBe(true)
    await store.close()
  })
})
