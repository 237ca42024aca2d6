import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { mkdir, stat } from 'node:fs/promises'
import { request } from 'node:http'
import { join } from 'node:path'
import type { Browser, Page } from 'playwright-core'
import parsePrometheusTextFormat from 'parse-prometheus-text-format'
import type { MeshNode } from '../../runtime/node/node.ts'
import { startLocalMesh, fullyPresent, stopAll, waitFor } from '../../runtime/node/local-mesh.ts'
import { startBoard, type BoardHandle } from '../../runtime/board/index.ts'
import { AgentSettingsSchema } from '../../runtime/config.ts'
import { installOwnerPolicy } from '../../skills/market/owner-policy.ts'
import { tempDir } from '../helpers/mesh.ts'
import { launchChromium } from '../helpers/browser.ts'
import { KINDS, MODEL_SHA, THREAD, negotiate, recordDecisions, storeContracts, storeLedger, subscribeAll } from './fixtures.ts'

const SHOTS = join(process.cwd(), 'test-output', 'board')

describe('the board, in headless Chromium, on a 3-node mesh', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let nodes: MeshNode[] = []
  let head: MeshNode, birch: MeshNode, cedar: MeshNode
  let board: BoardHandle
  let browser: Browser
  let page: Page

  beforeAll(async () => {
    await mkdir(SHOTS, { recursive: true })
    dir = await tempDir('clawmesh-board-')
    // A system Chromium or the one npm installed (tests/helpers/browser.ts); no browser fails here, never skips.
    const launching = launchChromium()
    nodes = await startLocalMesh(dir.path, 3, { names: ['atlas', 'birch', 'cedar'], extra: { networkId: 'test', presenceIntervalMs: 500 }, logLevel: 'silent' })
    ;[head, birch, cedar] = nodes
    subscribeAll(nodes)
    await waitFor('every node to see the others', () => fullyPresent(nodes))
    // Gossipsub needs a heartbeat to graft the new topics' meshes before messages flow on them.
    await waitFor('the test topics to have mesh peers', () => nodes.every((n) =>
      Object.values(KINDS).every((k) => n.host!.services.pubsub.getSubscribers(n.bus!.topic(k.kind)).length >= 2)), 10_000)
    const sent = await negotiate(head, birch, cedar)
    await waitFor('the head to hold the whole negotiation', async () =>
      (await head.store.db.get<{ n: number }>("SELECT COUNT(*) AS n FROM messages WHERE kind LIKE 'test-%'"))!.n === sent, 10_000)
    await storeContracts(head, birch, cedar)
    await storeLedger(head, birch, cedar)
    await recordDecisions(head)
    // The owner's policy lives in skills/market; with no agent on this node, install it bare.
    await installOwnerPolicy(head, AgentSettingsSchema.parse({}))
    board = await startBoard(head, { port: 0 })
    const launched = await launching
    browser = launched.browser
    if (process.env.CLAWMESH_TEST_LOG === '1') console.log(`chromium from ${launched.found.source} (${launched.found.executablePath}) up in ${launched.ms} ms`)
    page = await browser.newPage({ viewport: { width: 1360, height: 900 }, colorScheme: 'dark' })
  })

  afterAll(async () => {
    await browser?.close()
    await board?.stop()
    await stopAll(nodes)
    await dir?.cleanup()
  })

  async function shot (name: string, p: Page = page): Promise<void> {
    await p.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true })
  }

  it('shows the peers, their state and hardware, and a picture of the network', async () => {
    await page.goto(`${board.url}#/mesh`)
    const rows = page.locator('#peers tbody tr')
    await rows.first().waitFor()
    await expect.poll(async () => await rows.count()).toBe(2)
    const text = await page.locator('#peers').innerText()
    expect(text).toContain('birch')
    expect(text).toContain('cedar')
    expect(text).toMatch(/idle/)
    expect(text).toMatch(/\d+ cores/)
    expect(await page.locator(`#peers tr[data-peer="${cedar.peerId.toString()}"]`).count()).toBe(1)
    // The picture: this node plus one node per peer, and one edge per peer.
    expect(await page.locator('svg .net-node.peer').count()).toBe(2)
    expect(await page.locator('svg .net-node.self').count()).toBe(1)
    expect(await page.locator('svg line.net-edge').count()).toBe(2)
    await expect.poll(async () => await page.locator('#live.on').count(), { timeout: 5000 }).toBe(1)
    // Latency comes from libp2p pings of direct links.
    await expect.poll(async () => await page.locator('svg .net-sub').filter({ hasText: / ms$/ }).count(), { timeout: 10_000 }).toBeGreaterThan(0)
    await shot('mesh')
    const light = await browser.newPage({ viewport: { width: 1360, height: 900 }, colorScheme: 'light' })
    await light.goto(`${board.url}#/mesh`)
    await light.locator('#peers tbody tr').nth(1).waitFor()
    await shot('mesh-light', light)
    await light.close()
  })

  it('shows the completed negotiation as a dialogue, with the binding terms beside the words, and finds it by search', async () => {
    await page.goto(`${board.url}#/negotiations`)
    const thread = page.locator(`section.thread[data-thread="${THREAD}"]`)
    await thread.waitFor()
    expect(await thread.locator('.pill').first().innerText()).toBe('agreed')
    const lines = thread.locator('.line[data-id]')
    expect(await lines.count()).toBe(6)
    // In order, each with its sender's name (from presence) and its own words and terms side by side.
    const first = lines.nth(0)
    expect(await first.locator('.who b').innerText()).toBe('atlas')
    expect(await first.locator('.text').innerText()).toContain('Looking for two workers')
    const counter = lines.nth(3)
    expect(await counter.getAttribute('data-kind')).toBe('test-counter')
    expect(await counter.locator('.text').innerText()).toContain('Would you do 4.5?')
    const terms = await counter.locator('.terms').innerText()
    expect(terms).toMatch(/price\s+4\.5/)
    expect(terms).toMatch(/round\s+1/)
    const accept = lines.nth(4)
    expect(await accept.locator('.who b').innerText()).toBe('cedar')
    await shot('negotiations')

    await page.fill('#q', 'floor is 3')
    await expect.poll(async () => await page.locator('section.thread mark').count()).toBeGreaterThan(0)
    expect(await page.locator('section.thread').count()).toBe(1)
    await page.fill('#q', 'no such words anywhere')
    await page.locator('.empty', { hasText: 'Nothing matches' }).waitFor()
    await page.fill('#q', '')
    await thread.waitFor()
  })

  it('draws the shard map from the contracts: who serves which layers, and whether the pipeline is whole', async () => {
    // What the engine records as it serves: 3 requests over the last minute.
    for (const [ago, tokens] of [[30_000, 900], [15_000, 700], [1000, 800]]) head.serving.record(MODEL_SHA, tokens, Date.now() - ago)
    await page.goto(`${board.url}#/models`)
    const model = page.locator(`.card.model[data-model="${MODEL_SHA}"]`)
    await model.waitFor()
    expect(await model.locator('h2').innerText()).toBe('mesh-llama-8b')
    expect(await model.locator('.pill').first().innerText()).toBe('healthy')
    const shards = model.locator('.shard')
    expect(await shards.count()).toBe(2)
    expect(await model.locator('.shard[data-worker="birch"]').getAttribute('data-layers')).toBe('0-16')
    expect(await model.locator('.shard[data-worker="cedar"]').getAttribute('data-layers')).toBe('16-32')
    // Each shard spans its share of the track: half of 32 layers each.
    // Measured in one turn of the page's event loop: a live update may replace the DOM between two calls.
    const share = await page.evaluate((sha) => {
      const card = document.querySelector(`.card.model[data-model="${sha}"]`)!
      return card.querySelector('.shard[data-worker="birch"]')!.getBoundingClientRect().width / card.querySelector('.shard-track')!.getBoundingClientRect().width
    }, MODEL_SHA)
    expect(share).toBeGreaterThan(0.45)
    expect(share).toBeLessThan(0.55)
    // 2400 tokens in the last minute: 40 tokens/s.
    expect(await model.locator('.stat', { hasText: 'tokens/s' }).locator('b').innerText()).toBe('40')
    await shot('models')
  })

  it('shows a new message without a reload', async () => {
    await page.goto(`${board.url}#/negotiations`)
    await page.locator(`section.thread[data-thread="${THREAD}"]`).waitFor()
    await page.evaluate(() => { (window as unknown as { stillHere: boolean }).stillHere = true })
    const words = `Cedar is warming up layers 16–31 now (${Date.now()}).`
    await cedar.bus!.publish(KINDS.propose, { thread: 'cfp-late-arrival', text: words, terms: { start: 16, end: 32, price: 4.5 } })
    await page.locator('.line .text', { hasText: words }).waitFor({ timeout: 10_000 })
    expect(await page.evaluate(() => (window as unknown as { stillHere?: boolean }).stillHere)).toBe(true)
    // The agent page's activity is live too.
    await page.goto(`${board.url}#/agent`)
    await page.locator('#activity').waitFor()
    await page.evaluate(() => { (window as unknown as { stillHere: boolean }).stillHere = true })
    await head.activity.record('decision', 'Watching cedar warm up', { why: 'its first tokens decide whether the pipeline is healthy' })
    await page.locator('#activity li', { hasText: 'Watching cedar warm up' }).waitFor({ timeout: 5000 })
    expect(await page.evaluate(() => (window as unknown as { stillHere?: boolean }).stillHere)).toBe(true)
    await page.goto(`${board.url}#/money`)
    await page.locator('svg.chart path.line-path').waitFor()
    await shot('money')
  })

  it('shows governance generically: none yet, then the documented views as soon as they exist', async () => {
    await page.goto(`${board.url}#/governance`)
    await page.locator('.empty', { hasText: 'No governance yet' }).waitFor()
    // What the governance layer may create later; the board knows only these view names.
    await head.store.db.exec(`
      CREATE TABLE governance_test_prs (number INTEGER, title TEXT, author TEXT, approvals INTEGER, quorum INTEGER, state TEXT);
      INSERT INTO governance_test_prs VALUES (41, 'Raise the default presence interval to 20 s', 'birch', 3, 3, 'quorum reached'),
                                             (42, 'Cap counter-offers at 5 rounds', 'cedar', 1, 3, 'open');
      CREATE VIEW board_prs AS SELECT number, title, author, approvals || ' of ' || quorum AS votes, state FROM governance_test_prs;`)
    await page.locator('[data-panel="prs"] td', { hasText: 'Cap counter-offers at 5 rounds' }).waitFor({ timeout: 5000 })
    expect(await page.locator('[data-panel="prs"] td', { hasText: '3 of 3' }).count()).toBe(1)
    expect(await page.locator('[data-panel="votes"] .empty').count()).toBe(1)
    expect(await page.locator('[data-panel="raw"] h2', { hasText: 'governance_test_prs' }).count()).toBe(1)
    await shot('governance')
  })

  it('serves /metrics that a Prometheus text-format parser reads', async () => {
    head.serving.record(MODEL_SHA, 1234)
    const res = await fetch(`${board.url}metrics`)
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/)
    const families = parsePrometheusTextFormat(await res.text())
    const family = (name: string): { type: string, metrics: Array<{ value: string, labels?: Record<string, string> }> } => {
      const f = families.find((x: { name: string }) => x.name === name)
      if (f === undefined) throw new Error(`no ${name} in /metrics`)
      return f
    }
    const value = (name: string, labels: Record<string, string>): number =>
      Number(family(name).metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v))?.value)
    expect(value('clawmesh_peers', { view: 'present' })).toBe(2)
    expect(family('clawmesh_gossip_accepted_total').type).toBe('COUNTER')
    expect(value('clawmesh_gossip_accepted_total', { kind: 'test-propose' })).toBeGreaterThanOrEqual(2)
    expect(value('clawmesh_gossip_published_total', { kind: 'test-cfp' })).toBe(1)
    expect(value('clawmesh_gossip_rejected_total', { reason: 'bad-signature' })).toBe(0)
    expect(value('clawmesh_tokens_served_total', { model: MODEL_SHA })).toBe(2400 + 1234)
    expect(value('clawmesh_credits', { account: `peer:${head.peerId.toString()}` })).toBe(1000 + 240 + 410 - 128 + 515)
    expect(value('clawmesh_lifecycle_state', { state: head.state })).toBe(1)
    expect(value('clawmesh_lifecycle_state', { state: 'stopped' })).toBe(0)
    expect(value('clawmesh_contracts', { status: 'active' })).toBe(2)
  })

  it('answers only to loopback names, and only GET outside the controls', async () => {
    const status = async (method: string, path: string, host: string): Promise<number> => await new Promise((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: board.port, method, path, headers: { host } }, (res) => { res.resume(); resolve(res.statusCode!) })
      req.on('error', reject)
      req.end()
    })
    expect(await status('GET', '/api/mesh', `127.0.0.1:${board.port}`)).toBe(200)
    expect(await status('GET', '/api/mesh', `evil.example:${board.port}`)).toBe(421) // DNS rebinding
    expect(await status('POST', '/api/mesh', `127.0.0.1:${board.port}`)).toBe(405)
    expect(await status('GET', '/static/../../node/node.ts', `127.0.0.1:${board.port}`)).toBe(404)
    expect((await stat(join(head.home, 'board.token'))).mode & 0o777).toBe(0o600)
  })

  it('refuses the owner controls without the token, and pause, policy and the kill switch work with it', async () => {
    const post = async (action: string, token: string | undefined, body: unknown = {}): Promise<{ status: number, body: { error?: string, state?: string } }> =>
      await page.evaluate(async ({ url, action, token, body }) => {
        const headers: Record<string, string> = { 'content-type': 'application/json' }
        if (token !== undefined) headers.authorization = `Bearer ${token}`
        const res = await fetch(`${url}api/control/${action}`, { method: 'POST', headers, body: JSON.stringify(body) })
        return { status: res.status, body: await res.json() }
      }, { url: board.url, action, token, body })
    await page.goto(`${board.url}#/agent`)
    // Without the token: refused, and nothing happens.
    expect((await post('kill', undefined)).status).toBe(401)
    expect((await post('kill', 'x'.repeat(43))).status).toBe(401)
    expect((await post('pause', undefined)).status).toBe(401)
    expect(head.state).toBe('idle')
    expect(head.host!.services.pubsub.getTopics().length).toBeGreaterThan(0)
    // The page offers no controls until the owner unlocks them.
    await page.locator('#unlock').waitFor()
    expect(await page.locator('#kill').count()).toBe(0)

    // With it: pause is visible to peers through the heartbeat, resume undoes it.
    expect((await post('pause', board.token, { reason: 'owner is gaming tonight' })).body.state).toBe('paused')
    await waitFor('birch to see atlas paused', () => birch.presence!.peers().some((p) => p.peerId === head.peerId.toString() && p.presence.state === 'paused'), 5000)
    expect((await post('resume', board.token)).body.state).toBe('idle')
    const policy = await post('policy', board.token, { priceFloor: 3.25, memoryShare: 0.6, hours: { start: '22:00', end: '07:00' } })
    expect(policy.status).toBe(200)
    expect(JSON.parse((await head.store.db.get<{ bounds: string }>('SELECT bounds FROM owner_policy'))!.bounds)).toEqual({ priceFloor: 3.25, memoryShare: 0.6, hours: { start: '22:00', end: '07:00' } })
    await waitFor('peers to see the new floor', () => cedar.presence!.peers().some((p) => p.peerId === head.peerId.toString() && p.presence.priceFloor === 3.25), 5000)
    expect((await post('policy', board.token, { memoryShare: 7 })).status).toBe(400)

    // The kill switch through the page itself: unlock with the token, click, confirm.
    await page.fill('#token', board.token)
    await page.click('#unlock button')
    await page.locator('#kill').waitFor()
    await shot('agent')
    page.once('dialog', (d) => { void d.accept() })
    await page.click('#kill')
    await page.locator('#notice.good', { hasText: 'Kill switch: done' }).waitFor({ timeout: 15_000 })
    expect(head.state).toBe('stopped')
    expect(head.host!.services.pubsub.getTopics()).toEqual([])
    await waitFor('birch to see atlas stopped', () => birch.presence!.peers().some((p) => p.peerId === head.peerId.toString() && p.presence.state === 'stopped'), 5000)
    // Final until restart: the node refuses to resume, and says why.
    const again = await post('resume', board.token)
    expect(again.status).toBe(409)
    expect(again.body.error).toMatch(/kill switch/)
    await page.locator('.stat .pill', { hasText: 'stopped' }).waitFor()
    await shot('agent-killed')
  })
})
