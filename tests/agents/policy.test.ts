import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { Store } from '../../runtime/store/store.ts'
import { migrateAgentTables } from '../../agents/migrations.ts'
import { PolicyGuard } from '../../skills/market/policy-guard.ts'
import { withinHours, type Bounds } from '../../skills/market/owner-policy.ts'
import { NegotiationBook } from '../../skills/market/book.ts'
import type { Cfp, Terms } from '../../protocols/index.ts'
import { tempDir } from '../helpers/mesh.ts'

const ME = '12D3KooWMeMeMeMeMeMeMeMeMeMeMeMeMeMeMeMeMeMeMeMeMe'
const HEAD = '12D3KooWHeadHeadHeadHeadHeadHeadHeadHeadHeadHeadHe'
const MB = 2 ** 20

function cfp (id: string, over: Partial<Cfp> = {}): Cfp {
  return { cfpId: id, model: 'c'.repeat(64), modelRef: { sha256: 'c'.repeat(64), name: 'm', nLayer: 12, layerBytes: 10 * MB }, want: { start: 0, end: 12 }, budget: 30, deadline: Date.now() + 5000, serveUntil: Date.now() + 60_000, maxRounds: 2, text: '', ...over }
}
const terms = (start: number, end: number, price: number): Terms => ({ start, end, price, expiresAt: Date.now() + 60_000 })

