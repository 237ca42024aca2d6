// The product as a user runs it: real `clawmesh` processes made with init, invite, join, start and
// keys create, default settings (only the gateway's challenge window is shortened so that receipts
// settle within the test), paid requests through the official `openai` client and LangChain's
// ChatOpenAI, a worker killed with SIGKILL while a stream runs (a spare takes over), a head restart, and
// every node's ledger compared at the end.
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import OpenAI from 'openai'
import { ChatOpenAI } from '@langchain/openai'
import { generateTestModel } from '../../runtime/engine/test-model.ts'
import { ensureLlamaBuild } from '../../runtime/engine/build.ts'
import { allBalances } from '../../runtime/ledger/ledger.ts'
import { Store } from '../../runtime/store/store.ts'
import { DATABASE_FILE } from '../../runtime/config.ts'
import { CliMesh } from '../../sims/soak/cli-mesh.ts'
import { paidRequest } from '../../sims/soak/client.ts'

const PORT = 47300 + Math.floor(Math.random() * 200)

async function until<T> (what: string, f: () => Promise<T | undefined>, timeoutMs: number, everyMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  for (;;) {
    try {
      const v = await f()
      if (v !== undefined) return v
    } catch (err) { last = err }
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${timeoutMs} ms${last !== undefined ? `: ${(last as Error).message}` : ''}`)
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
}

async function activeContracts (home: string): Promise<Array<{ id: string, worker: string, head: string, status: string }>> {
  const store = await Store.open(join(home, DATABASE_FILE))
  try {
    return await store.db.all("SELECT id, worker, head, status FROM contracts WHERE status = 'active'")
  } finally {
    await store.close()
  }
}

async function agentBalances (home: string): Promise<Record<string, number>> {
  const store = await Store.open(join(home, DATABASE_FILE))
  try {
    return Object.fromEntries([...await allBalances(store.db)].filter(([a]) => a.startsWith('agent:')).sort())
  } finally {
    await store.close()
  }
}

describe('a mesh made with the CLI stays up and heals', () => {
  let root: string
  let mesh: CliMesh
  let baseURL: string
  let model: string
  let apiKey: string
  const workers = ['w1', 'w2', 'w3']

  beforeAll(async () => {
    await ensureLlamaBuild()
    root = await mkdtemp(join(tmpdir(), 'clawmesh-heal-'))
    mesh = new CliMesh(root)
    await mesh.init('head', PORT, { gateway: { port: PORT + 99, settleDelayMs: 1000 }, agent: { assemble: 'heal.gguf' } })
    await mkdir(join(root, 'head', 'models'), { recursive: true })
    await generateTestModel({ path: join(root, 'head', 'models', 'heal.gguf'), seed: 11, nEmbd: 128, nLayer: 4, nHead: 4, nHeadKv: 2, nFf: 352, type: 'f16' })
    await mesh.start('head')
    const invite = (JSON.parse(await mesh.cliOk(['invite', '--name', 'head', '--json'])) as { invite: string }).invite
    for (const [i, w] of workers.entries()) await mesh.join(invite, w, PORT + 1 + i)
    await Promise.all(workers.map(async (w) => await mesh.start(w)))
    apiKey = (JSON.parse(await mesh.cliOk(['keys', 'create', '--name', 'head', '--credits', '10000000', '--json'])) as { secret: string }).secret
    const api = await mesh.waitFor('head', /Paid API for (\S+): (\S+)\/v1/, 180_000)
    model = api[1]
    baseURL = `${api[2]}/v1`
  }, 300_000)

  afterAll(async () => {
    await mesh?.stopAll('SIGKILL', 1000)
    if (root !== undefined && process.env.CLAWMESH_KEEP_TEST_DIR !== '1') await rm(root, { recursive: true, force: true })
  })

  it('answers paid requests from the official openai client and from LangChain', async () => {
    const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 })
    const chat = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hello mesh' }], max_tokens: 8, temperature: 0 })
    expect(chat.choices[0].message.content?.length).toBeGreaterThan(0)
    expect(chat.usage?.completion_tokens).toBeGreaterThan(0)
    const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'stream please' }], max_tokens: 8, temperature: 0, stream: true })
    let streamed = ''
    for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? ''
    expect(streamed.length).toBeGreaterThan(0)
    const lc = new ChatOpenAI({ model, apiKey, configuration: { baseURL }, maxTokens: 8, temperature: 0, maxRetries: 0 })
    const reply = await lc.invoke('hello from langchain')
    expect(String(reply.content).length).toBeGreaterThan(0)
  }, 60_000)

  it('survives kill -9 of a serving worker mid-stream: a spare takes over and the ledgers agree', async () => {
    const before = await activeContracts(mesh.home('head'))
    const serving = new Set(before.map((c) => c.worker))
    expect(serving.size).toBeGreaterThan(0)
    const victim = [...mesh.members.values()].find((m) => m.name !== 'head' && serving.has(m.peerId ?? ''))
    expect(victim, 'a worker of the pipeline').toBeDefined()

    // A long stream is in flight when the worker dies: the client gets a clear error, not a hang.
    const inFlight = paidRequest({ baseUrl: baseURL, apiKey, model, maxTokens: 400, timeoutMs: 60_000 }, true)
    await new Promise((resolve) => setTimeout(resolve, 300))
    const killedAt = Date.now()
    await mesh.kill(victim!.name, 'SIGKILL')
    const broken = await inFlight
    if (!broken.ok) expect(broken.error ?? '').not.toBe('')

    // The head rebuilds without the dead worker; meanwhile the API says 503 (re-assembling), not 502.
    const statuses: number[] = []
    const back = await until('serving again after the kill', async () => {
      const r = await paidRequest({ baseUrl: baseURL, apiKey, model, maxTokens: 4, timeoutMs: 20_000 }, false)
      statuses.push(r.status)
      return r.ok ? Date.now() : undefined
    }, 120_000, 200)
    console.log(`serving again ${back - killedAt} ms after kill -9 of ${victim!.name}; statuses meanwhile: ${[...new Set(statuses)].join(', ')}`)
    expect(statuses.filter((s) => s !== 200 && s !== 503 && s !== 0)).toEqual([])
    const after = await activeContracts(mesh.home('head'))
    const victimId = victim!.peerId!
    expect(after.some((c) => c.worker === victimId)).toBe(false)

    // The killed worker comes back: its stale contract is ended (reconciled with the head), and it
    // catches up on the receipts it missed.
    await mesh.start(victim!.name)
    await until('the restarted worker dropped its broken contract', async () => {
      const mine = await activeContracts(mesh.home(victim!.name))
      return mine.some((c) => c.head === before[0].head) ? undefined : true
    }, 60_000, 500)
    await paidRequest({ baseUrl: baseURL, apiKey, model, maxTokens: 8 }, false)
    let views: string[] = []
    await until('every ledger view agrees', async () => {
      views = await Promise.all([...mesh.members.keys()].map(async (n) => JSON.stringify(await agentBalances(mesh.home(n)))))
      const earned = JSON.parse(views[0]) as Record<string, number>
      return new Set(views).size === 1 && Object.values(earned).some((v) => v > 0) ? true : undefined
    }, 90_000, 1000).catch((err: Error) => { throw new Error(`${err.message}; views: ${[...mesh.members.keys()].map((n, i) => `${n} ${views[i]}`).join(' | ')}`) })
  }, 300_000)

  it('rebuilds after a head restart without breaking contracts whose workers are alive', async () => {
    const before = await activeContracts(mesh.home('head'))
    await mesh.kill('head', 'SIGTERM')
    await mesh.start('head')
    await mesh.waitFor('head', /Paid API for (\S+): (\S+)\/v1/, 120_000)
    await until('serving again after the head restart', async () => {
      const r = await paidRequest({ baseUrl: baseURL, apiKey, model, maxTokens: 4 }, false)
      return r.ok ? true : undefined
    }, 60_000, 250)
    const after = await activeContracts(mesh.home('head'))
    // The contracts whose workers stayed up were kept, not broken and bought again.
    expect(after.filter((c) => before.some((b) => b.id === c.id)).length).toBeGreaterThan(0)
  }, 180_000)
})
