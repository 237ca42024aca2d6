import { randomBytes } from 'node:crypto'
import { access } from 'node:fs/promises'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { DEFAULT_PORT, configPath, readConfigFile, writeConfigFile, type ConfigInput } from '../config.ts'
import { loadOrCreateIdentity } from '../node/identity.ts'

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
  config: ConfigInput
}

export function newMeshKey (): string {
  return randomBytes(32).toString('hex')
}

async function exists (path: string): Promise<boolean> {
  try { await access(path); return true } catch { return false }
}

/**
 * Creates (or updates) an agent's home: identity, then config. Existing identity is always kept;
 * config fields are changed only where the caller gave a value, so re-running init is harmless.
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
  return { home, peerId: peerIdFromPrivateKey(key).toString(), createdIdentity: created, createdConfig: !hadConfig, config }
}
