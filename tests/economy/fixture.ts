// Shared by the economy tests: tiny models, a real llama.cpp pipeline split over two rpc-server
// workers, and a 3-node mesh (head + two workers) whose receipt services are running.
import { createHash } from 'node:crypto'
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

export function pipelineContracts (head: MeshNode, workers: MeshNode[], modelSha256: string, ranges: Array<[number, number]>, prices: number[]): ContractRow[] {
  return workers.map((w, i) => ({
    id: `c-${i + 1}-${w.peerId.toString().slice(-6)}`,
    modelSha256,
    head: head.peerId.toString(),
    worker: w.peerId.toString(),
    layerStart: ranges[i][0],
    layerEnd: ranges[i][1],
    price: prices[i],
    expiresAt: Date.now() + 3_600_000,
    status: 'active'
  }))
}

/** Stands in for the market layer: every party holds the contracts. */
export async function recordContracts (nodes: MeshNode[], contracts: ContractRow[]): Promise<void> {
  for (const node of nodes) for (const c of contracts) await putContract(node.store.db, c)
}
