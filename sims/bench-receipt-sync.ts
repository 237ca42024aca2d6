/**
 * Receipt sync benchmark: two real libp2p nodes on 127.0.0.1 (one process, real sqlite). Node A holds
 * `shared + missing` settled receipts, node B only the `shared` ones; B dials A and syncs once. Prints,
 * per size, the time B takes to learn and book what it lacked, the reconciliation round trips, and the
 * bytes each way (frame payloads, without yamux/noise overhead). A second line syncs again when both
 * already agree: the steady-state cost of the periodic session.
 * Usage: npx tsx sims/bench-receipt-sync.ts [--shared 2000] [--missing 10,200,2000]
 */
import '../runtime/polyfill.ts'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { contractId, signContract, type ContractDoc, type SignedContract } from '../protocols/market.ts'
import { countersignAsHead, signAsWorker, type SignedReceipt } from '../protocols/receipts.ts'
import { ingestReceipt } from '../runtime/ledger/mirror.ts'
import { ReceiptService } from '../runtime/ledger/service.ts'
import { openLoopbackNode } from '../runtime/node/local-mesh.ts'
import type { MeshNode } from '../runtime/node/node.ts'

const { values } = parseArgs({ options: { shared: { type: 'string', default: '2000' }, missing: { type: 'string', default: '10,200,2000' } } })
const shared = Number(values.shared)
const sizes = values.missing.split(',').map(Number)
const head = await generateKeyPair('Ed25519')
const worker = await generateKeyPair('Ed25519')
const MODEL = 'ef'.repeat(32)

// Bystanders book only receipts under a contract signed by both: every receipt carries this one.
const serveUntil = Date.now() + 3_600_000
const doc: ContractDoc = { v: 1, net: 'bench', cfpId: 'bench-contract', model: MODEL, head: peerIdFromPrivateKey(head).toString(), worker: peerIdFromPrivateKey(worker).toString(), start: 0, end: 2, price: 1000, serveUntil }
const contract: SignedContract = { doc, headSig: (await signContract(head, doc)).sig, workerSig: (await signContract(worker, doc)).sig }

async function receipts (from: number, to: number): Promise<SignedReceipt[]> {
  const out: SignedReceipt[] = []
  for (let seq = from; seq < to; seq++) {
    const r = { contract: contractId(doc), seq, tokens: 1000, prior: (seq - 1) * 1000, layers: 2, modelHash: MODEL, price: 1000, head: doc.head, worker: doc.worker, ts: serveUntil - 3_600_000 + seq }
    out.push({ ...await countersignAsHead(head, await signAsWorker(worker, r)), contract })
  }
  return out
}

async function node (root: string, name: string): Promise<{ node: MeshNode, service: ReceiptService }> {
  const n = await openLoopbackNode(join(root, name), name, { networkId: 'bench' })
  await n.start()
  // Sessions are driven by hand: no connect-time or periodic sync.
  const service = new ReceiptService(n, { sync: { connectDelayMs: 3_600_000, intervalMs: 3_600_000 } })
  service.start()
  await service.sync!.ready
  return { node: n, service }
}

const base = await receipts(1, shared + 1)
console.log(`shared ${shared} receipts; B lacks N of A's`)
for (const missing of sizes) {
  const root = await mkdtemp(join(tmpdir(), 'clawmesh-bench-sync-'))
  const a = await node(root, 'a')
  const b = await node(root, 'b')
  try {
    const extra = await receipts(shared + 1, shared + missing + 1)
    for (const r of [...base, ...extra]) await ingestReceipt(a.node.store.db, a.node.peerId.toString(), r)
    for (const r of base) await ingestReceipt(b.node.store.db, b.node.peerId.toString(), r)
    await b.node.host!.dial(a.node.host!.getMultiaddrs()[0])
    // A session pulls at most maxPullPerSession; the node starts the next at once, as here.
    const first = await b.service.sync!.syncWith(a.node.peerId)
    for (let r = first; r.more;) {
      r = await b.service.sync!.syncWith(a.node.peerId)
      for (const k of ['booked', 'rounds', 'ms', 'bytesSent', 'bytesReceived'] as const) first[k] += r[k]
    }
    const again = await b.service.sync!.syncWith(a.node.peerId)
    const kb = (n: number): string => (n / 1024).toFixed(1)
    console.log(`N=${missing}: booked ${first.booked} in ${first.ms} ms, ${first.rounds} rounds, sent ${kb(first.bytesSent)} KiB, received ${kb(first.bytesReceived)} KiB` +
      ` | in sync: ${again.ms} ms, ${again.rounds} round, ${again.bytesSent + again.bytesReceived} B`)
  } finally {
    for (const x of [a, b]) { await x.service.stop(); await x.node.stop() }
    await rm(root, { recursive: true, force: true })
  }
}
