import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { generateKeyPair, privateKeyFromProtobuf, privateKeyToProtobuf } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'

export const IDENTITY_FILE = 'identity.key'

/**
 * The agent's Ed25519 key, which is also its libp2p PeerId. Created once, then reused forever: a new key
 * would be a new agent with no history, contracts or credit. Stored 0600, protobuf-encoded as libp2p
 * does, so it can be inspected with libp2p tools.
 */
export async function loadOrCreateIdentity (home: string): Promise<{ key: PrivateKey, created: boolean }> {
  const path = join(home, IDENTITY_FILE)
  try {
    const bytes = await readFile(path)
    return { key: privateKeyFromProtobuf(bytes), created: false }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new Error(`cannot read the identity at ${path}: ${(err as Error).message}`)
    }
  }
  await mkdir(home, { recursive: true, mode: 0o700 })
  const key = await generateKeyPair('Ed25519')
  // 'wx': if another process created the key between our read and this write, fail rather than
  // overwrite an identity that may already be known to the mesh.
  await writeFile(path, privateKeyToProtobuf(key), { mode: 0o600, flag: 'wx' })
  return { key, created: true }
}
