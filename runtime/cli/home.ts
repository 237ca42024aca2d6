import { randomBytes } from 'node:crypto'
import { access } from 'node:fs/promises'
import { join } from 'node:path'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { DATABASE_FILE, DEFAULT_PORT, configPath, readConfigFile, resolveHome, writeConfigFile, type ConfigInput } from '../config.ts'
import { loadOrCreateIdentity } from '../node/identity.ts'
import { Store } from '../store/store.ts'

export interface InitOptions {
  name?: string
  networkId?: string
  port?: number
  listen?: string[]
  bootstrap?: string[]
  /** true: generate a fresh private-mesh key; a string: use that key. */
  meshKey?: boolean | string
}

export interface InitResult {
  home: string
  peerId: string
  createdIdentity: boolean
  createdConfig: boolean
  createdDatabase: boolean
  database: string
  config: ConfigInput
}

export function newMeshKey (): string {
  return randomBytes(32).toString('hex')
}

async function exists (path: string): Promise<boolean> {
  try { await access(path); return true } catch { return false }
}

/**
 * The command that starts the node of this home, as the owner should type it: `--name` only when that
 * name leads to this home (with the environment as it is), else `--home` with the full path.
 */
export function startCommand (home: string, name?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (resolveHome({ name }, env) === home) return 'clawmesh start' + (name !== undefined ? ` --name ${name}` : '')
  return `clawmesh start --home ${/^[A-Za-z0-9_./~-]+$/.test(home) ? home : JSON.stringify(home)}`
}

/**
 * Creates (or updates) an agent's home: identity, config, then the database with its tables (so that
 * keys, invites and status work before the first start). Existing identity is always kept; config
 * fields are changed only where the caller gave a value, so re-running init is harmless.
 */
export async function initHome (home: string, opts: InitOptions = {}): Promise<InitResult> {
  const { key, created } = await loadOrCreateIdentity(home)
  const hadConfig = await exists(configPath(home))
  const config: ConfigInput = await readConfigFile(home)
  if (opts.name !== undefined) config.name = opts.name
  else config.name ??= home.split(/[\\/]/).filter(Boolean).pop()?.replace(/[^A-Za-z0-9_.-]/g, '-') ?? 'default'
  if (opts.networkId !== undefined) config.networkId = opts.networkId
  if (opts.listen !== undefined) config.listen = opts.listen
  else if (opts.port !== undefined) config.listen = [`/ip4/0.0.0.0/tcp/${opts.port}`]
  else config.listen ??= [`/ip4/0.0.0.0/tcp/${DEFAULT_PORT}`]
  if (opts.bootstrap !== undefined) config.bootstrap = opts.bootstrap
  if (opts.meshKey === true) config.meshKey = newMeshKey()
  else if (typeof opts.meshKey === 'string') config.meshKey = opts.meshKey
  await writeConfigFile(home, config)
  const database = join(home, DATABASE_FILE)
  const hadDatabase = await exists(database)
  await (await Store.open(database)).close()
  return { home, peerId: peerIdFromPrivateKey(key).toString(), createdIdentity: created, createdConfig: !hadConfig, createdDatabase: !hadDatabase, database, config }
}
