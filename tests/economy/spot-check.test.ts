// Spot checks for real: the pipeline the head bills for runs a different model file than the contract
// names (a provider returning wrong results), the replay runs the right one. With the check forced,
// the outputs differ, the head gossips a signed fraud report and the accused loses its unsettled
// receipts; the honest worker is still paid.
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { LlamaBuild } from '../../runtime/engine/build.ts'
import { freePort, startLlamaServer, type LlamaServerHandle } from '../../runtime/engine/llama-procs.ts'
import { Gateway } from '../../runtime/gateway/server.ts'
import { createKey } from '../../runtime/gateway/keys.ts'
import { SpotChecker } from '../../runtime/gateway/spot-check.ts'
import { agentAccount, balanceOf, conservation, userAccount } from '../../runtime/ledger/ledger.ts'
import { FraudReportSchema } from '../../protocols/receipts.ts'
import { EnvelopeSchema } from '../../protocols/envelope.ts'
import { llamaBuildOrSkip } from '../engine/helpers.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { MODEL_NAME, pipelineContracts, recordContracts, startEconomyMesh, tinyModel, type EconomyMesh, type PipelineContract } from './fixture.ts'

const RANGES: Array<[number, number]> = [[0, 2], [2, 4]]
let dir: { path: string, cleanup: () => Promise<void> }
let build: LlamaBuild | undefined
const servers: LlamaServerHandle[] = []
let honest: LlamaServerHandle
let cheating: LlamaServerHandle
let mesh: EconomyMesh
let contracts: PipelineContract[]
let modelSha: string

beforeAll(async () => {
  const outcome = await llamaBuildOrSkip()
  if ('skip' in outcome) return
  build = outcome.build
  dir = await tempDir('clawmesh-spot-')
  const right = await tinyModel(dir.path, 11)
  const wrong = await tinyModel(dir.path, 12)
  modelSha = right.sha256
  honest = await startLlamaServer({ bin: build.llamaServer, model: right.path, port: await freePort(), ctxSize: 1024 })
  servers.push(honest)
  cheating = await startLlamaServer({ bin: build.llamaServer, model: wrong.path, port: await freePort(), ctxSize: 1024 })
  servers.push(cheating)
  // A long challenge window: nothing settles until the test says so.
  mesh = await startEconomyMesh(dir.path, 3, { settleDelayMs: 3_600_000 })
  const [head, w1, w2] = mesh.nodes
  contracts = await pipelineContracts(head, [w1, w2], modelSha, RANGES, [1_000_000, 1_000_000])
  await recordContracts(mesh.nodes, contracts)
}, 600_000)

afterAll(async () => {
  for (const s of mesh?.services ?? []) await s.stop()
  await stopAll(mesh?.nodes ?? [])
  await Promise.all(servers.map(async (s) => { await s.stop() }))
  await dir?.cleanup()
})

describe('spot checks', () => {
  it('an honest pipeline matches its replay', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const checker = new SpotChecker({ probability: 1, replays: [] }, honest.url, async () => { throw new Error('no report expected') })
    const outcome = await checker.check('/v1/chat/completions', { messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8 }, contracts[1], { contract: contracts[1].id, upstream: honest.url, provider: 'replica' })
    expect(outcome.outcome).toBe('match')
  })

  it('a provider returning wrong results is reported, gossiped, and loses its unsettled credit', async (ctx) => {
    if (build === undefined) return ctx.skip('no llama.cpp build')
    const [head, w1, w2] = mesh.nodes
    const service = mesh.services[0]
    let force = false
    const checker = new SpotChecker({ probability: 0.5, replays: [{ contract: contracts[1].id, upstream: honest.url, provider: 'replica-of-w2' }], random: () => force ? 0 : 0.99 },
      cheating.url, async (r) => await service.reportFraud(r))
    const gateway = new Gateway({
      db: head.store.db, head: head.peerId.toString(), book: service.book, upstream: cheating.url, modelSha256: modelSha,
      modelName: MODEL_NAME, spotChecker: checker, onRecorded: async (rec) => { await service.propose(rec) }
    })
    await gateway.start()
    try {
      const { key, secret } = await createKey(head.store.db, { credits: 100_000 })
      const client = new OpenAI({ apiKey: secret, baseURL: `${gateway.url}/v1`, maxRetries: 0 })
      const ask = async (): Promise<number> => (await client.chat.completions.create({ model: MODEL_NAME, messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8 })).usage!.total_tokens
      const tokens = [await ask(), await ask()]
      await gateway.drain()
      await waitFor('workers to sign the first receipts', async () =>
        (await head.store.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM receipts WHERE status = 'signed'"))?.n === 4, 15_000)

      force = true
      tokens.push(await ask())
      await gateway.drain()
      expect(gateway.spotOutcomes.map((o) => o.outcome)).toEqual(['mismatch'])

      // Every node heard the report, signed by the head.
      for (const node of [w1, w2]) {
        await waitFor(`${node.config.name} to hear the fraud report`, async () =>
          (await node.store.db.get<{ n: number }>('SELECT COUNT(*) AS n FROM fraud_reports'))?.n === 1, 10_000)
        const row = await node.store.db.get<{ document: string, accused: string }>('SELECT document, accused FROM fraud_reports')
        const env = EnvelopeSchema.parse(JSON.parse(row!.document))
        expect(env.from).toBe(head.peerId.toString())
        const report = FraudReportSchema.parse(env.body)
        expect(report.accused).toBe(w2.peerId.toString())
        expect(report.outputHash).not.toBe(report.referenceHash)
        expect(report.voided).toBeGreaterThanOrEqual(2)
      }

      // Close the challenge window: w1 is paid for all three requests, w2 for none.
      await waitFor('the last receipt of w1 to be signed', async () =>
        (await head.store.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM receipts WHERE status = 'proposed'"))?.n === 0, 15_000)
      await service.settleNow(Date.now() + 1)
      const w1Pay = tokens.reduce((s, t) => s + t * 2, 0)
      expect(await balanceOf(head.store.db, agentAccount(w1.peerId.toString()))).toBe(w1Pay)
      expect(await balanceOf(head.store.db, agentAccount(w2.peerId.toString()))).toBe(0)
      expect(await balanceOf(head.store.db, userAccount(key.id))).toBe(100_000 - w1Pay)
      expect((await head.store.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM receipts WHERE worker = ? AND status = 'void'", [w2.peerId.toString()]))?.n).toBe(3)
      const cons = await conservation(head.store.db)
      expect(cons.held).toBe(cons.external)
    } finally {
      await gateway.stop()
    }
  })
})
