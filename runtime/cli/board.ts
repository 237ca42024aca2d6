import { spawn } from 'node:child_process'
import { access, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { BOARD_FILE } from '../board/server.ts'
import { ensureToken } from '../board/token.ts'
import { isAlive } from '../node/status-file.ts'
import { printJson } from './format.ts'

export interface BoardCliOptions {
  json: boolean
  /** false with --no-open. */
  open: boolean
}

/** The address a running node wrote for its board, or undefined when no live node serves one. */
export async function readBoardAddress (home: string): Promise<{ url: string, port: number } | undefined> {
  try {
    const info = JSON.parse(await readFile(join(home, BOARD_FILE), 'utf8')) as { url: string, port: number, pid: number }
    return isAlive(info.pid) ? { url: info.url, port: info.port } : undefined
  } catch {
    return undefined
  }
}

/** A browser can be opened only on a desktop session, and never in CI. */
function opener (env: NodeJS.ProcessEnv): string[] | undefined {
  if (env.CI !== undefined && env.CI !== '' && env.CI !== 'false') return undefined
  if (process.platform === 'darwin') return ['open']
  if (process.platform === 'win32') return ['cmd', '/c', 'start', '""']
  if ((env.DISPLAY ?? '') === '' && (env.WAYLAND_DISPLAY ?? '') === '') return undefined
  return ['xdg-open']
}

/**
 * Prints where the board of the running node is and the owner's token for its controls, and opens it.
 * The token rides in the URL fragment, which browsers never send to a server or put in a Referer.
 */
export async function cmdBoard (home: string, opts: BoardCliOptions, env: NodeJS.ProcessEnv = process.env): Promise<void> {
  try { await access(join(home, 'identity.key')) } catch {
    throw new Error(`no clawmesh agent in ${home}; create one with "clawmesh init" or "clawmesh join <invite>"`)
  }
  const address = await readBoardAddress(home)
  if (address === undefined) throw new Error(`no board is running for ${home}: it runs inside the node, so start it first (clawmesh start); board.enabled must not be false in config.json`)
  const token = await ensureToken(home)
  const ownerUrl = `${address.url}#/agent?token=${token}`
  if (opts.json) return printJson({ url: address.url, port: address.port, token, ownerUrl })
  console.log(`Board:  ${address.url}`)
  console.log(`Token:  ${token}   (owner controls: pause, resume, kill switch, policy; keep it private)`)
  console.log(`Owner:  ${ownerUrl}`)
  const cmd = opts.open ? opener(env) : undefined
  if (cmd === undefined) return
  const child = spawn(cmd[0], [...cmd.slice(1), ownerUrl], { stdio: 'ignore', detached: true })
  child.on('error', () => { console.error('(could not open a browser; open the Owner link above)') })
  child.unref()
}
