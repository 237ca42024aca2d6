// The market tools under an LLM that makes several moves in one reply: LangGraph runs a reply's tool
// calls concurrently, and each must be checked against the owner's policy with the others' effects.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { randomUUID } from 'node:crypto'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { fakeModel } from '@langchain/core/testing'
import { AIMessage, HumanMessage } from '@langchain/core/messages'
import { MemorySaver } from '@langchain/langgraph'
import { Store } from '../../runtime/store/store.ts'
import { createLogger } from '../../runtime/log.ts'
import { migrateAgentTables } from '../../agents/migrations.ts'
import { PolicyGuard } from '../../skills/market/policy-guard.ts'
import { buildAgentGraph } from '../../agents/graph.ts'
import { NegotiationBook } from '../../skills/market/book.ts'
import { MarketDesk } from '../../skills/market/desk.ts'
import { marketTools, threadFor, type ActionRecord } from '../../skills/market/tools.ts'
import type { ModelRef, Terms } from '../../protocols/index.ts'
import { tempDir } from '../helpers/mesh.ts'
import { LoopNet } from '../helpers/loop-bus.ts'

const MODEL: ModelRef = { sha256: 'e'.repeat(64), name: 'm', nLayer: 4, layerBytes: 1024 }
const terms = (start: number, end: number, price: number): Terms => ({ start, end, price, expiresAt: Date.now() + 60_000 })

describe('market tools', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let stores: Store[]
  beforeEach(async () => { tmp = await tempDir(); stores = [] })
  afterEach(async () => {
    for (const s of stores) await s.close()
    await tmp.cleanup()
  })

  it('one reply that accepts two offers signs only what fits the budget together', async () => {
    const net = new LoopNet()
    const desk = async (name: string): Promise<MarketDesk> => {
      const key = await generateKeyPair('Ed25519')
      const id = peerIdFromPrivateKey(key).toString()
      const store = await Store.open(join(tmp.path, `${name}.sqlite`))
      stores.push(store)
      await migrateAgentTables(store)
      const d = new MarketDesk(net.bus(id), key, id, 'test', new NegotiationBook(store), createLogger(name, 'error'))
      d.watchModel(MODEL.sha256)
      return d
    }
    const head = await desk('head')
    const workers = [await desk('w1'), await desk('w2')]
    // The call's own budget would allow both; the owner's budget of 100 allows one deal of 80.
    const cfp = await head.publishCfp({ model: MODEL, want: { start: 0, end: 4 }, budget: 200, windowMs: 60_000, serveForMs: 600_000, maxRounds: 2, text: '' })
    await net.settle()
    await workers[0].propose(cfp.cfpId, terms(0, 2, 40), '')
    await workers[1].propose(cfp.cfpId, terms(2, 4, 40), '')
    await net.settle()

    const actions: ActionRecord[] = []
    const policy = new PolicyGuard({ me: head.me, book: head.book, bounds: () => ({ floor: 0, ceiling: 50, budget: 100, maxDeals: 10, lendableBytes: 0, idleOnly: false, hours: null }) })
    const tools = marketTools({
      desk: head, guard: policy, offerTtlMs: 60_000, cfpWindowMs: 1000, serveForMs: 600_000, maxRounds: 2,
      modelFor: () => MODEL, nameOf: (id) => id, record: (a) => actions.push(a)
    })
    const llm = fakeModel()
      .respond(new AIMessage({
        id: randomUUID(),
        content: 'Taking both.',
        tool_calls: workers.map((w) => ({ id: randomUUID(), name: 'accept', args: { peer: w.me, text: 'Deal.' }, type: 'tool_call' as const }))
      }))
      .respond(new AIMessage({ id: randomUUID(), content: 'Done.' }))
    const graph = buildAgentGraph({
      model: llm, tools, systemPrompt: 'test', checkpointer: new MemorySaver(),
      perceive: async () => new HumanMessage({ id: randomUUID(), content: 'Choose among the offers.' })
    })
    await graph.invoke({ event: { type: 'deadline', cfpId: cfp.cfpId } }, { configurable: { thread_id: threadFor({ cfpId: cfp.cfpId }) } })

    const accepts = actions.filter((a) => a.tool === 'accept')
    expect(accepts.map((a) => a.outcome).sort()).toEqual(['done', 'refused'])
    expect(accepts.find((a) => a.outcome === 'refused')?.detail).toMatch(/past the owner's budget of 100/)
    const accepted = (await head.book.threads(cfp.cfpId)).filter((t) => t.status === 'accepted')
    expect(accepted).toHaveLength(1)
  })
})
