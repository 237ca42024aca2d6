import { describe, expect, it } from 'vitest'
import { loadScenario, parseScenario } from '../../sims/scenario.ts'
import { runScenario, type SimMetrics } from '../../sims/world.ts'
import { gini } from '../../sims/lib/stats.ts'
import { writeReport } from '../../sims/report.ts'
import { mkdtempSync, readFileSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// The three CI scenarios at reduced size and duration: same code paths, a few seconds each.
async function small (name: string, patch: (s: any) => void): Promise<{ m: SimMetrics, s: any }> {
  const { scenario } = await loadScenario(name)
  const s = structuredClone(scenario) as any
  patch(s)
  return { m: await runScenario(parseScenario(s)), s }
}

function commonInvariants (m: SimMetrics): void {
  expect(m.earnings.gini).toBeGreaterThanOrEqual(0)
  expect(m.earnings.gini).toBeLessThanOrEqual(1)
  // Double-entry: balances sum to zero, what is held is what came in (plus what heads owe), chain intact.
  expect(m.ledger.chainOk).toBe(true)
  expect(m.ledger.total).toBe(0)
  expect(m.ledger.conserved).toBe(true)
  // No contract anybody signed is outside its owners' bounds.
  expect(m.bounds.floorBreaches + m.bounds.ceilingBreaches + m.bounds.memoryBreaches).toBe(0)
  expect(m.handlerErrors).toEqual([])
  const earnedByWorkers = m.agentsTable.filter((r) => r.role === 'worker').reduce((n, r) => n + r.earned, 0)
  expect(earnedByWorkers).toBe(m.ledger.mirrored)
}

describe('sims', () => {
  it('small-lan: the mesh covers the 405B model, serves demand, and settles through the ledger', async () => {
    const { m } = await small('small-lan', (s) => { s.durationHours = 3 })
    commonInvariants(m)
    expect(m.coverage.headsCovered).toBe(m.coverage.heads)
    expect(m.coverage.firstCoveredMin).not.toBeNull()
    expect(m.demand.servedShare).toBeGreaterThan(0.3)
    expect(m.contracts.signed).toBeGreaterThan(0)
    expect(m.ledger.receiptsBooked).toBeGreaterThan(0)
    expect(m.messages.rejected).toEqual({})
    // Every published market message was opened with a real signature check at least once.
    expect(m.crypto.opens).toBeGreaterThan(0)
  })

  it('churn-and-adversaries: forgeries are all caught, injections never breach bounds', async () => {
    const { m } = await small('churn-and-adversaries', (s) => { s.durationHours = 3; s.agents.count = 40; s.churn.crashPerHour = 0.1 })
    commonInvariants(m)
    expect(m.fraud.forgedReceipts).toBeGreaterThan(0)
    expect(m.fraud.forgedCaught).toBe(m.fraud.forgedReceipts)
    expect(m.fraud.caught['forged-head-signature']).toBe(m.fraud.attempts['forged-head-signature'])
    // Tampered envelopes fail the signature, re-published ones the signer check, resent ones the replay guard.
    expect(m.messages.rejected['bad-signature']).toBeGreaterThan(0)
    expect(m.messages.rejected['replayed']).toBeGreaterThan(0)
    expect(m.injection.attempts).toBeGreaterThan(0)
    expect(m.injection.breaches).toBe(0)
    expect(m.churn.crashes).toBeGreaterThan(0)
    expect(m.coverage.headsCovered).toBeGreaterThan(0)
  })

  it('cartel: the cartel prices above the honest market and the same seed gives the same metrics', async () => {
    const patch = (s: any): void => { s.durationHours = 2; s.agents.count = 24 }
    const a = await small('cartel', patch)
    const b = await small('cartel', patch)
    commonInvariants(a.m)
    const strip = (m: SimMetrics): unknown => ({ ...m, wallSeconds: 0, crypto: { ...m.crypto, sealMs: 0, openMs: 0, perSealMs: 0, perOpenMs: 0 } })
    expect(strip(b.m)).toEqual(strip(a.m))
    // The heads need the cartel's machines here, so it sells, and above the honest market.
    expect(a.m.price.cartelMean).not.toBeNull()
    expect(a.m.price.cartelMean!).toBeGreaterThan(a.m.price.honestMean!)
    const floors = a.m.agentsTable.filter((r) => r.adversary === 'cartel').map((r) => r.floor)
    const honest = a.m.agentsTable.filter((r) => r.adversary === undefined && r.role === 'worker' && r.profile === 'gaming-pc').map((r) => r.floor)
    expect(Math.min(...floors)).toBeGreaterThan(Math.max(...honest))
    const dir = mkdtempSync(join(tmpdir(), 'sim-report-'))
    writeReport(dir, { scenario: a.s, metrics: a.m, file: 'sims/scenarios/cartel.json', command: 'test' })
    expect(readFileSync(join(dir, 'report.md'), 'utf8')).toContain('time to cover the model')
    for (const f of ['price.svg', 'demand.svg', 'lorenz.svg', 'metrics.json']) expect(existsSync(join(dir, f))).toBe(true)
  })

  it('scenario files are validated with readable errors', async () => {
    expect(() => parseScenario({ name: 'x', durationHours: 1, agents: { count: 3, mix: { toaster: 1 } }, heads: { count: 1, ceiling: 1, budget: 1 }, demand: { requestsPerMinute: 1, wtpMedian: 1 } }))
      .toThrow(/unknown hardware profile.*toaster/)
    expect(() => parseScenario({ name: 'Bad Name', durationHours: -1 })).toThrow(/name[\s\S]*durationHours/)
    for (const name of ['small-lan', 'churn-and-adversaries', 'cartel', 'thousand-agents']) await loadScenario(name)
  })

  it('gini is 0 for equal earnings and near 1 when one agent earns everything', () => {
    expect(gini([5, 5, 5, 5])).toBe(0)
    expect(gini([0, 0, 0, 0, 0, 0, 0, 0, 0, 100])).toBeCloseTo(0.9)
    expect(gini([])).toBe(0)
  })
})
