import { createHash } from 'node:crypto'
import { z } from 'zod'
import { defineKind, type MessageKind } from '../../protocols/index.ts'
import type { MeshNode } from '../../runtime/node/node.ts'

/**
 * Market-like test kinds: the runtime board must render any kind whose body is { thread, text, terms }
 * (the shape the agents' market messages share) without knowing the market protocol.
 */
const Body = z.object({ thread: z.string(), text: z.string(), terms: z.record(z.string(), z.unknown()) }).strict()
export type Body = z.infer<typeof Body>
const kind = (name: string): MessageKind<Body> => defineKind(name, Body, 10 * 60_000)
export const KINDS = {
  cfp: kind('test-cfp'),
  propose: kind('test-propose'),
  counter: kind('test-counter'),
  accept: kind('test-accept'),
  contract: kind('test-contract')
}

export const MODEL_SHA = createHash('sha256').update('board-test-model').digest('hex')
export const THREAD = 'cfp-7Qx2mLd9'

export function subscribeAll (nodes: MeshNode[]): void {
  for (const node of nodes) for (const k of Object.values(KINDS)) node.bus!.subscribe(k)
}

/** Publishes a negotiation through the real, signed gossip bus, one message at a time, in order. */
export async function negotiate (head: MeshNode, a: MeshNode, b: MeshNode): Promise<number> {
  const id = (n: MeshNode): string => n.peerId.toString()
  const until = Date.now() + 6 * 3_600_000
  const steps: Array<[MeshNode, MessageKind<Body>, Body]> = [
    [head, KINDS.cfp, { thread: THREAD, text: 'Looking for two workers to serve layers 0–31 of mesh-llama-8b for the next six hours. Budget 10 credits per million layer-tokens.', terms: { model: MODEL_SHA, modelRef: { sha256: MODEL_SHA, name: 'mesh-llama-8b', nLayer: 32, architecture: 'llama' }, start: 0, end: 32, budget: 10, serveUntil: until } }],
    [a, KINDS.propose, { thread: THREAD, text: 'I can take the first half on my RTX 3060: 12 GiB free, 2 ms from you.', terms: { to: id(head), start: 0, end: 16, price: 4 } }],
    [b, KINDS.propose, { thread: THREAD, text: 'Second half here, CPU only but 64 GiB of RAM. 5.5 per million.', terms: { to: id(head), start: 16, end: 32, price: 5.5 } }],
    [head, KINDS.counter, { thread: THREAD, text: 'Birch offers 4 for the same work. Would you do 4.5?', terms: { to: id(b), round: 1, start: 16, end: 32, price: 4.5 } }],
    [b, KINDS.accept, { thread: THREAD, text: 'Deal at 4.5: my floor is 3.', terms: { to: id(head), start: 16, end: 32, price: 4.5 } }],
    [head, KINDS.contract, { thread: THREAD, text: 'Contracts signed: birch serves 0–15 at 4, cedar 16–31 at 4.5, until tonight.', terms: { contracts: 2, serveUntil: until } }]
  ]
  for (const [from, k, body] of steps) await from.bus!.publish(k, body)
  return steps.length
}

/** Contract rows as the negotiation layer stores them: the shard map's source. */
export async function storeContracts (head: MeshNode, a: MeshNode, b: MeshNode): Promise<void> {
  const now = Date.now()
  const rows = [
    ['ctr-birch-1', a, 0, 16, 4, 'active'],
    ['ctr-cedar-1', b, 16, 32, 4.5, 'active']
  ] as const
  for (const [id, worker, start, end, price, status] of rows) {
    await head.store.db.run(
      `INSERT INTO contracts (id, model_sha256, head, worker, layer_start, layer_end, price, expires_at, status, document, created_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [id, MODEL_SHA, head.peerId.toString(), worker.peerId.toString(), start, end, price, now + 6 * 3_600_000, status, JSON.stringify({ cfpId: THREAD, start, end, price }), now])
  }
}

/** A few hash-chained ledger entries over the last hours: a grant, a payment out, earnings in. */
export async function storeLedger (head: MeshNode, a: MeshNode, b: MeshNode): Promise<void> {
  const acct = (n: MeshNode): string => `peer:${n.peerId.toString()}`
  const hour = 3_600_000
  const now = Date.now()
  const entries: Array<[number, string, string, number, string, unknown]> = [
    [now - 7 * hour, 'mint', acct(head), 1000, 'welcome grant', null],
    [now - 5 * hour, acct(b), acct(head), 240, 'served layers 0–7 of qwen-14b for cedar', { tokens: 60000, layers: 8 }],
    [now - 3.5 * hour, acct(a), acct(head), 410, 'served layers 8–23 of qwen-14b for birch', { tokens: 25600, layers: 16 }],
    [now - 2 * hour, acct(head), acct(a), 128, 'paid birch: layers 0–15 of mesh-llama-8b', { tokens: 2000, layers: 16 }],
    [now - 1 * hour, acct(b), acct(head), 515, 'served layers 0–31 of phi-mini for cedar', { tokens: 16100, layers: 32 }]
  ]
  let prev = '0'.repeat(64)
  let seq = 1
  for (const [ts, debit, credit, amount, memo, receipt] of entries) {
    const hash = createHash('sha256').update(`${prev}|${ts}|${debit}|${credit}|${amount}|${memo}`).digest('hex')
    await head.store.db.run('INSERT INTO ledger (seq, ts, debit, credit, amount, memo, receipt, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
      [seq++, ts, debit, credit, amount, memo, receipt === null ? null : JSON.stringify(receipt), prev, hash])
    prev = hash
  }
}

export async function recordDecisions (head: MeshNode): Promise<void> {
  await head.activity.record('decision', 'Called for proposals: mesh-llama-8b, layers 0–31', { why: 'an owner request needs the model and no single peer holds enough memory' })
  await head.activity.record('decision', 'Countered cedar at 4.5', { why: 'birch asked 4 for the same number of layers; cedar\'s floor is public at 3' })
  await head.activity.record('decision', 'Signed two contracts for mesh-llama-8b', { why: 'covers all 32 layers at 8.5 total, under the budget of 10' })
}
