// `clawmesh keys …` through the real CLI binary, against an agent home's database.
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cliEnv, runCli, runJson } from '../helpers/cli.ts'
import { tempDir } from '../helpers/mesh.ts'
import { initHome } from '../../runtime/cli/home.ts'
import { Store } from '../../runtime/store/store.ts'
import { findKeyBySecret } from '../../runtime/gateway/keys.ts'
import { conservation, verifyChain } from '../../runtime/ledger/ledger.ts'

let dir: { path: string, cleanup: () => Promise<void> }
let env: NodeJS.ProcessEnv
let home: string

beforeAll(async () => {
  dir = await tempDir('clawmesh-keys-')
  env = cliEnv(dir.path)
  home = join(dir.path, 'alice')
  await initHome(home, { port: 0 }) // in-process: each CLI start costs seconds on a loaded machine
})

afterAll(async () => { await dir.cleanup() })

interface KeyJson { id: string, label: string, balance: number, ratePerMin: number, revoked: boolean, secret?: string }

describe('clawmesh keys', () => {
  it('creates, lists, tops up and revokes keys; only the hash of a secret is stored', { timeout: 120_000 }, async () => {
    const created = await runJson<KeyJson>(['keys', 'create', '--home', home, '--label', 'bob', '--credits', '500', '--rate', '30'], env)
    expect(created.secret).toMatch(/^cm_[A-Za-z0-9_-]{43}$/)
    expect(created).toMatchObject({ label: 'bob', balance: 500, ratePerMin: 30, revoked: false })

    expect(await runJson<{ balance: number }>(['keys', 'topup', '--home', home, created.id, '200'], env)).toEqual({ id: created.id, added: 200, balance: 700 })
    await runJson(['keys', 'revoke', '--home', home, created.id], env)
    const listed = await runJson<Array<KeyJson & { secret?: string }>>(['keys', 'list', '--home', home], env)
    expect(listed[0]).toMatchObject({ id: created.id, balance: 700, revoked: true })
    expect(listed[0].secret).toBeUndefined()

    const table = await runCli(['keys', 'list', '--home', home], env)
    expect(table.stdout).toMatch(new RegExp(`${created.id}\\s+bob\\s+700\\s+30\\s+revoked`))
    const bad = await runCli(['keys', 'topup', '--home', home, 'key_nope', '5'], env)
    expect(bad.code).toBe(1)
    expect(bad.stderr).toMatch(/no API key key_nope/)

    const store = await Store.open(join(home, 'clawmesh.db'))
    try {
      const rows = await store.db.all<{ hash: string }>('SELECT hash FROM api_keys')
      expect(rows[0].hash).not.toContain(created.secret!.slice(3))
      expect((await findKeyBySecret(store.db, created.secret!))?.id).toBe(created.id)
      expect((await verifyChain(store.db)).ok).toBe(true)
      expect(await conservation(store.db)).toMatchObject({ held: 700, external: 700 })
    } finally {
      await store.close()
    }
  })
})
