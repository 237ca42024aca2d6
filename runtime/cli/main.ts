import '../polyfill.ts'
import { Command, Option } from 'commander'
import { resolveHome, CONFIG_ENV_VARS } from '../config.ts'
import { SOFTWARE_VERSION } from '../version.ts'
import { loadExtensions, type CliContext, type CliExtension } from './extension.ts'
import { registerKeysCommands } from './keys.ts'
import { readInviteLine, scrubInviteFromArguments } from './invite-input.ts'

// First thing: an invite given as an argument carries the mesh key; take it off our command line.
scrubInviteFromArguments()

// Commands load libp2p, sqlite and friends only when they run, so that --help and typos answer at once.
const commands = async (): Promise<typeof import('./commands.ts')> => await import('./commands.ts')
const starting = async (): Promise<typeof import('./start.ts')> => await import('./start.ts')

interface HomeOpts { home?: string, name?: string, json?: boolean }

const homeOptions = (cmd: Command): Command => cmd
  .option('--home <dir>', 'the agent\'s home directory (default: $CLAWMESH_HOME or ~/.clawmesh/<name>)')
  .option('--name <name>', 'the agent\'s name, which also picks its home under ~/.clawmesh', process.env.CLAWMESH_NAME)

const json = new Option('--json', 'print machine-readable JSON on stdout (stable field names)')

function home (opts: HomeOpts): string {
  return resolveHome({ home: opts.home, name: opts.name })
}

function collect (value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value]
}

const listenOption = (): Option => new Option('--listen <multiaddr>', 'address to listen on, repeatable (e.g. /ip4/127.0.0.1/tcp/4011); overrides --port').argParser(collect)

function parsePort (value: string): number {
  const port = Number(value)
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--port must be 0-65535, got ${value}`)
  return port
}

const context: CliContext = { homeOptions, jsonOption: () => new Option('--json', 'print machine-readable JSON on stdout (stable field names)'), home }

export function buildProgram (extensions: CliExtension[] = []): Command {
  const program = new Command('clawmesh')
    .description('Home AI agents that pool their machines in a peer-to-peer mesh to run open LLMs together.')
    .version(SOFTWARE_VERSION)
    .addHelpText('after', `\nEnvironment: ${CONFIG_ENV_VARS.join(', ')}, CLAWMESH_HOME, CLAWMESH_ROOT.\nSee README.md for the config file.`)

  homeOptions(program.command('init'))
    .description('create an agent home: identity (Ed25519 key = PeerId), database and config')
    .option('--network <id>', 'network id to join (default clawmesh)')
    .option('--port <port>', 'TCP port to listen on (default 4011)', parsePort)
    .addOption(listenOption())
    .option('--private', 'start a private mesh: generate a pre-shared key that every member needs')
    .addOption(json)
    .action(async (o: HomeOpts & { network?: string, port?: number, listen?: string[], private?: boolean }) => {
      await (await commands()).cmdInit(home(o), { name: o.name, networkId: o.network, port: o.port, listen: o.listen, meshKey: o.private === true ? true : undefined, json: o.json === true })
    })

  homeOptions(program.command('start'))
    .description('run the node in the foreground (Ctrl-C, SIGTERM or "clawmesh stop" stops it cleanly)')
    .option('--port <port>', 'TCP port to listen on, for this run', parsePort)
    .addOption(listenOption())
    .action(async (o: HomeOpts & { port?: number, listen?: string[] }) => {
      const listen = o.listen ?? (o.port !== undefined ? [`/ip4/0.0.0.0/tcp/${o.port}`] : undefined)
      await (await starting()).cmdStart(home(o), listen !== undefined ? { listen } : {}, extensions)
      process.exit(0)
    })

  homeOptions(program.command('stop'))
    .description('stop the node running from this home (SIGTERM to its pid from status.json) and wait until it is gone')
    .option('--timeout <seconds>', 'give up waiting after this long', (v: string) => {
      const n = Number(v)
      if (!(n > 0)) throw new Error(`--timeout must be a positive number of seconds, got ${v}`)
      return n
    }, 60)
    .addOption(json)
    .action(async (o: HomeOpts & { timeout: number }) => { await (await commands()).cmdStop(home(o), { json: o.json === true, timeoutS: o.timeout }) })

  homeOptions(program.command('status'))
    .description('show whether the node runs, its identity, network, connections and gossip counters')
    .addOption(json)
    .action(async (o: HomeOpts) => { await (await commands()).cmdStatus(home(o), { json: o.json === true }) })

  homeOptions(program.command('peers'))
    .description('list the peers this node knows: connected or heard on gossip, with hardware and models')
    .addOption(json)
    .action(async (o: HomeOpts) => { await (await commands()).cmdPeers(home(o), { json: o.json === true }) })

  homeOptions(program.command('board'))
    .description('print the running node\'s web board address and the owner token for its controls, and open it')
    .option('--no-open', 'only print; do not open a browser')
    .addOption(json)
    .action(async (o: HomeOpts & { open: boolean }) => {
      await (await import('./board.ts')).cmdBoard(home(o), { json: o.json === true, open: o.open })
    })

  homeOptions(program.command('invite'))
    .description('print a one-line invite (network id, bootstrap addresses, private-mesh key if any)')
    .option('--expires <duration>', 'refuse the invite after this long, e.g. 30m, 12h, 7d')
    .option('--once', 'single-use: this node redeems the invite for the first agent that joins with it')
    .addOption(json)
    .action(async (o: HomeOpts & { expires?: string, once?: boolean }) => { await (await commands()).cmdInvite(home(o), { json: o.json === true, expires: o.expires, once: o.once }) })

  homeOptions(program.command('join'))
    .description('set up this agent from an invite and start it (the invite from --invite-file FILE, or stdin with --invite-file -)')
    .argument('[invite]', 'the line printed by "clawmesh invite", or "-" for stdin; discouraged: an argument is readable by other local users, use --invite-file')
    .option('--invite-file <path>', 'read the invite from this file ("-": stdin), so that its mesh key never appears in process arguments')
    .option('--port <port>', 'TCP port to listen on (default 4011)', parsePort)
    .addOption(listenOption())
    .option('--no-start', 'only write the configuration (and redeem the invite); start later with "clawmesh start"')
    .addOption(json)
    .action(async (argument: string | undefined, o: HomeOpts & { inviteFile?: string, port?: number, listen?: string[], start: boolean }) => {
      const line = await readInviteLine({ argument, file: o.inviteFile }, (message) => process.stderr.write(`clawmesh: ${message}\n`))
      await (await starting()).cmdJoin(home(o), line, { json: o.json === true, start: o.start, name: o.name, port: o.port, listen: o.listen }, extensions)
      if (o.start) process.exit(0)
    })

  registerKeysCommands(program, context)

  // `demo` comes from the agents extension (agents/demo.ts): ClawBots negotiating over this mesh.
  for (const extension of extensions) extension.commands?.(program, context)
  return program
}

loadExtensions()
  .then(async (extensions) => await buildProgram(extensions).parseAsync(process.argv))
  .catch((err: unknown) => {
    process.stderr.write(`clawmesh: ${(err as Error).message}\n`)
    process.exit(1)
  })
