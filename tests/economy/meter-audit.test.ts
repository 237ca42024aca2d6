// Issue #15, finding 7: a worker signs receipts only for its own count. With its meter at 1,000 rows,
// a head claiming 1 token is refused, and the worker gossips a signed meter report that a bystander
// checks (contract signatures, reporter = worker, accused = head) and keeps; an honest claim is
// signed. Rows the head proposes nothing for (it used the pipeline outside its gateway) become a
// receipt the worker proposes itself, which the head countersigns and pays from its own account.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { MeterReportKind, type MeterReport } from '../../protocols/meter-report.ts'
import { WorkerProposalKind } from '../../protocols/receipts.ts'
import type { Envelope } from '../../protocols/envelope.ts'
import { WORKER_SEQ_BASE, type WorkMeter } from '../../runtime/ledger/audit.ts'
import { createKey } from '../../runtime/gateway/keys.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { pipelineContracts, recordContracts, startEconomyMesh, type EconomyMesh, type PipelineContract } from './fixture.ts'

const SHA = 'd'.repeat(64)
let dir: { path: string, cleanup: () => Promise<void> }
let mesh: EconomyMesh
let contract: PipelineContract
/** The worker's meter as the rpc guard or a chain stage keeps it (tests/engine/rpc-guard.test.ts counts real graphs). */
const rows = new Map<string, { rows: number, lastAt: number }>()
const meter: WorkMeter = { counted: (c) => rows.get(c) }
const compute = (n: number): void => { const m = rows.get(contract.id) ?? { rows: 0, lastAt: 0 }; rows.set(contract.id, { rows: m.rows + n, lastAt: Date.now() }) }

beforeAll(async () => {
  dir = await tempDir('clawmesh-meter-audit-')
  mesh = await startEconomyMesh(dir.path, 3, { settleDelayMs: 0 })
  const [head, worker] = mesh.nodes
  ;[contract] = await pipelineContracts(head, [worker], SHA, [[0, 4]], [1_000_000])
  await recordContracts(mesh.nodes.slice(0, 2), [contract]) // the bystander holds no contract: the report carries it
  mesh.services[1].attachMeter(meter, { quietMs: 300 })
  await waitFor('new topic subscriptions', () => [MeterReportKind, WorkerProposalKind].every((k) =>
    mesh.nodes.every((n) => mesh.nodes.every((o) => o === n || n.host!.services.pubsub.getSubscribers(n.bus!.topic(k.kind)).map(String).includes(o.peerId.toString())))))
}, 120_000)

afterAll(async () => {
  for (const s of mesh?.services ?? []) await s.stop()
  await stopAll(mesh?.nodes ?? [])
  await dir?.cleanup()
})

const receiptRows = async (node: number): Promise<Array<{ seq: number, tokens: number, status: string }>> =>
  await mesh.nodes[node].store.db.all('SELECT seq, tokens, status FROM receipts WHERE contract = ? ORDER BY seq', [contract.id])

describe('receipts against the worker\'s own meter', () => {
  it('refuses 1 token for 1,000 rows, reports it verifiably, and signs an honest claim', async () => {
    const [head, , bystander] = mesh.nodes
    const { key } = await createKey(head.store.db, { credits: 1_000_000 })
    compute(1000)
    await mesh.services[0].propose(await mesh.services[0].book.recordUsage({ keyId: key.id, modelSha256: SHA, promptTokens: 1, completionTokens: 0, contracts: [contract], fee: 0 }))
    await waitFor('a meter report at the bystander', async () => (await bystander.store.db.all('SELECT 1 FROM fraud_reports WHERE contract = ?', [contract.id])).length > 0, 15_000)
    const row = await bystander.store.db.get<{ accused: string, reporter: string, document: string }>('SELECT accused, reporter, document FROM fraud_reports WHERE contract = ?', [contract.id])
    const env = JSON.parse(row!.document) as Envelope<MeterReport>
    expect(row).toMatchObject({ accused: head.peerId.toString(), reporter: contract.worker })
    expect(env.body).toMatchObject({ reason: 'under-billed', claimed: 1, counted: 1000, seqs: [1] })
    expect(await receiptRows(0)).toEqual([{ seq: 1, tokens: 1, status: 'proposed' }]) // never signed
    console.log(`[meter] head claimed ${env.body.claimed}, worker counted ${env.body.counted}: refused, reported`)

    // An honest claim (prompt + completion = rows + 1) is signed at once.
    compute(999)
    await mesh.services[0].propose(await mesh.services[0].book.recordUsage({ keyId: key.id, modelSha256: SHA, promptTokens: 900, completionTokens: 100, contracts: [contract], fee: 0 }))
    await waitFor('the honest receipt signed', async () => (await receiptRows(0)).some((r) => r.seq === 2 && r.status !== 'proposed'), 15_000)
    expect(mesh.services[1].stats.meterReports.made).toBe(1)
  }, 60_000)

  it('proposes its own receipt for rows the head billed nobody for, and the head countersigns it', async () => {
    compute(500) // the head ran its pipeline outside the gateway: no proposal comes
    await waitFor('the worker\'s own receipt countersigned by the head', async () => (await receiptRows(0)).some((r) => r.seq > WORKER_SEQ_BASE && r.status !== 'proposed'), 15_000)
    const own = (await receiptRows(0)).find((r) => r.seq > WORKER_SEQ_BASE)!
    expect(own.tokens).toBe(500)
    const usage = await mesh.nodes[0].store.db.get<{ key_id: string }>("SELECT key_id FROM usage WHERE key_id LIKE 'agent:%'")
    expect(usage?.key_id).toBe(`agent:${mesh.nodes[0].peerId.toString()}`) // the head pays for its own use
  }, 30_000)
})
