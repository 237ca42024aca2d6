import { afterEach, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { z } from 'zod'
import { Store } from '../../runtime/store/store.ts'
import { MIGRATIONS, applyMigrations } from '../../runtime/store/migrations.ts'
import { defineKind, sealEnvelope } from '../../protocols/index.ts'
import { tempDir } from '../helpers/mesh.ts'

const Note = defineKind('note', z.object({ text: z.string() }), 60_000)
const cleanups: Array<() => Promise<void>> = []
afterEach(async () => { for (const c of cleanups.splice(0)) await c() })

async function freshStore (): Promise<{ store: Store, path: string }> {
  const dir = await tempDir()
  cleanups.push(dir.cleanup)
  const path = join(dir.path, 'clawmesh.db')
  return { store: await Store.open(path), path }
}

describe('store', () => {
  it('migrates to the latest schema in WAL mode and reopens without re-running migrations', async () => {
    const { store, path } = await freshStore()
    expect((await store.db.get<{ version: number }>("SELECT version FROM schema_migrations WHERE namespace = 'runtime'"))?.version).toBe(MIGRATIONS.length)
    expect((await store.db.get<{ journal_mode: string }>('PRAGMA journal_mode'))?.journal_mode).toBe('wal')
    await store.setMeta('k', 'v')
    await store.close()
    const again = await Store.open(path)
    expect(await again.getMeta('k')).toBe('v')
    await again.close()
  })

  it('refuses a database from a newer clawmesh instead of corrupting it', async () => {
    const { store, path } = await freshStore()
    await store.db.run("UPDATE schema_migrations SET version = ? WHERE namespace = 'runtime'", [MIGRATIONS.length + 1])
    await store.close()
    await expect(Store.open(path)).rejects.toThrow(/newer than this clawmesh knows/)
  })

  it('stores each gossip envelope once, verbatim', async () => {
    const { store } = await freshStore()
    const key = await generateKeyPair('Ed25519')
    const env = await sealEnvelope(key, Note, { text: 'hi' }, { networkId: 'test' })
    expect(await store.saveMessage(env, false)).toBe(true)
    expect(await store.saveMessage(env, false)).toBe(false)
    const rows = await store.listMessages({ kind: 'note' })
    expect(rows).toHaveLength(1)
    expect(rows[0].envelope).toEqual(env)
    await store.close()
  })

  it('keeps each layer\'s migrations apart', async () => {
    const { store } = await freshStore()
    await applyMigrations(store.db, 'plugin', ['CREATE TABLE plugin_a (x INTEGER)', 'ALTER TABLE plugin_a ADD COLUMN y TEXT'])
    expect(await applyMigrations(store.db, 'plugin', ['CREATE TABLE plugin_a (x INTEGER)', 'ALTER TABLE plugin_a ADD COLUMN y TEXT'])).toBe(2)
    await store.db.run('INSERT INTO plugin_a (x, y) VALUES (1, ?)', ['a'])
    // A failing migration leaves neither its table nor a recorded version behind.
    await expect(applyMigrations(store.db, 'broken', ['CREATE TABLE half (x); CREATE TABLE half (x)'])).rejects.toThrow(/already exists/)
    expect(await store.db.get("SELECT name FROM sqlite_master WHERE name = 'half'")).toBeUndefined()
    expect(await store.db.get("SELECT version FROM schema_migrations WHERE namespace = 'broken'")).toBeUndefined()
    await store.close()
  })

  it('rolls a failed transaction back whole, and other writers never land inside it', async () => {
    const { store } = await freshStore()
    const outside = store.setMeta('outside', '1')
    await expect(store.db.transaction(async (tx) => {
      await tx.run("INSERT INTO meta (key, value) VALUES ('a', '1')")
      // A write issued from elsewhere while the transaction is open must wait its turn.
      void store.setMeta('concurrent', '1')
      await tx.run("INSERT INTO meta (key, value) VALUES ('a', '2')") // primary key violation
    })).rejects.toThrow(/UNIQUE/)
    await outside
    expect(await store.getMeta('a')).toBeUndefined()
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(await store.getMeta('concurrent')).toBe('1')
    expect(await store.getMeta('outside')).toBe('1')
    await store.close()
  })

  it('keeps the ledger append-only', async () => {
    const { store } = await freshStore()
    await store.db.run("INSERT INTO ledger (ts, debit, credit, amount, memo, prev_hash, hash) VALUES (1, 'a', 'b', 5, 'm', '0', 'h1')")
    await expect(store.db.run('UPDATE ledger SET amount = 6')).rejects.toThrow(/append-only/)
    await expect(store.db.run('DELETE FROM ledger')).rejects.toThrow(/append-only/)
    await expect(store.db.run("INSERT INTO ledger (ts, debit, credit, amount, memo, prev_hash, hash) VALUES (1, 'a', 'b', 0, 'm', 'h1', 'h2')")).rejects.toThrow(/CHECK/)
    await store.close()
  })
})
