// Issue #15, finding 11: whoever can write the database can drop the append-only triggers, edit a row
// and re-hash the chain, and verifyChain alone still passes. Checkpoints of the chain's head, signed by
// the node and kept and countersigned by its peers, anchor the chain outside the file: the rewrite is
// caught when the node starts and asks its peers.
import { rm } from 'node:fs/promises'
import { join } from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { LedgerCheckpointKind } from '../../protocols/ledger-checkpoint.ts'
import { Store } from '../../runtime/store/store.ts'
import type { Queryable } from '../../runtime/store/sqlite.ts'
import { EXTERNAL_TOPUP, allBalances, appendTransfers, chainHead, entryHash, userAccount, verifyChain } from '../../runtime/ledger/ledger.ts'
import { ReceiptService } from '../../runtime/ledger/service.ts'
import { DATABASE_FILE, type MeshNode } from '../../runtime/node/node.ts'
import { openNode, stopAll, tempDir, waitFor } from '../helpers/mesh.ts'

let dir: { path: string, cleanup: () => Promise<void> }
const nodes: MeshNode[] = []
const services: ReceiptService[] = []

beforeEach(async () => { dir = await tempDir('clawmesh-anchor-') })
afterEach(async () => {
  for (const s of services.splice(0)) await s.stop()
  await stopAll(nodes.splice(0))
  await dir.cleanup()
})

async function topUps (db: Queryable & { transaction: Store['db']['transaction'] }, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    await db.transaction(async (tx) => { await appendTransfers(tx, [{ debit: EXTERNAL_TOPUP, credit: userAccount(`k${i % 3}`), amount: 100 + i, memo: `top-up ${i}` }]) })
  }
}

/** What a local attacker does: triggers gone, entry `seq` now pays 1,000,000, every later hash and the balances recomputed. */
async function rewrite (db: Queryable, seq: number): Promise<void> {
  await db.exec('DROP TRIGGER ledger_append_only_update; DROP TRIGGER ledger_append_only_delete')
  await db.run('UPDATE ledger SET amount = 1000000 WHERE seq = ?', [seq])
  const rows = await db.all<{ seq: number, ts: number, debit: string, credit: string, amount: number, memo: string, receipt: string | null, prev_hash: string }>('SELECT * FROM ledger WHERE seq >= ? ORDER BY seq', [seq])
  let prev = (await db.get<{ hash: string }>('SELECT hash FROM ledger WHERE seq = ?', [seq - 1]))!.hash
  for (const r of rows) {
    const hash = entryHash(prev, r)
    await db.run('UPDATE ledger SET prev_hash = ?, hash = ? WHERE seq = ?', [prev, hash, r.seq])
    prev = hash
  }
  await db.run('DELETE FROM ledger_balances')
  for (const [account, balance] of await allBalances(db)) await db.run('INSERT INTO ledger_balances (account, balance) VALUES (?, ?)', [account, balance])
}

describe('ledger anchored outside the file', () => {
  it('a rewritten and re-hashed chain passes verifyChain alone, and fails against a checkpoint', async () => {
    const store = await Store.open(join(dir.path, 'db.sqlite'))
    await topUps(store.db, 8)
    const checkpoint = await chainHead(store.db)
    await rewrite(store.db, 3)
    // The finding: consistent again, so the chain alone cannot tell.
    expect((await verifyChain(store.db)).ok).toBe(true)
    const report = await verifyChain(store.db, [{ ...checkpoint, from: 'a peer' }])
    expect(report.ok).toBe(false)
    expect(report.brokenAt).toMatchObject({ seq: 8 })
    expect(report.brokenAt?.reason).toMatch(/kept by a peer.*rewritten/)
    await store.close()
  })

  it('a node whose database was rewritten while it was down is caught by the checkpoint its peer kept', async () => {
    const start = async (name: string, bootstrap: string[] = []): Promise<{ node: MeshNode, service: ReceiptService }> => {
      const node = await openNode(join(dir.path, name), name, { bootstrap })
      nodes.push(node)
      await node.start()
      const service = new ReceiptService(node, { sync: false, anchor: { intervalMs: 3_600_000 } })
      services.push(service)
      service.start()
      await service.anchorReady
      return { node, service }
    }
    const b = await start('b')
    let a = await start('a', b.node.multiaddrs())
    await topUps(a.node.store.db, 6)
    await waitFor('b to hear a\'s checkpoints', () => a.node.host!.services.pubsub.getSubscribers(a.node.bus!.topic(LedgerCheckpointKind.kind)).map(String).includes(b.node.peerId.toString()), 10_000)
    expect((await a.service.anchor!.checkpoint())?.checkpoint.seq).toBe(6)
    await waitFor('a to hold b\'s countersignature', () => a.service.anchor!.stats.witnesses === 1, 10_000)
    expect(b.service.anchor!.stats.witnessed).toBe(1)
    await topUps(a.node.store.db, 2) // entries after the checkpoint: not anchored yet, but must extend it

    // Restarted untouched, a checks out against b.
    const restart = async (): Promise<void> => {
      await services.splice(services.indexOf(a.service), 1)[0].stop()
      await stopAll(nodes.splice(nodes.indexOf(a.node), 1))
    }
    await restart()
    a = await start('a', b.node.multiaddrs())
    await waitFor('a to ask b', () => a.service.anchor!.status.peersAsked === 1, 10_000)
    expect(a.service.anchor!.status).toMatchObject({ ok: true })

    // Down again; the attacker rewrites entry 4, re-hashes, and removes every local trace of checkpoints.
    await restart()
    const store = await Store.open(join(dir.path, 'a', DATABASE_FILE))
    await rewrite(store.db, 4)
    await store.db.run('DELETE FROM ledger_witnesses')
    expect((await verifyChain(store.db)).ok).toBe(true)
    await store.close()
    await rm(join(dir.path, 'a', 'ledger-anchor.json'))

    a = await start('a', b.node.multiaddrs())
    expect(a.service.anchor!.status.ok).toBe(true) // nothing local left to tell
    await waitFor('a to ask b', () => a.service.anchor!.status.peersAsked === 1, 10_000)
    expect(a.service.anchor!.status.ok).toBe(false)
    expect(a.service.anchor!.status.reason).toMatch(new RegExp(`entry 6: checkpoint 6 .*kept by ${b.node.peerId.toString()}`))
    // And it signs no checkpoint of the rewritten chain, so b's copy is not replaced by a laundered one.
    expect(await a.service.anchor!.checkpoint()).toBeUndefined()
  }, 60_000)
})
