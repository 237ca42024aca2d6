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
      .action(async (scenario: string, opts: { out?: string, seed?: number, agents?: number, quiet?: boolean }) => {
        const { simCommand, summary } = await import('./cli.ts')
        const { dir, metrics } = await simCommand(scenario, opts)
        process.stdout.write(`${summary(metrics)}\nreport: ${dir}/report.md\n`)
      })
  }
}

export default extension
