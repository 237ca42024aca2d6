import type { Command } from 'commander'
import type { CliExtension } from '../runtime/cli/extension.ts'

// Cheap to import (the CLI loads it for --help): the simulator loads inside the action.
const extension: CliExtension = {
  name: 'sims',
  commands (program: Command): void {
    program.command('sim')
      .description('simulate the agent economy: run a scenario (sims/scenarios/<name>.json or a path) and write a report')
      .argument('<scenario>', 'scenario name or file')
      .option('--out <dir>', 'output folder (default sims/out/<scenario>-<timestamp>)')
      .option('--seed <n>', 'random seed (default: the scenario\'s)', (v) => Number.parseInt(v, 10))
      .option('--agents <n>', 'override the number of agents', (v) => Number.parseInt(v, 10))
      .option('--quiet', 'no progress lines')
      .option('--transport <kind>', 'sim: in-process bus on a simulated clock (any size); libp2p: real ClawBots on 127.0.0.1 (at most 20)', 'sim')
      .option('--demand-seconds <n>', 'libp2p: seconds of outside demand after the model is assembled', (v) => Number.parseInt(v, 10))
      .option('--keep', 'libp2p: keep the agents\' homes (databases, transcripts) and print where')
      .option('--log-level <level>', 'libp2p: the nodes\' log level on stderr (silent, error, warn, info, debug)')
      .action(async (scenario: string, opts: { out?: string, seed?: number, agents?: number, quiet?: boolean, transport: string, demandSeconds?: number, keep?: boolean, logLevel?: 'silent' | 'error' | 'warn' | 'info' | 'debug' }) => {
        const { simCommand, summary, meshSimCommand, meshSummary } = await import('./cli.ts')
        if (opts.transport === 'libp2p') {
          const { dir, metrics } = await meshSimCommand(scenario, opts as typeof opts & { transport: 'libp2p' })
          process.stdout.write(`${meshSummary(metrics)}\nreport: ${dir}/report.md\n`)
          process.exit(0)
        }
        if (opts.transport !== 'sim') throw new Error(`--transport must be sim or libp2p, not ${opts.transport}`)
        const { dir, metrics } = await simCommand(scenario, opts as typeof opts & { transport: 'sim' })
        process.stdout.write(`${summary(metrics)}\nreport: ${dir}/report.md\n`)
      })
  }
}

export default extension
