import type { Command } from 'commander'
import type { CliContext, CliExtension } from '../runtime/cli/extension.ts'
import type { MeshNode } from '../runtime/node/node.ts'

/**
 * The agents' part of the CLI: `clawmesh start` runs the node's ClawBot, `clawmesh transcripts` prints
 * its negotiations, `clawmesh demo` runs four of them on loopback. Heavy modules load inside actions.
 */
const extension: CliExtension = {
  name: 'agents',

  commands (program: Command, ctx: CliContext): void {
    ctx.homeOptions(program.command('transcripts'))
      .description('print the agent\'s negotiations as dialogues: who said what, the binding terms, the outcome')
      .option('--thread <id>', 'one negotiation (its call id, or a prefix of it)')
      .addOption(ctx.jsonOption())
      .action(async (o: { home?: string, name?: string, thread?: string, json?: boolean }) => {
        const { cmdTranscripts } = await import('./cli.ts')
        await cmdTranscripts(ctx.home(o), { thread: o.thread, json: o.json === true })
      })

    program.command('demo')
      .description('four ClawBots on 127.0.0.1 with the offline negotiator: negotiate a generated model, assemble it, answer a prompt')
      .option('--nodes <n>', 'how many agents (one head, the rest workers)', (v) => Number(v), 4)
      .option('--layers <n>', 'layers of the generated test model', (v) => Number(v), 12)
      .option('--prompt <text>', 'the prompt to send through the assembled pipeline', 'The mesh says')
      .action(async (o: { nodes: number, layers: number, prompt: string }) => {
        const { cmdAgentsDemo } = await import('./demo.ts')
        await cmdAgentsDemo({ nodes: o.nodes, layers: o.layers, prompt: o.prompt })
        process.exit(0)
      })
  },

  async onStart (node: MeshNode) {
    const { startAgentFor } = await import('./cli.ts')
    return (await startAgentFor(node)).stop
  }
}

export default extension
