import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { COLORS, lineChart } from '../report.ts'
import type { Scenario } from '../scenario.ts'
import type { MeshMetrics } from './run.ts'

/** Writes report.md, metrics.json and SVG charts of a run on real nodes into dir. */
export function writeMeshReport (dir: string, input: { scenario: Scenario, metrics: MeshMetrics, file: string, command: string }): string {
  mkdirSync(dir, { recursive: true })
  const { metrics: m, scenario: s } = input
  const tl = m.timeline
  const xMax = Math.max(1, ...tl.map((p) => p.t))
  const charts: Record<string, string> = {
    'coverage.svg': lineChart('Layers under each head\'s active contracts', 'seconds since the agents started', 'layers', [
      ...m.agentsTable.filter((r) => r.role === 'head').map((r, i) => ({ name: r.name, color: COLORS[i % COLORS.length], points: tl.map((p): [number, number] => [p.t, p.layersByHead[i] ?? 0]) })),
      { name: 'all of the model', color: '#9ca3af', points: [[0, m.model.nLayer], [xMax, m.model.nLayer]] }
    ], { xMax, yMin: 0 }),
    'market.svg': lineChart('Market messages published (all agents) and active contracts', 'seconds since the agents started', 'count', [
      { name: 'market messages', color: COLORS[3], points: tl.map((p) => [p.t, p.marketMessages]) },
      { name: 'active contracts ×10', color: COLORS[2], points: tl.map((p) => [p.t, p.activeContracts * 10]) }
    ], { xMax, yMin: 0 }),
    'requests.svg': lineChart('Outside users\' requests through the paid API', 'seconds since the agents started', 'requests (cumulative)', [
      { name: 'served', color: COLORS[2], points: tl.map((p) => [p.t, p.served]) },
      { name: 'failed or unavailable', color: COLORS[1], points: tl.map((p) => [p.t, p.failed]) }
    ], { xMax, yMin: 0 })
  }
  for (const [name, body] of Object.entries(charts)) writeFileSync(join(dir, name), body)
  writeFileSync(join(dir, 'metrics.json'), JSON.stringify({ metrics: m }, null, 2) + '\n')
  const kv = (o: Record<string, number>): string => Object.entries(o).filter(([, v]) => v > 0).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'
  const d = m.demand
  const lines = [
    `# Simulation report: ${s.name} on real nodes (libp2p)`,
    '',
    s.description,
    '',
    `Command: \`${input.command}\` — scenario file \`${input.file}\`, seed ${m.seed}.`,
    `${m.agents} ClawBots, each a real MeshNode on 127.0.0.1 (libp2p TCP/noise/yamux, gossipsub, its own sqlite home) started as \`clawmesh start\` starts it: LangGraph agent with the offline negotiator, receipt service, a paid OpenAI-compatible API on heads, llama.cpp rpc-servers on workers. Ran in **${m.wallSeconds} s** of wall time.`,
    `Model: ${m.model.name} (${m.model.nLayer} layers × ${m.model.layerGB} GB, ${m.model.quant}) stood for by a generated ${m.model.nLayer}-layer GGUF (${(m.model.realBytesPerLayer / 1024).toFixed(0)} KiB per layer); each agent may lend as many layers as its hardware profile holds of the real model.`,
    '',
    '## Headline figures',
    '',
    '| figure | value |',
    '|---|---|',
    `| mesh formed (every head ↔ every agent heard) | ${m.mesh.formedS} s |`,
    `| time to cover the model and start its pipeline | ${m.coverage.firstS === null ? 'never' : `${m.coverage.firstS} s`} (per head: ${m.coverage.perHeadS.map((x, i) => `${x === null ? 'never' : `${x} s`} (${m.coverage.layersAtEnd[i]}/${m.model.nLayer} layers at the end)`).join(', ')}) |`,
    `| contracts signed / active at the end / broken | ${m.contracts.signed} / ${m.contracts.active} / ${m.contracts.broken} |`,
    `| mean contract price per layer | ${m.price.meanPerLayer ?? '—'} credits / M layer-tokens; retail ${m.price.retailPerMTok ?? '—'} / M tokens |`,
    `| market messages per contract | ${m.messages.perContract ?? '—'} (${m.messages.total} in all: ${kv(m.messages.market)}) |`,
    `| demand | ${d.requests} requests: ${d.served} served (${(100 * d.servedShare).toFixed(1)}%), ${d.pricedOut} priced out, ${d.unavailable} while no pipeline was up, ${d.failed} failed; ${d.tokens} tokens; latency p50 ${d.latencyP50Ms ?? '—'} ms, p95 ${d.latencyP95Ms ?? '—'} ms |`,
    `| churn | ${m.churn.crashes} crashes, ${m.churn.leaves} leaves; pipeline back after ${m.churn.recoverS.map((x) => x === null ? 'never' : `${x} s`).join(', ') || '—'} |`,
    `| earnings (ledger of a bystander) | ${m.earnings.total} credits to ${m.earnings.earners} workers, Gini ${m.earnings.gini ?? '—'} |`,
    `| fraud | ${m.fraud.forgedEnvelopes} tampered envelopes and ${m.fraud.forgedReceipts} forged receipts published; rejected by gossip validators: ${kv(m.messages.rejected)}; forged receipts refused by receipt services: ${m.fraud.receiptsRefused} |`,
    `| injection | ${m.injection.injectors} injectors; ${m.injection.contractsWithInjectors} contracts with them; owners' bounds on ${m.bounds.contractsChecked} contracts: ${m.bounds.floorBreaches} below floor, ${m.bounds.ceilingBreaches} above ceiling, ${m.bounds.memoryBreaches} over memory |`,
    `| ledgers | ${m.ledger.nodes} nodes: chains ${m.ledger.chainsOk ? 'intact' : 'BROKEN'}, conserved ${m.ledger.conserved ? 'yes' : 'NO'}; ${m.ledger.receiptsBooked} receipt entries at the bystander |`,
    '',
    '## Charts',
    '',
    '![coverage](coverage.svg)', '', '![market](market.svg)', '', '![requests](requests.svg)',
    '',
    '## Agents',
    '',
    '| agent | hardware | role | floor | layers it may lend | contracts | earned | crashed/left |',
    '|---|---|---|---|---|---|---|---|',
    ...m.agentsTable.map((r) => `| ${r.name} | ${r.profile} | ${r.role}${r.adversary !== undefined ? `, ${r.adversary}` : ''} | ${r.floor} | ${r.lendableLayers} | ${r.contracts} | ${r.earned} | ${r.crashed ? 'yes' : ''} |`),
    '',
    ...(d.errors.length > 0 ? ['Request errors (first few): ' + d.errors.map((e) => '`' + e + '`').join('; '), ''] : []),
    '## Not applied on real nodes',
    '',
    ...m.notApplied.map((x) => `- ${x}`),
    '',
    'Wall-clock figures come from one process on this machine: every node\'s crypto, sockets and agent turns share its event loop, and llama.cpp processes share its cores. They are upper bounds for a mesh of separate machines, not network measurements.',
    ''
  ]
  writeFileSync(join(dir, 'report.md'), lines.join('\n'))
  return join(dir, 'report.md')
}