describe('owner policy', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let store: Store
  let book: NegotiationBook
  let bounds: Bounds
  let policy: PolicyGuard
  let idle = true

  beforeAll(async () => {
    tmp = await tempDir()
    store = await Store.open(join(tmp.path, 'db.sqlite'))
    await migrateAgentTables(store)
    book = new NegotiationBook(store)
    bounds = { floor: 2, ceiling: 5, budget: 40, maxDeals: 2, lendableBytes: 50 * MB, idleOnly: false, hours: null }
    policy = new PolicyGuard({ me: ME, book, bounds: () => bounds, isIdle: () => idle })
  })
  afterAll(async () => {
    await store.close()
    await tmp.cleanup()
  })

  it('keeps a worker at or above its floor and inside the called range', async () => {
    expect(await policy.check({ type: 'propose', cfp: cfp('w-call-1'), terms: terms(0, 4, 2) })).toEqual({ ok: true })
    expect(await policy.check({ type: 'propose', cfp: cfp('w-call-1'), terms: terms(0, 4, 1.99) })).toMatchObject({ ok: false, reason: expect.stringMatching(/below the floor of 2/) })
    expect(await policy.check({ type: 'propose', cfp: cfp('w-call-1', { want: { start: 4, end: 8 } }), terms: terms(0, 4, 3) })).toMatchObject({ ok: false, reason: expect.stringMatching(/outside the called range/) })
  })

  it('counts memory already promised: layers must fit in what is left to lend', async () => {
    expect(await policy.check({ type: 'propose', cfp: cfp('w-call-1'), terms: terms(0, 5, 3) })).toEqual({ ok: true })
    expect(await policy.check({ type: 'propose', cfp: cfp('w-call-1'), terms: terms(0, 6, 3) })).toMatchObject({ ok: false, reason: expect.stringMatching(/at most 5 layers/) })
    // A deal in flight (accepted) takes 3 layers' worth: now only 2 more fit.
    await book.openNegotiation({ cfpId: 'w-held-1', role: 'worker', model: 'c'.repeat(64), head: HEAD, cfp: cfp('w-held-1'), status: 'open' })
    await book.putThread({ cfpId: 'w-held-1', peer: HEAD, status: 'accepted', terms: terms(0, 3, 3), termsFrom: ME, rounds: 0 })
    expect(await policy.check({ type: 'propose', cfp: cfp('w-call-2'), terms: terms(0, 3, 3) })).toMatchObject({ ok: false, reason: expect.stringMatching(/at most 2 layers/) })
    expect(await policy.check({ type: 'propose', cfp: cfp('w-call-2'), terms: terms(0, 2, 3) })).toEqual({ ok: true })
  })

  it('screens calls the worker could not win before they reach its LLM: budget, memory, hours', async () => {
    // Holding one deal of 3 layers of 10 MiB: 20 MiB left to lend.
    expect(await policy.screenCall(cfp('s-call-1'))).toEqual({ ok: true })
    expect(await policy.screenCall(cfp('s-call-2', { budget: 1 }))).toMatchObject({ ok: false, reason: expect.stringMatching(/below our floor/) })
    expect(await policy.screenCall(cfp('s-call-3', { modelRef: { sha256: 'c'.repeat(64), name: 'm', nLayer: 12, layerBytes: 21 * MB } }))).toMatchObject({ ok: false, reason: expect.stringMatching(/may be lent/) })
    const saved = bounds
    const now = new Date()
    const later = `${String((now.getHours() + 2) % 24).padStart(2, '0')}:00`
    const after = `${String((now.getHours() + 3) % 24).padStart(2, '0')}:00`
    bounds = { ...saved, hours: { start: later, end: after } }
    expect(await policy.screenCall(cfp('s-call-4'))).toMatchObject({ ok: false, reason: expect.stringMatching(/only between/) })
    bounds = saved
  })

  it('holds at most maxDeals deals', async () => {
    await book.openNegotiation({ cfpId: 'w-held-2', role: 'worker', model: 'c'.repeat(64), head: HEAD, cfp: cfp('w-held-2'), status: 'open' })
    await book.putThread({ cfpId: 'w-held-2', peer: HEAD, status: 'contracted', terms: terms(3, 4, 3), termsFrom: ME, rounds: 0 })
    expect(await policy.check({ type: 'propose', cfp: cfp('w-call-3'), terms: terms(0, 1, 3) })).toMatchObject({ ok: false, reason: expect.stringMatching(/already holding 2 deals/) })
  })

  it('works only in the owner\'s hours and, when asked, only while idle', async () => {
    expect(withinHours({ start: '22:00', end: '07:00' }, new Date(2026, 0, 1, 23, 30))).toBe(true)
    expect(withinHours({ start: '22:00', end: '07:00' }, new Date(2026, 0, 1, 12, 0))).toBe(false)
    expect(withinHours({ start: '09:00', end: '17:00' }, new Date(2026, 0, 1, 12, 0))).toBe(true)
    const saved = bounds
    bounds = { ...saved, maxDeals: 10, idleOnly: true }
    idle = false
    expect(await policy.check({ type: 'propose', cfp: cfp('w-call-4'), terms: terms(0, 1, 3) })).toMatchObject({ ok: false, reason: expect.stringMatching(/idle/) })
    bounds = saved
    idle = true
  })

  it('keeps a head under its ceiling and budget, and never buys a layer twice', async () => {
    const call = cfp('h-call-1', { budget: 20 })
    await book.openNegotiation({ cfpId: 'h-call-1', role: 'head', model: call.model, head: ME, cfp: call, status: 'choosing' })
    const w1 = '12D3KooWWorker1Worker1Worker1Worker1Worker1Worker1W'
    const w2 = '12D3KooWWorker2Worker2Worker2Worker2Worker2Worker2W'
    expect(await policy.check({ type: 'accept', role: 'head', cfp: call, peer: w1, terms: terms(0, 4, 5.01) })).toMatchObject({ ok: false, reason: expect.stringMatching(/above the ceiling of 5/) })
    expect(await policy.check({ type: 'accept', role: 'head', cfp: call, peer: w1, terms: terms(0, 4, 4) })).toEqual({ ok: true })
    await book.putThread({ cfpId: 'h-call-1', peer: w1, status: 'accepted', terms: terms(0, 4, 4), termsFrom: w1, rounds: 0 })
    expect(await policy.check({ type: 'accept', role: 'head', cfp: call, peer: w2, terms: terms(3, 6, 1) })).toMatchObject({ ok: false, reason: expect.stringMatching(/overlap/) })
    expect(await policy.check({ type: 'accept', role: 'head', cfp: call, peer: w2, terms: terms(4, 6, 2.5) })).toMatchObject({ ok: false, reason: expect.stringMatching(/past its budget of 20/) })
    expect(await policy.check({ type: 'accept', role: 'head', cfp: call, peer: w2, terms: terms(4, 6, 2) })).toEqual({ ok: true })
    expect(await policy.check({ type: 'publish_cfp', model: call.modelRef, want: { start: 0, end: 12 }, budget: 41 })).toMatchObject({ ok: false, reason: expect.stringMatching(/owner's budget of 40/) })
  })
})
