import { randomBytes, timingSafeEqual } from 'node:crypto'
import { chmod, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'

export const TOKEN_FILE = 'board.token'

/**
 * The owner's token for the board's controls: random, kept 0600 in the agent's home, shown by
 * `clawmesh board`. It travels only in an Authorization header that the page adds itself: no cookie,
 * so another site open in the same browser cannot make the owner's browser use it (no CSRF).
 */
export async function ensureToken (home: string): Promise<string> {
  const path = join(home, TOKEN_FILE)
  try {
    const existing = (await readFile(path, 'utf8')).trim()
    if (/^[A-Za-z0-9_-]{32,}$/.test(existing)) {
      await chmod(path, 0o600)
      return existing
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read the board token ${path}: ${(err as Error).message}`)
  }
  const token = randomBytes(32).toString('base64url')
  // 'wx' fails if a concurrent start created it first; then theirs is the token.
  try {
    await writeFile(path, token + '\n', { mode: 0o600, flag: 'wx' })
    return token
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return (await readFile(path, 'utf8')).trim()
    throw new Error(`cannot write the board token ${path}: ${(err as Error).message}`)
  }
}

/** Constant-time check of an "Authorization: Bearer <token>" header. */
export function bearerMatches (header: string | undefined, token: string): boolean {
  const m = /^Bearer\s+(\S+)$/i.exec(header ?? '')
  if (m === null) return false
  const given = Buffer.from(m[1])
  const want = Buffer.from(token)
  return given.length === want.length && timingSafeEqual(given, want)
}
