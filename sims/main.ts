/** Standalone entry: npx tsx sims/main.ts <scenario> [--out DIR] [--seed N] [--agents N] [--quiet] */
import '../runtime/polyfill.ts'
import { parseArgs } from 'node:util'
import { simCommand, summary } from './cli.ts'

const { values, positionals } = parseArgs({ allowPositionals: true, options: { out: { type: 'string' }, seed: { type: 'string' }, agents: { type: 'string' }, quiet: { type: 'boolean' } } })
if (positionals.length !== 1) {
  process.stderr.write('usage: sims/main.ts <scenario> [--out DIR] [--seed N] [--agents N] [--quiet]\n')
  process.exit(2)
}
const { dir, metrics } = await simCommand(positionals[0], {
  out: values.out, quiet: values.quiet, seed: values.seed === undefined ? undefined : Number(values.seed), agents: values.agents === undefined ? undefined : Number(values.agents)
})
process.stdout.write(`${summary(metrics)}\nreport: ${dir}/report.md\n`)
