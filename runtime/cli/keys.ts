import { access } from 'node:fs/promises'
import { join } from 'node:path'
import type { Command } from 'commander'
import type { CliContext } from './extension.ts'

/**
 * `clawmesh keys create|list|revoke|topup`: API keys for the paid gateway, managed straight in the
 * agent's database (WAL lets this run beside a live node). The secret is printed once, at creation.
 */
export function registerKeysCommands (program: Command, ctx: CliContext): void {
  const keys = program.command('keys').description('API keys for the paid OpenAI-compatible gateway: create, list, revoke, top up')

  ctx.homeOptions(keys.command('create'))
    .description('create an API key (its secret is shown only now) with optional prepaid credits')
    .option('--label <text>', 'a note to recognise the key by', '')
    .option('--credits <n>', 'prepaid credits', wholeNumber('--credits'), 0)
    .option('--rate <n>', 'requests per minute', wholeNumber('--rate'))
    .option('--burst <n>', 'requests allowed at once before the rate applies', wholeNumber('--burst'))
    .addOption(ctx.jsonOption())
    .action(async (o: Opts & { label: string, credits: number, rate?: number, burst?: number }) => {
      const home = ctx.home(o)
      await withDb(home, async (db) => {
        const { createKey } = await import('../gateway/keys.ts')
        const { key, secret } = await createKey(db, { label: o.label, credits: o.credits, ratePerMin: o.rate, burst: o.burst })
        await warnWithoutGateway(home)
        if (o.json === true) return printJson({ ...key, balance: o.credits, secret })
        console.log(`Created API key ${key.id}${key.label !== '' ? ` (${key.label})` : ''} with ${o.credits} credits, ${key.ratePerMin} requests/min.`)
        console.log(`  secret  ${secret}`)
        console.log('Keep the secret now: only its hash is stored.')
      })
    })

  ctx.homeOptions(keys.command('list'))
    .description('list API keys with their balances (secrets are never shown again)')
    .addOption(ctx.jsonOption())
    .action(async (o: Opts) => {
      await withDb(ctx.home(o), async (db) => {
        const { listKeys } = await import('../gateway/keys.ts')
        const rows = await listKeys(db)
        if (o.json === true) return printJson(rows)
        if (rows.length === 0) { console.log('No API keys yet: clawmesh keys create --credits 1000'); return }
        const { table } = await import('./format.ts')
        console.log(table(['ID', 'LABEL', 'BALANCE', 'RATE/MIN', 'STATE', 'CREATED'],
          rows.map((k) => [k.id, k.label, String(k.balance), String(k.ratePerMin), k.revoked ? 'revoked' : 'active', new Date(k.createdAt).toISOString()])))
      })
    })

  ctx.homeOptions(keys.command('revoke'))
    .description('revoke an API key: it is refused from the next request on (its balance stays in the ledger)')
    .argument('<id>', 'key id, as shown by "clawmesh keys list"')
    .addOption(ctx.jsonOption())
    .action(async (id: string, o: Opts) => {
      await withDb(ctx.home(o), async (db) => {
        const { revokeKey } = await import('../gateway/keys.ts')
        await revokeKey(db, id)
        if (o.json === true) return printJson({ id, revoked: true })
        console.log(`Revoked ${id}.`)
      })
    })

  ctx.homeOptions(keys.command('topup'))
    .description('add prepaid credits to an API key')
    .argument('<id>', 'key id')
    .argument('<credits>', 'whole credits to add', wholeNumber('credits'))
    .addOption(ctx.jsonOption())
    .action(async (id: string, credits: number, o: Opts) => {
      await withDb(ctx.home(o), async (db) => {
        const { topUp } = await import('../gateway/keys.ts')
        const balance = await topUp(db, id, credits)
        if (o.json === true) return printJson({ id, added: credits, balance })
        console.log(`Added ${credits} credits to ${id}: balance ${balance}.`)
      })
    })
}

// node.ts's DATABASE_FILE, repeated: importing node.ts would load libp2p for a database edit.
const DATABASE_FILE = 'clawmesh.db'

interface Opts { home?: string, name?: string, json?: boolean }

function wholeNumber (flag: string): (value: string) => number {
  return (value) => {
    const n = Number(value)
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${flag} must be a whole number, got ${value}`)
    return n
  }
}

/**
 * A key only works against this node's paid API, which runs only on a head whose config.json has a
 * "gateway" section: without one the key is created but nothing will ever accept it.
 */
async function warnWithoutGateway (home: string): Promise<void> {
  const { readConfigFile, configPath } = await import('../config.ts')
  if ((await readConfigFile(home)).gateway !== undefined) return
  process.stderr.write(`warning: ${configPath(home)} has no "gateway" section, so this node runs no paid API and the key is useless until it does.\n` +
    '  Add one (every field is optional), e.g.  "gateway": { "port": 4013 }  and restart the node (clawmesh stop, then clawmesh start):\n' +
    '  it sells each model this agent assembles (agent.assemble) at http://127.0.0.1:4013/v1.\n')
}

function printJson (value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n')
}

async function withDb (home: string, fn: (db: import('../store/sqlite.ts').SqliteDb) => Promise<void>): Promise<void> {
  try {
    await access(join(home, 'identity.key'))
  } catch {
    throw new Error(`no clawmesh agent in ${home}; create one with "clawmesh init"`)
  }
  const { Store } = await import('../store/store.ts')
  const store = await Store.open(join(home, DATABASE_FILE))
  try {
    await fn(store.db)
  } finally {
    await store.close()
  }
}
