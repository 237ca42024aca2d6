// npx tsx sims/soak.ts [--minutes 30] [--workers 3] [--kill-every 5] [--down 20] [--json FILE] [--keep]
// A CLI-made mesh with default settings serving paid requests while a worker is killed and restarted;
// see sims/soak/run.ts. Targets (issue #13): >= 99 % answered outside re-assembly windows, no outage over
// 10 s, every ledger view equal at the end, no growth of streams, dials or memory over time.
import '../runtime/polyfill.ts'
import { writeFile } from 'node:fs/promises'
import { parseArgs } from 'node:util'
import { runSoak } from './soak/run.ts'

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '30' },
    workers: { type: 'string', default: '3' },
    'kill-every': { type: 'string', default: '5' },
    down: { type: 'string', default: '20' },
    layers: { type: 'string', default: '8' },
    port: { type: 'string', default: '47100' },
    json: { type: 'string' },
    keep: { type: 'boolean', default: false }
  }
})

const report = await runSoak({
  minutes: Number(values.minutes),
  workers: Number(values.workers),
  killEveryMin: Number(values['kill-every']),
  downS: Number(values.down),
  layers: Number(values.layers),
  basePort: Number(values.port),
  keep: values.keep === true,
  log: (line) => { process.stderr.write(`[soak ${new Date().toISOString().slice(11, 19)}] ${line}\n`) }
})

const pct = (x: number): string => `${(x * 100).toFixed(2)} %`
console.log(`soak: ${report.nodes} nodes, ${report.minutes} min, ${report.requests} requests`)
console.log(`  answered                      ${pct(report.answeredShare)} (${report.answered})`)
console.log(`  answered outside re-assembly  ${pct(report.answeredOutsideWindowsShare)}   target >= 99 %`)
console.log(`  longest outage                ${(report.longestOutageMs / 1000).toFixed(1)} s   target <= 10 s`)
console.log(`  p50 latency                   ${report.p50Ms} ms`)
for (const k of report.kills) console.log(`  kill -9 ${k.name} at ${k.atS} s: answering again after ${k.recoveredAfterMs === null ? 'never' : `${(k.recoveredAfterMs / 1000).toFixed(1)} s`}`)
console.log('  node   streams/s (first -> last third)   dht streams/s   dials/s      rss MiB (first/max/last)')
for (const n of report.perNode) {
  console.log(`  ${n.name.padEnd(6)} ${`${n.streamsPerS.first} -> ${n.streamsPerS.last}`.padEnd(33)} ${`${n.dhtStreamsPerS.first} -> ${n.dhtStreamsPerS.last}`.padEnd(15)} ${`${n.dialsPerS.first} -> ${n.dialsPerS.last}`.padEnd(12)} ${n.rssMiB.first}/${n.rssMiB.max}/${n.rssMiB.last}`)
}
console.log(`  ledger views agree: ${report.ledger.agree ? 'yes' : 'NO'}`)
for (const d of report.ledger.differences) console.log(`    ${d}`)
if (values.json !== undefined) await writeFile(values.json, JSON.stringify(report, null, 2) + '\n')
process.exit(0)
