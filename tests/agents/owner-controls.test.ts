import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { randomUUID } from 'node:crypto'
import { join } from 'node:path'
import { fakeModel, type FakeBuiltModel } from '@langchain/core/testing'
import { AIMessage, HumanMessage, ToolMessage, type BaseMessage } from '@langchain/core/messages'
import { observationOf } from '../../agents/observation.ts'
import { startBoard, type BoardHandle } from '../../runtime/board/index.ts'
import { stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { makeTestModel, RecordingRunner, startBotMesh, type BotMesh } from './helpers.ts'

/** A worker's "LLM" that always asks `price` per layer for the whole call, whatever its floor says. */
function fixedPriceLlm (price: number): FakeBuiltModel {
  const model = fakeModel()
  const reply = (content: string, calls: Array<{ name: string, args: Record<string, unknown> }> = []): AIMessage =>
    new AIMessage({ id: randomUUID(), content, tool_calls: calls.map((c) => ({ id: randomUUID(), ...c, type: 'tool_call' as const })) })
  for (let i = 0; i < 200; i++) {
    model.respond((messages: BaseMessage[]) => {
      const last = messages[messages.length - 1]
      if (ToolMessage.isInstance(last)) return reply('Done.')
      const o = observationOf(last as HumanMessage)
      const e = o?.event
      if (e?.type === 'cfp') return reply('Proposing.', [{ name: 'propose', args: { start: o!.cfp!.want.start, end: o!.cfp!.want.end, price, text: `All of it at ${price}.` } }])
      if (e?.type === 'counter') return reply('Accepting.', [{ name: 'accept', args: { peer: e.peer, text: 'Agreed.' } }])
      if (e?.type === 'accepted') return reply('Signing.', [{ name: 'sign_contract', args: { peer: e.peer, text: 'Signed.' } }])
      return reply('Noted.')
    })
  }
  return model
}

/**
 * The board's controls on a running ClawBot: a head (offline negotiator) and a worker asking 2 per
 * layer; the owner drives the worker through its board's control API with the owner token.
 */
describe('the owner\'s controls act on the running agent', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let mesh: BotMesh
  let board: BoardHandle
  const runner = new RecordingRunner()
  let model: Awaited<ReturnType<typeof makeTestModel>>

  const post = async (action: string, body: unknown = {}): Promise<{ status: number, body: { state?: string, error?: string } }> => {
    const res = await fetch(`${board.url}api/control/${action}`, { method: 'POST', headers: { authorization: `Bearer ${board.token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) })
    return { status: res.status, body: await res.json() as { state?: string, error?: string } }
  }

  beforeAll(async () => {
    tmp = await tempDir()
    model = await makeTestModel(join(tmp.path, 'models'))
    mesh = await startBotMesh(join(tmp.path, 'mesh'), 2, model, {
      layersEach: 24,
      agent: () => ({ floor: 1, ceiling: 10, budget: 200, offerTtlMs: 3000 }),
      bot: (i) => i === 0 ? { runner, maxCalls: 50, callRestMs: 500 } : { brain: { model: fixedPriceLlm(2), label: 'fixed-price' } }
    })
    board = await startBoard(mesh.nodes[1], { port: 0 })
  })

  afterAll(async () => {
    await board?.stop()
    for (const b of mesh?.bots ?? []) await b.stop().catch(() => {})
    await stopAll(mesh?.nodes ?? [])
    await tmp.cleanup()
  })

  it('while paused makes no offer and signs nothing; after resume it trades again', async () => {
    const [head, worker] = mesh.bots
    expect((await post('pause', { reason: 'owner is gaming' })).body.state).toBe('paused')
    await head.assemble(model)
    // The head's call reaches its deadline unanswered: the paused worker never even opened it.
    await waitFor('a call to close unanswered', async () => (await head.book.negotiations({ role: 'head' })).some((n) => n.status !== 'open'), 20_000)
    expect(await worker.book.negotiations()).toEqual([])
    expect(worker.node.state).toBe('paused')

    // Resumed, it proposes; paused again before the head accepts, it refuses to sign.
    expect((await post('resume')).body.state).toBe('idle')
    await waitFor('the worker to propose', async () => (await worker.records.actions()).some((a) => a.tool === 'propose' && a.outcome === 'done'), 20_000)
    await post('pause')
    await waitFor('the worker to refuse signing', async () => (await worker.records.actions()).some((a) => a.tool === 'sign_contract' && a.outcome === 'refused' && /paused/.test(a.detail)), 20_000)
    expect(await worker.book.contracts({ status: 'active' })).toEqual([])
    // Market events came and went; the lifecycle kept the owner's pause.
    expect(worker.node.state).toBe('paused')
    expect(worker.node.stateHistory().filter((h) => h.state === 'paused').map((h) => h.reason)).toEqual(['owner is gaming', 'paused by the owner'])

    await post('resume')
    await waitFor('the head to run the pipeline on the worker', () => runner.runs.length === 1, 30_000)
    await waitFor('the worker to serve', () => worker.node.state === 'serving', 5000)
  }, 90_000)

  it('refuses the next offer below a floor raised on the board, and advertises that floor', async () => {
    const [head, worker] = mesh.bots
    const policy = await post('policy', { priceFloor: 5 })
    expect(policy.status).toBe(200)
    expect(worker.owner.current().priceFloor).toBe(5)
    await waitFor('the head to see the new floor', () => head.node.presence!.peers().some((p) => p.presence.priceFloor === 5), 5000)
    // A second model: the head calls for it, the worker (still asking 2) is refused by its own policy.
    const second = await makeTestModel(join(head.node.home, 'models'), 8)
    await head.assemble(second)
    await waitFor('the worker\'s offer below the floor to be refused', async () =>
      (await worker.records.actions()).some((a) => a.tool === 'propose' && a.outcome === 'refused' && /below the floor of 5/.test(a.detail)), 30_000)
    expect(await worker.book.contracts({ model: second.sha256 })).toEqual([])
  }, 60_000)

  it('the kill switch stops the agent and it stays stopped', async () => {
    const worker = mesh.bots[1]
    expect((await post('kill')).body.state).toBe('stopped')
    expect(worker.state).toBe('stopped')
    expect(worker.node.host!.services.pubsub.getTopics()).toEqual([])
    const again = await post('resume')
    expect(again.status).toBe(409)
    expect(again.body.error).toMatch(/kill switch/)
  }, 30_000)
})
