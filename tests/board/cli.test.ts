import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CliProcess, cliEnv, runCli, runJson } from '../helpers/cli.ts'
import { tempDir, waitFor } from '../helpers/mesh.ts'

describe('clawmesh start serves the board; clawmesh board prints where and the owner token', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let env: NodeJS.ProcessEnv
  let node: CliProcess | undefined

  beforeAll(async () => {
    dir = await tempDir('clawmesh-board-cli-')
    env = cliEnv(dir.path, { CI: '1' })
  })
  afterAll(async () => {
    await node?.stop('SIGKILL')
    await dir.cleanup()
  })

  it('refuses with a clear message while the node is down, then works once it runs', async () => {
    await runJson(['init', '--name', 'owl', '--listen', '/ip4/127.0.0.1/tcp/0'], env)
    const down = await runCli(['board', '--name', 'owl', '--no-open'], env)
    expect(down.code).toBe(1)
    expect(down.stderr).toMatch(/no board is running .*start it first \(clawmesh start\)/)

    node = new CliProcess(['start', '--name', 'owl'], env)
    await node.waitForOutput(/board on http:\/\/127\.0\.0\.1:\d+\//)
    const info = await runJson<{ url: string, token: string, ownerUrl: string }>(['board', '--name', 'owl'], env)
    expect(info.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/)
    expect(node.stdout).toContain(info.url)
    expect(info.ownerUrl).toBe(`${info.url}#/agent?token=${info.token}`)
    const text = await runCli(['board', '--name', 'owl', '--no-open'], env)
    expect(text.stdout).toContain(`Token:  ${info.token}`)

    const page = await fetch(info.url)
    expect(page.status).toBe(200)
    expect(await page.text()).toContain('clawmesh board')
    const refused = await fetch(`${info.url}api/control/pause`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })
    expect(refused.status).toBe(401)
    const paused = await fetch(`${info.url}api/control/pause`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${info.token}` }, body: '{}' })
    expect(paused.status).toBe(200)
    await waitFor('status to report the pause', async () => (await runJson<{ live?: { state: string } }>(['status', '--name', 'owl'], env)).live?.state === 'paused', 10_000, 200)

    expect(await node.stop('SIGTERM')).toBe(0)
    await expect(fetch(info.url)).rejects.toThrow()
  })
})
