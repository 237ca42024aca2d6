// Anti-entropy for settled receipts between real libp2p nodes on 127.0.0.1 with real sqlite: a node
// that missed gossip catches up, both sides of a connection converge, and a sync peer is treated as
// untrusted (forged receipts, garbage frames, silence).
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { countersignAsHead, earningsFromReceipts, receiptAmount, receiptId, signAsWorker, type SignedReceipt } from '../../protocols/receipts.ts'
import { receiptSyncProtocolFor } from '../../protocols/receipt-sync.ts'
import { utf8 } from '../../protocols/encoding.ts'
import { createKey } from '../../runtime/gateway/keys.ts'
import { allBalances, verifyChain } from '../../runtime/ledger/ledger.ts'
import { ingestReceipt } from '../../runtime/ledger/mirror.ts'
import { ReceiptService } from '../../runtime/ledger/service.ts'
import { SyncRejected, type ReceiptSyncOptions } from '../../runtime/ledger/sync.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { openNode, stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { pipelineContracts, recordContracts, startEconomyMesh } from './fixture.ts'
import { receiptUnder, signedContract } from '../helpers/receipts.ts'
import type { SignedContract } from '../../protocols/market.ts'

const MODEL = 'cd'.repeat(32)
let dir: { path: string, cleanup: () => Promise<void> }
const nodes: MeshNode[] = []
const services: ReceiptService[] = []

beforeEach(async () => { dir = await tempDir('clawmesh-sync-') })
afterEach(async () => {
  for (const s of services.splice(0)) await s.stop()
  await stopAll(nodes.splice(0))
  await dir.cleanup()
})

const peer = (k: PrivateKey): string => peerIdFromPrivateKey(k).toString()

const BASE = Date.now()
const contracts = new Map<string, SignedContract>()

/** The contract named `name` between head and worker, signed by both (the same one on every call). */
async function contractOf (head: PrivateKey, worker: PrivateKey, name: string): Promise<SignedContract> {
  const key = `${peer(head)}/${peer(worker)}/${name}`
  if (!contracts.has(key)) contracts.set(key, await signedContract(head, worker, { model: MODEL, price: 1000, serveUntil: BASE + 3_600_000, cfpId: `contract-${name}` }))
  return contracts.get(key)!
}

/** Receipts seq from..to-1 of one contract, 1000 tokens each at 1000 credits per M layer-tokens over 2 layers: 2 credits each. */
async function receipts (head: PrivateKey, worker: PrivateKey, contract: string, from: number, to: number): Promise<SignedReceipt[]> {
  const c = await contractOf(head, worker, contract)
  const out: SignedReceipt[] = []
  for (let seq = from; seq < to; seq++) out.push(await receiptUnder(head, worker, c, { seq, tokens: 1000, prior: (seq - 1) * 1000, ts: BASE + seq * 10 }))
  return out
}

/** A lone node (no bootstrap) with its receipt service (sync on) running. */
async function lone (name: string, sync: ReceiptSyncOptions = {}): Promise<{ node: MeshNode, service: ReceiptService }> {
  const node = await openNode(join(dir.path, name), name)
  nodes.push(node)
  await node.start()
  const service = new ReceiptService(node, { sync })
  services.push(service)
  service.start()
  await service.sync!.ready
  return { node, service }
}

async function book (node: MeshNode, docs: SignedReceipt[]): Promise<void> {
  for (const d of docs) await ingestReceipt(node.store.db, node.peerId.toString(), d)
}

