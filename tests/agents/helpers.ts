import { copyFile, mkdir } from 'node:fs/promises'
import { basename, join } from 'node:path'
import type { ModelRef } from '../../protocols/index.ts'
import { generateTestModel } from '../../runtime/engine/test-model.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import type { AgentSettings } from '../../runtime/config.ts'
import { ClawBot, type ClawBotOptions } from '../../agents/clawbot.ts'
import { modelRefFromGguf } from '../../skills/assembly/model.ts'
import type { Pipeline, PipelineRunner } from '../../skills/assembly/pipeline.ts'
import type { ModelRef as Ref, SignedContract } from '../../protocols/index.ts'
import { fullyPresent, startMesh, waitFor } from '../helpers/mesh.ts'

/** A 12-layer seeded-random llama GGUF (a few MB): the model the test heads assemble. */
export async function makeTestModel (dir: string, nLayer = 12): Promise<ModelRef & { path: string }> {
  await mkdir(dir, { recursive: true })
  const path = join(dir, `test-l${nLayer}.gguf`)
  await generateTestModel({ path, seed: 7, nEmbd: 64, nLayer, nHead: 2, nHeadKv: 1, nFf: 128, type: 'f32' })
  return await modelRefFromGguf(path)
}

/** A runner that records what the head asked for instead of starting llama.cpp. */
export class RecordingRunner implements PipelineRunner {
  readonly runs: Array<{ contracts: SignedContract[], model: Ref }> = []
  stopped = 0
  async run (contracts: SignedContract[], model: Ref): Promise<Pipeline> {
    this.runs.push({ contracts, model })
    return {
      complete: async (prompt) => `echo(${prompt})`,
      stop: async () => { this.stopped++ }
    }
  }
}

export interface BotMesh {
  nodes: MeshNode[]
  bots: ClawBot[]
}

/**
 * n nodes on loopback, node 0 the head (holding the model in its models folder), the rest workers
 * that each may lend `layersEach` layers of it (through maxMemoryBytes), all with an agent.
 */
export async function startBotMesh (root: string, n: number, model: ModelRef & { path: string }, opts: {
  layersEach: number
  agent?: (i: number) => Partial<AgentSettings>
  bot?: (i: number) => ClawBotOptions
  /** Nodes that get no agent (an attacker driving the market by hand). */
  bare?: number[]
}): Promise<BotMesh> {
  // Only the head (n0) holds the model; workers learn of it from the head's presence.
  await mkdir(join(root, 'n0', 'models'), { recursive: true })
  await copyFile(model.path, join(root, 'n0', 'models', basename(model.path)))
  const nodes = await startMesh(root, n, {})
  const bots: ClawBot[] = []
  for (let i = 0; i < n; i++) {
    if (opts.bare?.includes(i) === true) continue
    const settings = { proposalWindowMs: 1200, offerTtlMs: 20_000, maxMemoryBytes: model.layerBytes * opts.layersEach, ...opts.agent?.(i) }
    bots.push(await ClawBot.start(nodes[i], { departAfterMs: 4000, ...opts.bot?.(i), settings }))
  }
  await waitFor('every agent to hear every other', () => fullyPresent(nodes), 20_000)
  return { nodes, bots }
}

/** Layer ranges of the active contracts a head holds for a model, sorted. */
export async function headRanges (bot: ClawBot, sha: string): Promise<Array<{ start: number, end: number, worker: string, price: number }>> {
  const rows = await bot.book.contracts({ model: sha, head: bot.node.peerId.toString(), status: 'active' })
  return rows.map((c) => ({ start: c.signed.doc.start, end: c.signed.doc.end, worker: c.signed.doc.worker, price: c.signed.doc.price })).sort((a, b) => a.start - b.start)
}
