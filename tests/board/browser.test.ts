import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { accessSync, constants } from 'node:fs'
import { chmod, mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { findChromium } from '../helpers/browser.ts'
import { tempDir } from '../helpers/mesh.ts'

/** Which browser the board tests drive: a system one when there is one, else the one npm installed. */
describe('finding Chromium for the board tests', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let bin: string

  beforeAll(async () => {
    dir = await tempDir('clawmesh-browser-')
    bin = join(dir.path, 'bin')
    await mkdir(bin)
    await writeFile(join(bin, 'chromium-browser'), '#!/bin/sh\nexit 0\n')
    await chmod(join(bin, 'chromium-browser'), 0o755)
    await writeFile(join(dir.path, 'not-executable'), '')
  })

  afterAll(async () => { await dir?.cleanup() })

  it('takes CHROMIUM_PATH first, and refuses one that cannot run', async () => {
    const found = await findChromium({ CHROMIUM_PATH: join(bin, 'chromium-browser'), PATH: '' })
    expect(found).toMatchObject({ source: 'CHROMIUM_PATH', executablePath: join(bin, 'chromium-browser') })
    await expect(findChromium({ CHROMIUM_PATH: join(dir.path, 'not-executable'), PATH: bin })).rejects.toThrow(/CHROMIUM_PATH=.*not-executable is not an executable/)
  })

  it('takes chromium or chromium-browser from PATH', async () => {
    const found = await findChromium({ PATH: `${join(dir.path, 'nothing-here')}:${bin}` })
    expect(found).toMatchObject({ source: 'system', executablePath: join(bin, 'chromium-browser') })
    expect(found.args).toContain('--disable-dev-shm-usage')
  })

  it('falls back to the Chromium inside the @sparticuz/chromium package, without its Lambda-only flags', async () => {
    const found = await findChromium({ PATH: join(dir.path, 'nothing-here') })
    expect(found.source).toBe('@sparticuz/chromium')
    expect(() => { accessSync(found.executablePath, constants.X_OK) }).not.toThrow()
    expect(found.args).toContain('--disable-dev-shm-usage')
    expect(found.args).toContain('--no-sandbox')
    for (const flag of ['--single-process', '--disable-web-security', '--allow-running-insecure-content']) expect(found.args).not.toContain(flag)
  }, 120_000)
})
