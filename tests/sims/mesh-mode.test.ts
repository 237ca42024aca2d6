import { describe, expect, it, beforeAll } from 'vitest'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseScenario } from '../../sims/scenario.ts'
import { MAX_REAL_NODES, runMeshScenario, type MeshMetrics } from '../../sims/mesh/run.ts'
import { writeMeshReport } from '../../sims/mesh/report.ts'
import { llamaBuildOrSkip, type BuildOutcome } from '../engine/helpers.ts'

// Seven real ClawBots on loopback, each wired as `clawmesh start` wires it: two heads (one of them a
// prompt injector), a forger, four honest workers. One worker serving a head crashes mid-demand.
const scenario = parseScenario({
  name: 'mesh-test',
  durationHours: 1,
  agents: { count: 7, mix: { 'big-gpu': 1 } },
  heads: { count: 1, ceiling: 9000, budget: 700_000, proposalWindowMs: 1500 },
  model: { nLayer: 24, layerGB: 2 },
  demand: { requestsPerMinute: 120, wtpMedian: 1_000_000, wtpSpread: 0 },
  owners: { maxDeals: 3 },
  churn: { crashPerHour: 1 },
  adversaries: { forgers: 1, injectors: 1 }
})

describe('clawmesh sim --transport libp2p (real nodes)', () => {
  let outcome: BuildOutcome
  let m: MeshMetrics

  beforeAll(async () => {
    outcome = await llamaBuildOrSkip()
    if ('skip' in outcome) return
    m = await runMeshScenario(scenario, { demandSeconds: 20 })
  }, 600_000)

  it('assembles the model on real llama.cpp and sells it through the paid API', (ctx) => {
    if ('skip' in outcome) return ctx.skip(outcome.skip)
    expect(m.coverage.perHeadS.every((s) => s !== null)).toBe(true)
    expect(m.demand.served).toBeGreaterThan(0)
    expect(m.demand.tokens).toBeGreaterThan(0)
    // Workers were paid through double-signed receipts that a bystander booked in its own ledger.
    expect(m.ledger.receiptsBooked).toBeGreaterThan(0)
    expect(m.earnings.total).toBeGreaterThan(0)
    expect(m.ledger.chainsOk).toBe(true)
    expect(m.ledger.conserved).toBe(true)
  })

  it('detects a crashed worker and re-assembles without it', (ctx) => {
    if ('skip' in outcome) return ctx.skip(outcome.skip)
    expect(m.churn.crashes).toBe(1)
    expect(m.contracts.broken).toBeGreaterThanOrEqual(1)
    expect(m.churn.recoverS[0]).not.toBeNull()
    expect(m.coverage.pipelines).toBeGreaterThanOrEqual(3) // two heads, then one again after the crash
  })

  it('rejects forgeries and keeps every contract inside the owners\' bounds', (ctx) => {
    if ('skip' in outcome) return ctx.skip(outcome.skip)
    expect(m.fraud.forgedEnvelopes).toBeGreaterThan(0)
    expect(m.messages.rejected['bad-signature']).toBeGreaterThan(0)
    expect(m.fraud.receiptsRefused).toBeGreaterThan(0)
    // The injector head bought layers too, but no worker sold below its floor because of its words.
    expect(m.injection.contractsWithInjectors).toBeGreaterThan(0)
    expect(m.bounds).toMatchObject({ floorBreaches: 0, ceilingBreaches: 0, memoryBreaches: 0 })
  })

  it('writes a readable report', (ctx) => {
    if ('skip' in outcome) return ctx.skip(outcome.skip)
    const dir = mkdtempSync(join(tmpdir(), 'clawmesh-mesh-report-'))
    writeMeshReport(dir, { scenario, metrics: m, file: '<inline>', command: 'test' })
    const md = readFileSync(join(dir, 'report.md'), 'utf8')
    expect(md).toContain('on real nodes (libp2p)')
    expect(md).toContain('![coverage](coverage.svg)')
    expect(readFileSync(join(dir, 'coverage.svg'), 'utf8')).toContain('<svg')
  })

  it('refuses more real nodes than one machine can honestly run', async () => {
    await expect(runMeshScenario(scenario, { agents: MAX_REAL_NODES + 1 })).rejects.toThrow(/at most 20 real nodes/)
  })
})
