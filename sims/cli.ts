import { join, relative, resolve } from 'node:path'
import { loadScenario } from './scenario.ts'
import type { LogLevel } from '../runtime/log.ts'
import { runScenario, type SimMetrics } from './world.ts'
import { writeReport } from './report.ts'
import { runMeshScenario, type MeshMetrics } from './mesh/run.ts'
import { writeMeshReport } from './mesh/report.ts'

export interface SimCliOptions {
  out?: string
  seed?: number
  agents?: number
  quiet?: boolean
  /** sim (default): in-process bus on a simulated clock; libp2p: up to 20 real ClawBots on loopback. */
  transport?: 'sim' | 'libp2p'
  /** libp2p transport: seconds of outside demand. */
  demandSeconds?: number
  /** libp2p transport: keep the agents' homes. */
  keep?: boolean
  /** libp2p transport: the nodes' log level (default silent). */
  logLevel?: LogLevel
}

const ROOT = resolve(import.meta.dirname, '..')

/** `clawmesh sim <scenario>`: runs it, writes report.md + charts + metrics.json, returns where. */
export async function simCommand (name: string, opts: SimCliOptions = {}): Promise<{ dir: string, metrics: SimMetrics, baseline?: SimMetrics }> {
  const { scenario, file } = await loadScenario(name)
  const progress = opts.quiet === true ? undefined : (line: string) => process.stderr.write(`[sim ${scenario.name}] ${line}\n`)
  const metrics = await runScenario(scenario, { seed: opts.seed, agents: opts.agents, progress })
  let baseline: SimMetrics | undefined
  if (scenario.baseline && scenario.adversaries.cartel.members > 0) {
    progress?.('baseline run: the same seed with the cartel pricing honestly')
    baseline = await runScenario(scenario, { seed: opts.seed, agents: opts.agents, cartelHonest: true, progress })
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19)
  const dir = resolve(opts.out ?? join(ROOT, 'sims', 'out', `${scenario.name}-${stamp}`))
  const args = [name, opts.seed !== undefined ? `--seed ${opts.seed}` : '', opts.agents !== undefined ? `--agents ${opts.agents}` : ''].filter((x) => x !== '').join(' ')
  writeReport(dir, { scenario, metrics, baseline, file: relative(ROOT, file), command: `clawmesh sim ${args}` })
  return { dir, metrics, baseline }
}

/** `clawmesh sim <scenario> --transport libp2p`: the scenario's cast as real ClawBots on loopback. */
export async function meshSimCommand (name: string, opts: SimCliOptions = {}): Promise<{ dir: string, metrics: MeshMetrics }> {
  const { scenario, file } = await loadScenario(name)
  const progress = opts.quiet === true ? undefined : (line: string) => process.stderr.write(`[sim ${scenario.name} libp2p] ${line}\n`)
  const metrics = await runMeshScenario(scenario, { seed: opts.seed, agents: opts.agents, demandSeconds: opts.demandSeconds, keepHomes: opts.keep, logLevel: opts.logLevel, progress })
  const stamp = new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19)
  const dir = resolve(opts.out ?? join(ROOT, 'sims', 'out', `${scenario.name}-libp2p-${stamp}`))
  const args = [name, '--transport libp2p', opts.seed !== undefined ? `--seed ${opts.seed}` : '', opts.agents !== undefined ? `--agents ${opts.agents}` : '', opts.demandSeconds !== undefined ? `--demand-seconds ${opts.demandSeconds}` : ''].filter((x) => x !== '').join(' ')
  writeMeshReport(dir, { scenario, metrics, file: relative(ROOT, file), command: `clawmesh sim ${args}` })
  return { dir, metrics }
}

export function meshSummary (m: MeshMetrics): string {
  return [
    `${m.scenario} on ${m.agents} real nodes in ${m.wallSeconds} s: mesh formed in ${m.mesh.formedS} s, covered in ${m.coverage.firstS ?? 'never'} s, ${m.contracts.signed} contracts (${m.contracts.broken} broken), ${m.messages.perContract ?? '—'} market messages each`,
    `  price/layer ${m.price.meanPerLayer ?? '—'}, ${m.demand.served}/${m.demand.requests} requests served (p50 ${m.demand.latencyP50Ms ?? '—'} ms), earnings ${m.earnings.total} (Gini ${m.earnings.gini ?? '—'})`,
    `  churn ${m.churn.crashes} crashes + ${m.churn.leaves} leaves, pipeline back after ${m.churn.recoverS.map((x) => x === null ? 'never' : `${x} s`).join(', ') || '—'}; forged: ${m.fraud.forgedEnvelopes} envelopes, ${m.fraud.forgedReceipts} receipts (${m.fraud.receiptsRefused} refused); bound breaches ${m.bounds.floorBreaches + m.bounds.ceilingBreaches + m.bounds.memoryBreaches}; ledgers conserved ${m.ledger.conserved}`
  ].join('\n')
}

export function summary (m: SimMetrics): string {
  return [
    `${m.scenario}: ${m.agents} agents, ${m.simHours} h simulated in ${m.wallSeconds} s`,
    `  covered in ${m.coverage.firstCoveredMin ?? 'never'} min (${m.coverage.headsCovered}/${m.coverage.heads} heads), ${m.contracts.signed} contracts, ${m.messages.perContract ?? '—'} market messages each`,
    `  price/layer ${m.price.meanPerLayer ?? '—'}, demand served ${(100 * m.demand.servedShare).toFixed(1)}%, Gini ${m.earnings.gini}`,
    `  fraud caught ${m.fraud.forgedCaught}/${m.fraud.forgedReceipts} receipts, ${m.fraud.envelopeRejected} envelopes rejected; bound breaches ${m.injection.breaches}; ledger conserved ${m.ledger.conserved}`
  ].join('\n')
}
