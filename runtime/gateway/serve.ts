import type { MeshNode } from '../node/node.ts'
import type { ReceiptService } from '../ledger/service.ts'
import { Gateway } from './server.ts'
import { SpotChecker, type Replay } from './spot-check.ts'

export interface PipelineEndpoint {
  /** Root URL of the pipeline's OpenAI-compatible server (the head's llama-server), without /v1. */
  url: string
  modelSha256: string
  /** The id clients send as `model`. */
  modelName: string
  /** The contracts the pipeline runs on (only these are billed). */
  contractIds?: readonly string[]
  /** Other providers of single ranges, for spot checks (needs gateway.spotCheckProbability > 0); read at each check. */
  replays?: Replay[]
}

/**
 * Starts the paid API of a head from its config's `gateway` section, billing through the node's
 * receipt service (which must be started: workers sign over gossip). Returns the running gateway,
 * selling this pipeline's model; a node sells its other models on the same gateway (Gateway.serve),
 * not on gateways of their own (one port, and one place where each key's reservations count).
 */
export async function startPaidApi (node: MeshNode, service: ReceiptService, pipeline: PipelineEndpoint): Promise<Gateway> {
  const cfg = node.config.gateway
  if (cfg === undefined) throw new Error(`${node.home}: no "gateway" section in config.json; the paid API is off`)
  // The replays list is read at each check: a caller may fill it later (clawmesh start does, as contracts come).
  const spotChecker = cfg.spotCheckProbability > 0 && pipeline.replays !== undefined
    ? new SpotChecker({ probability: cfg.spotCheckProbability, replays: pipeline.replays ?? [] }, pipeline.url, async (r) => await service.reportFraud(r))
    : undefined
  const gateway = new Gateway({
    db: node.store.db,
    head: node.peerId.toString(),
    book: service.book,
    upstream: pipeline.url,
    contractIds: pipeline.contractIds,
    modelSha256: pipeline.modelSha256,
    modelName: pipeline.modelName,
    host: cfg.host,
    port: cfg.port,
    networkFeePerMTok: cfg.networkFeePerMTok,
    defaultMaxTokens: cfg.defaultMaxTokens,
    maxTokensCap: cfg.maxTokensCap,
    onRecorded: async (rec) => { await service.propose(rec) },
    spotChecker,
    serving: node.serving,
    log: node.log.child('gateway')
  })
  await gateway.start()
  node.log.info('paid API listening', { url: `${gateway.url}/v1`, model: pipeline.modelName })
  return gateway
}
