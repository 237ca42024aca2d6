// Shared by the economy tests: tiny models, a real llama.cpp pipeline split over two rpc-server
// workers, and a 3-node mesh (head + two workers) whose receipt services are running.
import { createHash, randomBytes } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { TEST_MODEL_PRESETS, generateTestModel } from '../../runtime/engine/test-model.ts'
import { computeTensorSplit } from '../../runtime/engine/split.ts'
import { freePort, startLlamaServer, startRpcServer, type LlamaServerHandle, type RpcServerHandle } from '../../runtime/engine/llama-procs.ts'
import type { LlamaBuild } from '../../runtime/engine/build.ts'
import { putContract, type ContractRow } from '../../runtime/ledger/contracts.ts'
import { ReceiptService, type ReceiptServiceOptions } from '../../runtime/ledger/service.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import type { ConfigInput } from '../../runtime/config.ts'
import { contractId, signContract, type ContractDoc, type SignedContract } from '../../protocols/market.ts'
import { ReceiptProposalKind, ReceiptSignatureKind, ReceiptKind, FraudReportKind } from '../../protocols/receipts.ts'
import { fullyPresent, startMesh, waitFor } from '../helpers/mesh.ts'

export const TINY = TEST_MODEL_PRESETS.tiny
export const MODEL_NAME = 'clawmesh-tiny'

export async function tinyModel (dir: string, seed: number): Promise<{ path: string, sha256: string }> {
  const path = join(dir, `tiny-${seed}.gguf`)
  await generateTestModel({ path, seed, ...TINY })
  return { path, sha256: createHash('sha256').update(await readFile(path)).digest('hex') }
}

export interface SplitPipeline {
  rpc: RpcServerHandle[]
  server: LlamaServerHandle
  stop: () => Promise<void>
}

/** llama-server whose layers run on one rpc-server per range (the workers' processes). */
export async function startSplitPipeline (build: LlamaBuild, model: string, ranges: Array<[number, number]>): Promise<SplitPipeline> {
  const rpc: RpcServerHandle[] = []
  try {
    for (let i = 0; i < ranges.length; i++) rpc.push(await startRpcServer({ bin: build.rpcServer, port: await freePort(), threads: 1 }))
    const split = computeTensorSplit(ranges.map(([start, end], i) => ({ worker: rpc[i].endpoint, start, end })), TINY.nLayer)
    const server = await startLlamaServer({
      bin: build.llamaServer, model, port: await freePort(), ctxSize: 2048,
      extraArgs: ['--rpc', split.devices.join(','), ...split.args, '--fit', 'off']
    })
    return { rpc, server, stop: async () => { await server.stop(); await Promise.all(rpc.map(async (r) => { await r.stop() })) } }
  } catch (err) {
    await Promise.all(rpc.map(async (r) => { await r.stop() }))
    throw err
  }
}

export interface EconomyMesh {
  nodes: MeshNode[]
  services: ReceiptService[]
}

/** Head + workers with receipt services, once every node hears the others on the receipt topics. */
export async function startEconomyMesh (root: string, n: number, opts: ReceiptServiceOptions = {}, config: Partial<ConfigInput> = {}): Promise<EconomyMesh> {
  const nodes = await startMesh(root, n, config)
  await waitFor('a fully present mesh', () => fullyPresent(nodes))
  const services = nodes.map((node) => new ReceiptService(node, { tickMs: 100, ...opts }))
  for (const s of services) s.start()
  const topics = [ReceiptProposalKind, ReceiptSignatureKind, ReceiptKind, FraudReportKind].map((k) => k.kind)
  await waitFor('receipt topic subscriptions', () => nodes.every((node) => topics.every((kind) => {
    const subs = node.host!.services.pubsub.getSubscribers(node.bus!.topic(kind)).map(String)
    return nodes.every((other) => other === node || subs.includes(other.peerId.toString()))
  })))
  return { nodes, services }
}

/**
 * The pipeline's contracts as the market would leave them: each signed by the head and its worker
 * (bystanders book only receipts under a contract they can verify), id = the signed document's.
 */
export async function pipelineContracts (head: MeshNode, workers: MeshNode[], modelSha256: string, ranges: Array<[number, number]>, prices: number[], expiresAt = Date.now() + 3_600_000): Promise<PipelineContract[]> {
  return await Promise.all(workers.map(async (w, i) => {
    const doc: ContractDoc = {
      v: 1, net: 'test', cfpId: `fixture-${i + 1}-${randomBytes(4).toString('hex')}`, model: modelSha256, head: head.peerId.toString(), worker: w.peerId.toString(),
      start: ranges[i][0], end: ranges[i][1], price: prices[i], serveUntil: expiresAt
    }
    const signed: SignedContract = { doc, headSig: (await signContract(head.key, doc)).sig, workerSig: (await signContract(w.key, doc)).sig }
    return {
      id: contractId(doc), modelSha256, head: doc.head, worker: doc.worker, layerStart: doc.start, layerEnd: doc.end,
      price: doc.price, expiresAt, status: 'active', document: JSON.stringify(signed)
    }
  }))
}

export type PipelineContract = ContractRow & { document: string }

/** Stands in for the market layer: every party holds the contracts. */
export async function recordContracts (nodes: MeshNode[], contracts: PipelineContract[]): Promise<void> {
  for (const node of nodes) for (const c of contracts) await putContract(node.store.db, c, c.document)
}
