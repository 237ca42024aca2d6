// The market desk on its own, between a head and a worker over an in-process bus: which contracts
// become active, which proposals are recorded, and how many calls reach the agent.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { Store } from '../../runtime/store/store.ts'
import { migrateAgentTables } from '../../agents/migrations.ts'
import { NegotiationBook } from '../../skills/market/book.ts'
import { MarketDesk, MarketError, type MarketEvent } from '../../skills/market/desk.ts'
import { expireStaleOffers } from '../../skills/market/expiry.ts'
import { CfpKind, ProposeKind, marketScope, type ModelRef, type Terms } from '../../protocols/index.ts'
import { createLogger } from '../../runtime/log.ts'
import { tempDir } from '../helpers/mesh.ts'
import { LoopNet } from '../helpers/loop-bus.ts'

const MODEL: ModelRef = { sha256: 'd'.repeat(64), name: 'm', nLayer: 12, layerBytes: 1024 }
const terms = (start: number, end: number, price: number): Terms => ({ start, end, price, expiresAt: Date.now() + 60_000 })

interface Side { desk: MarketDesk, events: MarketEvent[], store: Store, id: string }

describe('market desk', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let net: LoopNet
  let head: Side
  let worker: Side

  const side = async (name: string, key: PrivateKey): Promise<Side> => {
    const store = await Store.open(join(tmp.path, `${name}.sqlite`))
    await migrateAgentTables(store)
    const id = peerIdFromPrivateKey(key).toString()
    const desk = new MarketDesk(net.bus(id), key, id, 'test', new NegotiationBook(store), createLogger(name, 'error'))
    const events: MarketEvent[] = []
    desk.onEvent((e) => events.push(e))
    desk.watchModel(MODEL.sha256)
    return { desk, events, store, id }
  }

  beforeEach(async () => {
    tmp = await tempDir()
    net = new LoopNet()
    head = await side('head', await generateKeyPair('Ed25519'))
    worker = await side('worker', await generateKeyPair('Ed25519'))
  })
  afterEach(async () => {
    for (const s of [head, worker]) { s.desk.stop(); await s.store.close() }
    await tmp.cleanup()
  })

  /** Head calls, worker proposes, head counters, worker accepts (and signs): the head may countersign. */
  async function toAcceptance (): Promise<string> {
    const cfp = await head.desk.publishCfp({ model: MODEL, want: { start: 0, end: 6 }, budget: 100, windowMs: 60_000, serveForMs: 600_000, maxRounds: 2, text: '' })
    await net.settle()
    await worker.desk.propose(cfp.cfpId, terms(0, 6, 5), '')
    await net.settle()
    await head.desk.counter(cfp.cfpId, worker.id, terms(0, 6, 4), '')
    await net.settle()
    await worker.desk.accept(cfp.cfpId, head.id, '')
    await net.settle()
    return cfp.cfpId
  }

  const active = async (s: Side): Promise<number> => (await s.desk.book.contracts({ status: 'active' })).length

  it('a countersignature in time makes the contract active on both sides', async () => {
    const cfpId = await toAcceptance()
    await head.desk.signContract(cfpId, worker.id, '')
    await net.settle()
    expect(await active(head)).toBe(1)
    expect(await active(worker)).toBe(1)
  })

  it('a countersignature after the acceptance lapsed never becomes an active contract at the worker', async () => {
    const cfpId = await toAcceptance()
    // The worker's acceptance lapses (nobody countersigned within the offer time).
    await expireStaleOffers(worker.desk.book, worker.desk, 0, async () => {}, Date.now() + 1)
    expect((await worker.desk.book.thread(cfpId, head.id))?.status).toBe('expired')
    await head.desk.signContract(cfpId, worker.id, '')
    await net.settle()
    expect(await active(worker)).toBe(0)
    // The head hears why and ends its copy: the contract is active nowhere.
    await net.settle()
    expect(head.events.some((e) => e.type === 'ended' && e.reason.includes('expired'))).toBe(true)
    expect(await active(head)).toBe(0)
  })

  it('a countersignature after the worker declined never becomes an active contract at the worker', async () => {
    const cfpId = await toAcceptance()
    net.held = []
    await worker.desk.reject(cfpId, head.id, 'memory went to another head', '')
    await head.desk.signContract(cfpId, worker.id, '') // the head had not heard the decline yet
    const held = net.held
    net.held = undefined
    for (const deliver of held) await deliver()
    await net.settle()
    expect(await active(worker)).toBe(0)
    expect(await active(head)).toBe(0)
  })

  it('records no proposal or counter outside the called range, and makes none', async () => {
    const cfp = await head.desk.publishCfp({ model: MODEL, want: { start: 2, end: 6 }, budget: 100, windowMs: 60_000, serveForMs: 600_000, maxRounds: 2, text: '' })
    await net.settle()
    await expect(worker.desk.propose(cfp.cfpId, terms(0, 8, 5), '')).rejects.toThrow(MarketError)
    // A worker whose desk is not ours sends it anyway.
    net.inject(ProposeKind, { from: worker.id, ts: Date.now(), body: { cfpId: cfp.cfpId, model: MODEL.sha256, to: head.id, terms: terms(0, 8, 5), text: '' } } as never, marketScope(MODEL.sha256))
    await net.settle()
    expect(await head.desk.book.threads(cfp.cfpId)).toEqual([])
    await worker.desk.book.putThread({ cfpId: cfp.cfpId, peer: head.id, status: 'proposed', terms: terms(2, 6, 5), termsFrom: worker.id, rounds: 0 })
    net.inject(ProposeKind, { from: worker.id, ts: Date.now(), body: { cfpId: cfp.cfpId, model: MODEL.sha256, to: head.id, terms: terms(2, 6, 5), text: '' } } as never, marketScope(MODEL.sha256))
    await net.settle()
    await expect(head.desk.counter(cfp.cfpId, worker.id, terms(0, 6, 3), '')).rejects.toThrow(/outside the called range/)
  })

  it('passes a peer\'s calls to the agent at a bounded rate, and only calls it could win', async () => {
    const cfpFrom = (i: number, over: Record<string, unknown> = {}): unknown => ({
      from: head.id, ts: Date.now(),
      body: { cfpId: `call-${i}-xxxxxxxx`, model: MODEL.sha256, modelRef: MODEL, want: { start: 0, end: 4 }, budget: 100, deadline: Date.now() + 60_000, serveUntil: Date.now() + 600_000, maxRounds: 2, text: '', ...over }
    })
    for (let i = 0; i < 60; i++) net.inject(CfpKind, cfpFrom(i) as never, marketScope(MODEL.sha256))
    await net.settle()
    const calls = worker.events.filter((e) => e.type === 'cfp')
    expect(calls).toHaveLength(5)
    expect(await worker.desk.book.negotiations({ role: 'worker' })).toHaveLength(5)

    // Another peer's calls are counted apart; the screen drops those the worker could not win.
    const other = await generateKeyPair('Ed25519')
    const otherId = peerIdFromPrivateKey(other).toString()
    worker.desk.screenCalls(async (cfp) => cfp.budget >= 50 ? { ok: true } : { ok: false, reason: 'budget below our floor' })
    net.inject(CfpKind, { ...(cfpFrom(100, { budget: 10 }) as object), from: otherId } as never, marketScope(MODEL.sha256))
    net.inject(CfpKind, { ...(cfpFrom(101) as object), from: otherId } as never, marketScope(MODEL.sha256))
    await net.settle()
    expect(worker.events.filter((e) => e.type === 'cfp').map((e) => e.cfpId)).toEqual([...calls.map((e) => e.cfpId), 'call-101-xxxxxxxx'])
  })
})
