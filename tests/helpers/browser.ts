import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'
import { chromium, type Browser } from 'playwright-core'

/** Flags that work on this kind of machine (closed network, small /dev/shm, no GPU). */
const COMMON_ARGS = ['--disable-dev-shm-usage', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
/**
 * @sparticuz/chromium's flags are made for AWS Lambda. Dropped here: the two that switch off the
 * same-origin policy (they would hide a board bug that only a real browser's origin checks show), and
 * --single-process, with which closing one page's context takes the whole browser down (seen here:
 * every test after the first that closes a second page failed with "browser has been closed").
 */
const DROPPED_ARGS = new Set(['--disable-web-security', '--allow-running-insecure-content', '--single-process'])

export interface ChromiumFound {
  executablePath: string
  args: string[]
  /** Where it came from: the CHROMIUM_PATH variable, a system binary on PATH, or the npm package. */
  source: 'CHROMIUM_PATH' | 'system' | '@sparticuz/chromium'
}

function executable (path: string): boolean {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** The first of `names` that is an executable file in one of PATH's folders. */
export function onPath (names: string[], path = process.env.PATH ?? ''): string | undefined {
  for (const dir of path.split(delimiter).filter((d) => d !== '')) {
    for (const name of names) if (executable(join(dir, name))) return join(dir, name)
  }
  return undefined
}

/**
 * The browser the board tests drive: a system Chromium when there is one (CHROMIUM_PATH, else
 * `chromium` or `chromium-browser` on PATH), else the Chromium that the @sparticuz/chromium
 * devDependency ships inside its npm tarball (unpacked to /tmp/chromium on first use), so that
 * `npm install && npm test` needs no system package.
 */
export async function findChromium (env: NodeJS.ProcessEnv = process.env): Promise<ChromiumFound> {
  const given = env.CHROMIUM_PATH
  if (given !== undefined && given !== '') {
    if (!executable(given)) throw new Error(`CHROMIUM_PATH=${given} is not an executable file`)
    return { executablePath: given, args: COMMON_ARGS, source: 'CHROMIUM_PATH' }
  }
  const system = onPath(['chromium', 'chromium-browser'], env.PATH)
  if (system !== undefined) return { executablePath: system, args: COMMON_ARGS, source: 'system' }
  const { default: packaged } = await import('@sparticuz/chromium')
  let executablePath: string
  try {
    executablePath = await packaged.executablePath()
  } catch (err) {
    throw new Error(`no system Chromium (CHROMIUM_PATH unset, no chromium or chromium-browser on PATH) and @sparticuz/chromium could not unpack its own: ${(err as Error).message}`)
  }
  const args = [...packaged.args.filter((a) => !DROPPED_ARGS.has(a)), ...COMMON_ARGS]
  return { executablePath, args: [...new Set(args)], source: '@sparticuz/chromium' }
}

/** Launches the browser findChromium picks, headless; the error says which one failed to start. */
export async function launchChromium (): Promise<{ browser: Browser, found: ChromiumFound, ms: number }> {
  const t0 = Date.now()
  const found = await findChromium()
  try {
    const browser = await chromium.launch({ executablePath: found.executablePath, args: found.args })
    return { browser, found, ms: Date.now() - t0 }
  } catch (err) {
    throw new Error(`could not launch Chromium from ${found.source} (${found.executablePath}): ${(err as Error).message}`)
  }
}
