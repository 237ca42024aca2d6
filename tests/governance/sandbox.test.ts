// Issue #15, finding 18: an agent's LLM-written tests run sandboxed. From inside, a probe tries to read
// the agent's identity key and the owner's files, to open a socket (to a server listening on this
// machine's loopback and to the internet) and to write outside the clone; every try fails, while the
// clone stays writable. Without a sandbox the agent refuses to run generated code unless opted in.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createServer, type Server } from 'node:net'
import { homedir, tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadOrCreateIdentity, IDENTITY_FILE } from '../../runtime/node/identity.ts'
import { sandboxMode } from '../../governance/sandbox.ts'
import { Workspace } from '../../governance/workspace.ts'

const PROBE = `
import { readFileSync, readdirSync, writeFileSync } from 'node:fs'
import { connect } from 'node:net'
const t = (f) => { try { const r = f(); return r === undefined ? 'ok' : 'ok:' + String(r).slice(0, 20) } catch (e) { return e.code ?? e.message } }
const dial = (host, port) => new Promise((res) => { const s = connect({ host, port }); s.setTimeout(3000, () => { s.destroy(); res('timeout') }); s.once('connect', () => { s.destroy(); res('connected') }); s.once('error', (e) => res(e.code)) })
const [key, home, owner, port] = process.argv.slice(2)
console.log(JSON.stringify({
  key: t(() => readFileSync(key).length),
  home: t(() => readdirSync(home).length),
  owner: t(() => readFileSync(owner, 'utf8').length),
  shadow: t(() => readFileSync('/etc/shadow').length),
  loopback: await dial('127.0.0.1', Number(port)),
  internet: await dial('1.1.1.1', 80),
  writeClone: t(() => writeFileSync('written.txt', 'x')),
  writeUsr: t(() => writeFileSync('/usr/evil', 'x')),
}))
`

let dir: string
let agentHome: string
let upstream: string
let server: Server
let port: number

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'clawmesh-sandbox-test-'))
  agentHome = join(dir, 'agent')
  await loadOrCreateIdentity(agentHome)
  upstream = join(dir, 'upstream')
  execFileSync('git', ['init', '-q', '-b', 'main', upstream])
  writeFileSync(join(upstream, 'README.md'), 'x\n')
  execFileSync('git', ['-C', upstream, 'add', '.'])
  execFileSync('git', ['-C', upstream, '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'init'])
  server = createServer((s) => s.end('hello'))
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  port = (server.address() as { port: number }).port
})

afterAll(async () => {
  server?.close()
  rmSync(dir, { recursive: true, force: true })
})

async function clone (): Promise<Workspace> {
  const sha = execFileSync('git', ['-C', upstream, 'rev-parse', 'HEAD'], { encoding: 'utf8' }).trim()
  const ws = await Workspace.clone(upstream, sha, dir)
  await ws.apply([{ path: 'probe.mjs', content: PROBE }])
  return ws
}

describe('sandbox for LLM-written tests', () => {
  it('cannot read the identity key or the owner\'s files, cannot open a socket, can write only the clone', async (ctx) => {
    const mode = sandboxMode()
    if (!('unshare' in mode)) ctx.skip(`no sandbox on this machine: ${mode.unavailable}`)
    const ws = await clone()
    try {
      const key = join(agentHome, IDENTITY_FILE)
      const owner = resolve('package.json') // this checkout: the owner's files
      expect(readFileSync(key).length).toBeGreaterThan(0) // outside, all of them are there
      const r = await ws.runTests(`node probe.mjs ${key} ${homedir()} ${owner} ${port}`, 60_000)
      expect(r.sandboxed).toBe(true)
      const seen = JSON.parse(r.outputTail.trim().split('\n').at(-1)!) as Record<string, string>
      console.log(`[governance] sandbox probe: ${JSON.stringify(seen)}`)
      expect(seen).toEqual({
        key: 'ENOENT', home: 'ENOENT', owner: 'ENOENT', shadow: 'ENOENT',
        loopback: 'ECONNREFUSED', internet: 'ENETUNREACH',
        writeClone: 'ok', writeUsr: 'EROFS',
      })
      expect(readFileSync(join(ws.dir, 'written.txt'), 'utf8')).toBe('x') // the clone is the real one
    } finally {
      await ws.dispose()
    }
  }, 90_000)

  it('without a sandbox, refuses to run generated code unless the owner opted in', async () => {
    const ws = await clone()
    try {
      const none = { unavailable: 'namespaces are forbidden here' }
      await expect(ws.runTests('node probe.mjs', 10_000, { mode: none })).rejects.toThrow(/refusing to run `node probe.mjs` on an LLM-written change: this machine has no sandbox for it \(namespaces are forbidden here\); set governance.allowUnsandboxedTests/)
      const r = await ws.runTests('node -e "process.exit(0)"', 30_000, { mode: none, allowUnsandboxed: true })
      expect(r).toMatchObject({ passed: true, sandboxed: false })
    } finally {
      await ws.dispose()
    }
  }, 60_000)
})
