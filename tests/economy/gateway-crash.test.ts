// A head killed (SIGKILL) while its gateway answers a burst of paid requests: every request a client
// got a whole answer for is billed exactly once, whatever was in flight. The gateway commits a
// request's usage (grouped with the others finishing at the same time) before the answer, or a
// stream's closing events, goes out; requests cut off by the kill may be billed or not, never twice.
// A gateway started again on the same database continues every contract's receipt sequence.
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { receiptAmount, type Receipt } from '../../protocols/receipts.ts'
import { Store } from '../../runtime/store/store.ts'
import { loadOrCreateIdentity } from '../../runtime/node/identity.ts'
import { HeadBook } from '../../runtime/ledger/head-book.ts'
import { putContract } from '../../runtime/ledger/contracts.ts'
import { createKey } from '../../runtime/gateway/keys.ts'
import { Gateway } from '../../runtime/gateway/server.ts'
import { startInstantUpstream } from '../../sims/lib/instant-upstream.ts'
import { tempDir } from '../helpers/mesh.ts'

const CHILD = fileURLToPath(new URL('../helpers/gateway-child.ts', import.meta.url))
const MODEL = 'ef'.repeat(32)
const MAX_REQUESTS = 400
const KILL_AFTER = 20

let dir: { path: string, cleanup: () => Promise<void> }

beforeAll(async () => { dir = await tempDir('clawmesh-gw-crash-') })
afterAll(async () => { await dir.cleanup() })

/** One request; resolves true once the client holds the whole answer (a stream: its [DONE]). */
async function ask (url: string, secret: string, maxTokens: number, stream: boolean): Promise<boolean> {
  try {
    const r = await fetch(`${url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${secret}` },
      body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: maxTokens, stream })
    })
    const text = await r.text()
    if (r.status !== 200) return false
    if (stream) return text.includes('data: [DONE]')
    return (JSON.parse(text) as { usage?: { completion_tokens?: number } }).usage?.completion_tokens === maxTokens
  } catch {
    return false // cut off by the kill
  }
}

describe('a head killed while its gateway answers', () => {
  it('bills every answered request exactly once, and a restart continues the receipt sequences', async () => {
    const dbPath = join(dir.path, 'head.sqlite')
    const home = join(dir.path, 'head')
    const headKey = (await loadOrCreateIdentity(home)).key
    const head = peerIdFromPrivateKey(headKey).toString()
    let store = await Store.open(dbPath)
    for (const i of [0, 1]) {
      const worker = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
      await putContract(store.db, { id: `c${i}`, modelSha256: MODEL, head, worker, layerStart: i * 2, layerEnd: i * 2 + 2, price: 1_000_000, expiresAt: Date.now() + 3_600_000, status: 'active' })
    }
    const { key, secret } = await createKey(store.db, { credits: 1_000_000_000, ratePerMin: 1_000_000, burst: 10_000 })
    await store.close()

    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, dbPath, home, MODEL], { stdio: ['ignore', 'pipe', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString() })
    const exited = new Promise<number | null>((resolve) => child.on('close', resolve))
    const url = await new Promise<string>((resolve, reject) => {
      let out = ''
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString()
        const m = /listening (\S+)\n/.exec(out)
        if (m !== null) resolve(m[1])
      })
      void exited.then(() => { reject(new Error(`gateway child exited before listening: ${stderr}`)) })
    })

    // Each request is told apart by its max_tokens (the instant upstream serves exactly that many).
    // A new one starts every few milliseconds until the kill, so it lands while some are answered, some
    // committing, some streaming and some just sent.
    const answered = new Set<number>()
    const launched: Array<Promise<void>> = []
    let killed = false
    for (let i = 0; i < MAX_REQUESTS && !killed; i++) {
      const tokens = i + 1
      launched.push((async () => {
        if (!await ask(url, secret, tokens, i % 2 === 0)) return
        answered.add(tokens)
        if (answered.size === KILL_AFTER) { killed = true; child.kill('SIGKILL') }
      })())
      await new Promise((resolve) => setTimeout(resolve, 4))
    }
    await Promise.all(launched)
    expect(killed).toBe(true)
    expect(await exited).toBe(null) // killed, not finished

    store = await Store.open(dbPath)
    try {
      const billed = (await store.db.all<{ id: string, c: number }>('SELECT id, completion_tokens AS c FROM usage WHERE key_id = ?', [key.id]))
      const tokens = billed.map((u) => u.c)
      expect(new Set(tokens).size).toBe(tokens.length) // none twice
      for (const t of answered) expect(tokens).toContain(t) // none answered and lost
      for (const t of tokens) expect(t).toBeGreaterThanOrEqual(1)
      for (const t of tokens) expect(t).toBeLessThanOrEqual(launched.length)

      // Every recorded usage has its receipts, and each contract's receipts run 1..n with prior = the sum before.
      for (const u of billed) expect((await store.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM receipts WHERE usage_id = ?', [u.id]))?.n).toBe(2)
      const checkSequences = async (): Promise<number> => {
        let n = 0
        for (const c of ['c0', 'c1']) {
          const rows = await store.db.all<{ seq: number, tokens: number, document: string }>('SELECT seq, tokens, document FROM receipts WHERE contract = ? ORDER BY seq', [c])
          let prior = 0
          for (const [i, r] of rows.entries()) {
            const receipt = (JSON.parse(r.document) as { receipt: Receipt }).receipt
            expect(r.seq).toBe(i + 1)
            expect(receipt.prior).toBe(prior)
            prior += r.tokens
          }
          n = rows.length
        }
        return n
      }
      const before = await checkSequences()
      expect(before).toBe(billed.length)

      // Restarted on the same database: the next request continues the sequences and owes what it costs.
      const upstream = await startInstantUpstream({ tokens: 1_000_000 })
      const gateway = new Gateway({ db: store.db, head, book: new HeadBook(store.db, headKey), upstream: upstream.url, modelSha256: MODEL, modelName: 'm', networkFeePerMTok: 100_000 })
      await gateway.start()
      try {
        expect(await ask(gateway.url, secret, 500, true)).toBe(true)
        await gateway.drain()
      } finally {
        await gateway.stop()
        await upstream.close()
      }
      expect(await checkSequences()).toBe(before + 1)
      const owed = await new HeadBook(store.db, headKey).funds(key.id)
      const receipts = await store.db.all<{ document: string }>('SELECT document FROM receipts')
      const fees = await store.db.get<{ f: number }>('SELECT SUM(fee) AS f FROM usage')
      expect(owed.pending).toBe(receipts.reduce((s, r) => s + receiptAmount((JSON.parse(r.document) as { receipt: Receipt }).receipt), 0) + (fees?.f ?? 0))
    } finally {
      await store.close()
    }
  })
})
