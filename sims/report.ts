import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { SimMetrics } from './world.ts'
import type { Scenario } from './scenario.ts'

/** Minimal SVG charts, written by hand (no chart library). */
export interface Series { name: string, points: Array<[number, number]>, color: string }

export const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2']
const esc = (s: string): string => s.replace(/[<>&"]/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;' }[c]!))
export const fmt = (x: number): string => Math.abs(x) >= 1e6 ? `${(x / 1e6).toFixed(1)}M` : Math.abs(x) >= 1e3 ? `${(x / 1e3).toFixed(1)}k` : Number.isInteger(x) ? String(x) : x.toFixed(2)

export function lineChart (title: string, xLabel: string, yLabel: string, series: Series[], opts: { yMin?: number, yMax?: number, xMax?: number } = {}): string {
  const W = 640; const H = 320; const L = 64; const R = 16; const T = 36; const B = 44
  const all = series.flatMap((s) => s.points)
  const xMax = opts.xMax ?? Math.max(1e-9, ...all.map((p) => p[0]))
  const yMin = opts.yMin ?? Math.min(0, ...all.map((p) => p[1]))
  const yMax = opts.yMax ?? Math.max(yMin + 1e-9, ...all.map((p) => p[1])) * 1.05
  const x = (v: number): number => L + (W - L - R) * v / xMax
  const y = (v: number): number => H - B - (H - T - B) * (v - yMin) / (yMax - yMin || 1)
  const grid: string[] = []
  for (let i = 0; i <= 4; i++) {
    const v = yMin + (yMax - yMin) * i / 4
    grid.push(`<line x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}" stroke="#e5e7eb"/><text x="${L - 6}" y="${y(v) + 4}" text-anchor="end" font-size="11">${fmt(v)}</text>`)
    const xv = xMax * i / 4
    grid.push(`<text x="${x(xv)}" y="${H - B + 16}" text-anchor="middle" font-size="11">${fmt(xv)}</text>`)
  }
  const lines = series.map((s) => s.points.length === 0 ? '' : `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${s.points.map(([a, b]) => `${x(a).toFixed(1)},${y(b).toFixed(1)}`).join(' ')}"/>`)
  const legend = series.map((s, i) => `<rect x="${L + 8 + i * 150}" y="${T - 22}" width="10" height="10" fill="${s.color}"/><text x="${L + 22 + i * 150}" y="${T - 13}" font-size="11">${esc(s.name)}</text>`)
  return svg(W, H, title, [...grid, ...lines, ...legend,
    `<line x1="${L}" x2="${L}" y1="${T}" y2="${H - B}" stroke="#111"/><line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#111"/>`,
    `<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle" font-size="12">${esc(xLabel)}</text>`,
    `<text x="14" y="${(T + H - B) / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 14 ${(T + H - B) / 2})">${esc(yLabel)}</text>`])
}

export function barChart (title: string, yLabel: string, bars: Array<{ label: string, value: number }>): string {
  const W = 640; const H = 320; const L = 64; const R = 16; const T = 36; const B = 60
  const yMax = Math.max(1e-9, ...bars.map((b) => b.value)) * 1.1
  const bw = (W - L - R) / Math.max(1, bars.length)
  const y = (v: number): number => H - B - (H - T - B) * v / yMax
  const parts = bars.map((b, i) => `<rect x="${L + i * bw + bw * 0.15}" y="${y(b.value)}" width="${bw * 0.7}" height="${H - B - y(b.value)}" fill="${COLORS[i % COLORS.length]}"/>` +
    `<text x="${L + i * bw + bw / 2}" y="${y(b.value) - 4}" text-anchor="middle" font-size="11">${fmt(b.value)}</text>` +
    `<text x="${L + i * bw + bw / 2}" y="${H - B + 16}" text-anchor="middle" font-size="11">${esc(b.label)}</text>`)
  return svg(W, H, title, [...parts, `<line x1="${L}" x2="${W - R}" y1="${H - B}" y2="${H - B}" stroke="#111"/>`,
    `<text x="14" y="${(T + H - B) / 2}" text-anchor="middle" font-size="12" transform="rotate(-90 14 ${(T + H - B) / 2})">${esc(yLabel)}</text>`])
}

function svg (w: number, h: number, title: string, body: string[]): string {
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" font-family="sans-serif">` +
    `<rect width="100%" height="100%" fill="white"/><text x="${w / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">${esc(title)}</text>${body.join('')}</svg>\n`
}

/** Lorenz curve points of the earnings: share of agents (poorest first) vs share of earnings. */
export function lorenz (values: number[]): Array<[number, number]> {
  const xs = values.map((v) => Math.max(0, v)).sort((a, b) => a - b)
  const total = xs.reduce((a, b) => a + b, 0)
  const pts: Array<[number, number]> = [[0, 0]]
  let acc = 0
  const step = Math.max(1, Math.floor(xs.length / 200))
  xs.forEach((v, i) => { acc += v; if ((i + 1) % step === 0 || i === xs.length - 1) pts.push([(i + 1) / xs.length, total === 0 ? 0 : acc / total]) })
  return pts
}

export interface ReportInput {
  scenario: Scenario
  metrics: SimMetrics
  baseline?: SimMetrics
  file: string
  command: string
}

/** Writes report.md, metrics.json and the SVG charts into dir. */
export function writeReport (dir: string, input: ReportInput): string {
  mkdirSync(dir, { recursive: true })
  const { metrics: m, scenario: s, baseline } = input
  const tl = m.timeline
  const charts: Record<string, string> = {
    'price.svg': lineChart('Contract price over time (volume-weighted, per layer)', 'sim hours', 'credits / M layer-tokens', [
      { name: 'mean contract price', color: COLORS[0], points: tl.filter((b) => b.layers > 0).map((b) => [b.t, b.priceSum / b.layers]) },
      ...(baseline === undefined ? [] : [{ name: 'baseline (no cartel)', color: COLORS[1], points: baseline.timeline.filter((b) => b.layers > 0).map((b): [number, number] => [b.t, b.priceSum / b.layers]) }])
    ], { xMax: m.simHours }),
    'retail.svg': lineChart('Retail price of the assembled model', 'sim hours', 'credits / M tokens', [
      { name: 'mean retail price', color: COLORS[2], points: tl.filter((b) => b.retailN > 0).map((b) => [b.t, b.retailSum / b.retailN]) }
    ], { xMax: m.simHours }),
    'demand.svg': lineChart('Outside demand and what was served', 'sim hours', 'tokens per bucket', [
      { name: 'requested', color: COLORS[1], points: tl.map((b) => [b.t, b.requested]) },
      { name: 'served', color: COLORS[2], points: tl.map((b) => [b.t, b.served]) }
    ], { xMax: m.simHours }),
    'pipelines.svg': lineChart('Assembled pipelines and agents online', 'sim hours', 'count', [
      { name: 'pipelines', color: COLORS[0], points: tl.map((b) => [b.t, b.pipelines]) },
      { name: `agents online / ${Math.max(1, Math.round(m.agents / 20))}`, color: COLORS[3], points: tl.map((b) => [b.t, b.online / Math.max(1, Math.round(m.agents / 20))]) }
    ], { xMax: m.simHours }),
    'lorenz.svg': lineChart(`Earnings of workers: Lorenz curve (Gini ${m.earnings.gini})`, 'share of workers (poorest first)', 'share of earnings', [
      { name: 'earnings', color: COLORS[0], points: lorenz(m.agentsTable.filter((r) => r.role === 'worker').map((r) => r.earned)) },
      { name: 'equality', color: '#9ca3af', points: [[0, 0], [1, 1]] }
    ], { yMin: 0, yMax: 1, xMax: 1 }),
    'earnings.svg': barChart('Mean earnings per worker, by hardware', 'credits', Object.entries(m.earnings.byProfile).map(([label, value]) => ({ label, value })))
  }
  for (const [name, body] of Object.entries(charts)) writeFileSync(join(dir, name), body)
  writeFileSync(join(dir, 'metrics.json'), JSON.stringify({ metrics: m, baseline }, null, 2) + '\n')

  const pct = (x: number): string => `${(100 * x).toFixed(1)}%`
  const kv = (o: Record<string, number>): string => Object.entries(o).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'
  const top = [...m.agentsTable].filter((r) => r.role === 'worker').sort((a, b) => b.earned - a.earned).slice(0, 8)
  const lines = [
    `# Simulation report: ${s.name}`,
    '',
    s.description,
    '',
    `Command: \`${input.command}\` — scenario file \`${input.file}\`, seed ${m.seed}.`,
    `${m.agents} agents, ${m.simHours} simulated hours, fanout \`${m.fanout}\`; ran in **${m.wallSeconds} s** of wall time (${m.events} events).`,
    `Model: ${m.model.name}, ${m.model.nLayer} layers × ${m.model.layerGB} GB (${m.model.quant}, ${m.model.totalGB} GB in all); hardware memory limits decide how many layers each agent may hold.`,
    '',
    '## Headline figures',
    '',
    '| figure | value |',
    '|---|---|',
    `| time to cover the model (first head) | ${m.coverage.firstCoveredMin === null ? 'never' : `${m.coverage.firstCoveredMin} min`} |`,
    `| heads that covered it | ${m.coverage.headsCovered} / ${m.coverage.heads} (first cover per head, min: ${m.coverage.perHeadMin.map((x) => x ?? '—').join(', ')}) |`,
    `| assemblies / pipeline failures | ${m.coverage.assemblies} / ${m.coverage.pipelineFailures} |`,
    `| mean contract price per layer | ${m.price.meanPerLayer ?? '—'} (median ${m.price.medianPerLayer ?? '—'}) credits / M layer-tokens |`,
    `| share of demand served | ${pct(m.demand.servedShare)} (${fmt(m.demand.servedTokens)} of ${fmt(m.demand.requestedTokens)} tokens; unserved: ${kv(m.demand.unserved)}) |`,
    `| earnings Gini (all workers / earners only) | ${m.earnings.gini} / ${m.earnings.giniEarners} (${m.earnings.earners} earners; top 10% take ${pct(m.earnings.top10Share)}) |`,
    `| contracts signed / ended / broken | ${m.contracts.signed} / ${m.contracts.ended} / ${m.contracts.broken} |`,
    `| market messages per contract | ${m.messages.perContract ?? '—'} (${m.messages.market} market messages, ${m.messages.total} in all) |`,
    `| fraud caught | ${m.fraud.forgedCaught} of ${m.fraud.forgedReceipts} forged/replayed receipts; ${m.fraud.envelopeRejected} envelopes rejected for ${m.fraud.envelopeAttacks} envelope attacks |`,
    `| injection | ${m.injection.attempts} injected observations, ${m.injection.followedByBrain} followed by a gullible brain, ${m.injection.refusedByPolicy} refused by policy, **${m.injection.breaches} contracts outside owners' bounds** |`,
    `| ledger | ${m.ledger.entries} entries, chain ${m.ledger.chainOk ? 'intact' : 'BROKEN'}, Σ balances ${m.ledger.total}, conserved: ${m.ledger.conserved ? 'yes' : 'NO'} |`,
    `| churn | ${m.churn.crashes} crashes (${m.churn.rejoins} rejoined), ${m.churn.leaves} left for good |`,
    ...(baseline === undefined ? [] : [
      `| cartel price effect | mean price ${m.price.meanPerLayer ?? '—'} with the cartel vs ${baseline.price.meanPerLayer ?? '—'} without (${baseline.price.meanPerLayer && m.price.meanPerLayer ? pct(m.price.meanPerLayer / baseline.price.meanPerLayer - 1) : '—'}); cartel contracts at ${m.price.cartelMean ?? 'none'}; demand served ${pct(m.demand.servedShare)} vs ${pct(baseline.demand.servedShare)} |`
    ]),
    '',
    '## Charts',
    '',
    '![price](price.svg)', '', '![retail](retail.svg)', '', '![demand](demand.svg)', '', '![pipelines](pipelines.svg)', '', '![lorenz](lorenz.svg)', '', '![earnings](earnings.svg)',
    '',
    '## Details',
    '',
    `- Prices by hardware (per layer): ${kv(m.price.byProfile)}; honest ${m.price.honestMean ?? '—'}, dumpers ${m.price.dumperMean ?? '—'}, cartel ${m.price.cartelMean ?? '—'}.`,
    `- Messages published: ${kv(m.messages.published)}.`,
    `- Deliveries: ${m.messages.deliveries} validated, ${m.messages.skippedDeliveries} skipped by addressed fanout; accepted ${m.messages.accepted}; rejected by the validators: ${kv(m.messages.rejected)}.`,
    `- Fraud attempts: ${kv(m.fraud.attempts)}; caught: ${kv(m.fraud.caught)}.`,
    `- Moves through the market tools: done ${kv(m.policy.done)}; refused by policy or protocol ${kv(m.policy.refused)}; failed ${kv(m.policy.failed)}.`,
    `- Owners' bounds, audited on all ${m.bounds.contractsChecked} contracts: ${m.bounds.floorBreaches} below a worker's floor, ${m.bounds.ceilingBreaches} above a head's ceiling, ${m.bounds.memoryBreaches} over a worker's lendable memory.`,
    `- Ledger: held ${m.ledger.held}, external ${m.ledger.external}, owed by heads (mirrors) ${m.ledger.mirrored}; ${m.ledger.receiptsBooked} receipts booked.`,
    `- Crypto (real Ed25519): ${m.crypto.seals} envelopes sealed (${m.crypto.perSealMs} ms each, ${fmt(m.crypto.sealMs)} ms in all), ${m.crypto.opens} opened with full verification (${m.crypto.perOpenMs} ms each), ${m.crypto.cacheHits} deliveries reused the verification of identical bytes${m.crypto.verifyCache ? '' : ' (cache off)'}.`,
    ...(m.handlerErrors.length > 0 ? [`- Errors (first ${m.handlerErrors.length}): ${m.handlerErrors.map((e) => '`' + e.split('\n')[0] + '`').join('; ')}`] : []),
    '',
    '### Heads at the end of the run',
    '',
    'A head whose brain is gullible (it obeys injected text) accepts one offer per call and lets the rest lapse: the policy keeps every deal inside its bounds, but the injection can still stall its assembly.',
    '',
    '| head | first covered (min) | layers held | assembled | open calls | calls this hour | threads in open calls |',
    '|---|---|---|---|---|---|---|',
    ...m.coverage.headsAtEnd.map((h) => `| ${h.name}${h.gullible ? ' (gullible brain)' : ''} | ${h.coveredMin ?? 'never'} | ${h.layersHeld} / ${m.model.nLayer} | ${h.assembled ? 'yes' : 'no'} | ${h.openCalls} | ${h.callsThisHour} | ${kv(h.threads)} |`),
    '',
    '### Top earners',
    '',
    '| agent | hardware | role | floor | contracts | earned |',
    '|---|---|---|---|---|---|',
    ...top.map((r) => `| ${r.name} | ${r.profile} | ${r.adversary ?? (r.gullible ? 'honest, gullible brain' : 'honest')} | ${r.floor} | ${r.contracts} | ${r.earned} |`),
    '',
    '## How this was simulated',
    '',
    'Agents run the real market code: the offline negotiator\'s strategy decides, the market tools check every move against the owner\'s policy and make it on the MarketDesk, whose messages are sealed with each agent\'s Ed25519 key and opened by every receiver with the real envelope validator and replay guard (on the simulated clock). Receipts are signed by worker and head with protocols/receipts.ts and booked by the runtime ledger\'s `ingestReceipt` into an in-memory sqlite ledger. Gossipsub is replaced by in-process delivery with seeded latency; serving is a throughput model (memory bandwidth per layer + a hop latency), not llama.cpp. See sims/README.md.',
    ''
  ]
  const md = lines.join('\n')
  writeFileSync(join(dir, 'report.md'), md)
  return join(dir, 'report.md')
}