const settledCount = async (node: MeshNode): Promise<number> =>
  (await node.store.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM receipts WHERE status = 'settled'"))?.n ?? 0

/** What every node can check about every agent: its balance from the receipts it has booked. */
async function agentBalances (node: MeshNode): Promise<Record<string, number>> {
  return Object.fromEntries([...await allBalances(node.store.db)].filter(([a]) => a.startsWith('agent:')))
}

describe('receipt sync', () => {
  it('a node that was offline while receipts were gossiped catches up on restart', async () => {
    const mesh = await startEconomyMesh(dir.path, 4)
    nodes.push(...mesh.nodes)
    services.push(...mesh.services)
    const [head, w1, w2, bystander] = mesh.nodes
    const contracts = await pipelineContracts(head, [w1, w2], MODEL, [[0, 2], [2, 5]], [1_000_000, 700_000])
    await recordContracts(mesh.nodes, contracts)
    const { key } = await createKey(head.store.db, { credits: 10_000_000 })
    const serve = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        await mesh.services[0].propose(await mesh.services[0].book.recordUsage({ keyId: key.id, modelSha256: MODEL, promptTokens: 20 + i, completionTokens: 7, contracts, fee: 1 }))
      }
    }
    await serve(5)
    await waitFor('the first receipts everywhere', async () => (await Promise.all(mesh.nodes.map(settledCount))).every((n) => n === 10))

    // The bystander goes down; the head keeps serving and gossiping settled receipts.
    await mesh.services[3].stop()
    await bystander.stop()
    await serve(20)
    await waitFor('the receipts of the downtime on the nodes that were up', async () => (await Promise.all([head, w1, w2].map(settledCount))).every((n) => n === 50))
    const truth = await agentBalances(head)
    expect(await agentBalances(w1)).toEqual(truth)
    expect(Object.keys(truth)).toHaveLength(2)

    const back = await openNode(join(dir.path, 'n3'), 'n3', { bootstrap: head.multiaddrs() })
    nodes.push(back)
    const started = Date.now()
    await back.start()
    const service = new ReceiptService(back)
    services.push(service)
    service.start()
    await waitFor('the restarted node to catch up', async () => await settledCount(back) === 50, 10_000)
    const took = Date.now() - started
    for (const node of [head, w1, w2, back]) expect(await agentBalances(node)).toEqual(truth)
    // What it missed came by sync (gossip keeps no history for late joiners), booked on its own chain.
    expect(service.sync!.stats.booked).toBe(40)
    expect(Object.values(service.sync!.stats.rejected).every((n) => n === 0)).toBe(true)
    expect((await verifyChain(back.store.db)).ok).toBe(true)
    // About 1 s on an idle 2-core machine; the margin is for CI's neighbours.
    expect(took).toBeLessThan(8000)
    console.log(`receipt sync: restarted node booked 40 missed receipts ${took} ms after start; sent ${service.sync!.stats.bytesSent} B, received ${service.sync!.stats.bytesReceived} B`)
  })

  it('two nodes missing disjoint receipts both converge on connecting', async () => {
    const [head, w1, w2] = await Promise.all([0, 1, 2].map(async () => await generateKeyPair('Ed25519')))
    const shared = await receipts(head, w1, 'c-a', 1, 101)
    const onlyA = [...await receipts(head, w1, 'c-a', 101, 201), ...await receipts(head, w2, 'c-b', 1, 51)]
    const onlyB = await receipts(head, w2, 'c-b', 51, 201)
    const a = await lone('a')
    const b = await lone('b')
    await book(a.node, [...shared, ...onlyA])
    await book(b.node, [...onlyB, ...shared])

    const started = Date.now()
    await b.node.host!.dial(a.node.host!.getMultiaddrs()[0])
    await waitFor('both nodes to hold every receipt', async () => await settledCount(a.node) === 400 && await settledCount(b.node) === 400, 15_000)
    const took = Date.now() - started
    const all = [...shared, ...onlyA, ...onlyB]
    const expected = earningsFromReceipts(all)
    for (const n of [a.node, b.node]) {
      const balances = await allBalances(n.store.db)
      expect(balances.get(`agent:${peer(w1)}`)).toBe(expected.get(peer(w1)))
      expect(balances.get(`agent:${peer(w2)}`)).toBe(expected.get(peer(w2)))
      expect(balances.get(`head:${peer(head)}`)).toBe(-all.reduce((s, r) => s + receiptAmount(r.receipt), 0))
    }
    expect(a.service.sync!.stats.booked).toBe(onlyB.length)
    expect(b.service.sync!.stats.booked).toBe(onlyA.length)
    const bytes = (s: ReceiptService): number => s.sync!.stats.bytesSent + s.sync!.stats.bytesReceived
    console.log(`receipt sync: 2 nodes, 100 shared, 150 missing each way, converged in ${took} ms; ${bytes(a.service)} B on the wire`)
  })

  it('connected nodes that missed gossip converge at the next periodic session', async () => {
    const [head, worker] = await Promise.all([0, 1].map(async () => await generateKeyPair('Ed25519')))
    // No connect-time sync: only the periodic session (every 400 ms ±25 % here) can bring them.
    const a = await lone('a', { connectDelayMs: 3_600_000, intervalMs: 400 })
    const b = await lone('b', { connectDelayMs: 3_600_000, intervalMs: 400 })
    await b.node.host!.dial(a.node.host!.getMultiaddrs()[0])
    // Booked after connecting and never gossiped: as if both had lost the gossip of the other's receipts.
    await book(a.node, await receipts(head, worker, 'c-1', 1, 21))
    await book(b.node, await receipts(head, worker, 'c-1', 21, 31))
    await waitFor('the periodic sessions to converge both nodes', async () => await settledCount(a.node) === 30 && await settledCount(b.node) === 30, 10_000)
    expect(await agentBalances(a.node)).toEqual(await agentBalances(b.node))
    expect((await agentBalances(a.node))[`agent:${peer(worker)}`]).toBe(60)
  })

  it('a forged or tampered receipt from a sync peer is refused with its reason, not booked', async () => {
    const [head, worker, stranger] = await Promise.all([0, 1, 2].map(async () => await generateKeyPair('Ed25519')))
    const genuine = await receipts(head, worker, 'c-1', 1, 6)
    const [t6, g8, g9] = await receipts(head, worker, 'c-1', 6, 10)
    // Tampered: more tokens than the worker signed for. Forged: the head's countersignature is someone else's.
    const tampered = { ...t6, receipt: { ...t6.receipt, tokens: 900_000 } }
    const forged = { ...g9, headSig: (await countersignAsHead(stranger, await signAsWorker(worker, { ...g9.receipt, head: peer(stranger) }))).headSig }
    const evil = await lone('evil')
    const victim = await lone('victim')
    await book(evil.node, genuine)
    // The serving peer's database holds them as settled (a corrupted or malicious peer), so its honest
    // sync code offers and serves them; one row's id does not even match its document.
    const insert = async (id: string, contract: string, seq: number, doc: unknown): Promise<void> => {
      await evil.node.store.db.run("INSERT INTO receipts (id, contract, seq, head, worker, tokens, amount, usage_id, status, document, created_at, settled_at) VALUES (?, ?, ?, ?, ?, 1, 1, NULL, 'settled', ?, 0, 0)",
        [id, contract, seq, peer(head), peer(worker), JSON.stringify(doc)])
    }
    await insert(receiptId(tampered.receipt), 'x-1', 1, tampered)
    await insert(receiptId(forged.receipt), 'x-2', 1, forged)
    // A genuine receipt, but not the one asked for: whatever a peer sends must answer our request.
    await insert('ab'.repeat(32), 'x-3', 1, g8)
    // Both signatures genuine, but it neither carries its contract nor names one the victim holds.
    const { contract: _, ...bare } = (await receipts(head, worker, 'c-1', 10, 11))[0]
    await insert(receiptId(bare.receipt), 'x-4', 1, bare)

    await victim.node.host!.dial(evil.node.host!.getMultiaddrs()[0])
    const stats = victim.service.sync!.stats
    await waitFor('the victim to have judged every offered receipt', () => stats.booked + stats.rejected['bad-receipt'] + stats.rejected.unrequested === 9, 10_000)
    expect(stats.booked).toBe(5)
    expect(stats.rejected['bad-receipt']).toBe(3)
    expect(stats.rejected.unrequested).toBe(1)
    expect(stats.refused).toMatchObject({ signature: 2, 'no-contract': 1 })
    const held = await victim.node.store.db.all<{ id: string }>('SELECT id FROM receipts ORDER BY id')
    expect(held.map((r) => r.id)).toEqual(genuine.map((r) => receiptId(r.receipt)).sort())
    expect((await allBalances(victim.node.store.db)).get(`agent:${peer(worker)}`)).toBe(earningsFromReceipts(genuine).get(peer(worker)))
    expect((await verifyChain(victim.node.store.db)).ok).toBe(true)
  })

  it('refuses oversized, garbage and silent frames without crashing, and still syncs afterwards', async () => {
    const [head, worker] = await Promise.all([0, 1].map(async () => await generateKeyPair('Ed25519')))
    // Connect-time sync off for both: this test drives every session itself.
    const server = await lone('server', { connectDelayMs: 3_600_000, frameTimeoutMs: 800 })
    const client = await lone('client', { connectDelayMs: 3_600_000 })
    await book(server.node, await receipts(head, worker, 'c-1', 1, 4))
    await client.node.host!.dial(server.node.host!.getMultiaddrs()[0])
    const proto = receiptSyncProtocolFor('test')
    const rejected = server.service.sync!.stats.rejected

    /** Opens a raw session to the server, lets `write` misbehave, and waits for the server to hang up. */
    const attack = async (write: (stream: Awaited<ReturnType<NonNullable<MeshNode['host']>['dialProtocol']>>) => Promise<void>): Promise<void> => {
      const stream = await client.node.host!.dialProtocol(server.node.peerId, proto)
      await write(stream)
      await waitFor('the server to close the stream', () => stream.status !== 'open' || stream.readStatus !== 'readable', 5_000)
    }
    // A length prefix of 64 MiB: refused before any of it is buffered.
    await attack(async (s) => { s.send(Uint8Array.from([0x80, 0x80, 0x80, 0x20, 1, 2, 3])) })
    await attack(async (s) => { await lpStream(s).write(utf8('{"t": "rec", "ranges": [')) })
    await attack(async (s) => { await lpStream(s).write(utf8(JSON.stringify({ t: 'rec', ranges: 'everything' }))) })
    await attack(async (s) => { await lpStream(s).write(utf8(JSON.stringify({ t: 'docs', receipts: [] }))) })
    await attack(async (s) => { await lpStream(s).write(utf8(JSON.stringify({ t: 'rec', ranges: [{ l: [5, ''], u: [1, ''], fp: '0'.repeat(32) }] }))) })
    await attack(async () => {}) // says nothing
    expect(rejected.oversized).toBe(1)
    expect(rejected.malformed).toBe(3)
    expect(rejected['out-of-order']).toBe(1)
    expect(rejected.timeout).toBe(1)

    // A responder that answers with junk is refused by the initiator the same way.
    const junk = await lone('junk', { connectDelayMs: 3_600_000 })
    await junk.node.host!.unhandle(proto)
    await junk.node.host!.handle(proto, async (stream) => {
      const lp = lpStream(stream)
      await lp.read()
      stream.send(Uint8Array.from([0xff, 0xff, 0xff, 0xff, 0x0f]))
    })
    await client.node.host!.dial(junk.node.host!.getMultiaddrs()[0])
    await expect(client.service.sync!.syncWith(junk.node.peerId)).rejects.toThrow(SyncRejected)
    expect(client.service.sync!.stats.rejected.oversized).toBe(1)

    const report = await client.service.sync!.syncWith(server.node.peerId)
    expect(report.booked).toBe(3)
    expect(await settledCount(client.node)).toBe(3)
  })
})
