/**
 * A load generator in a process of its own, so that the clients' work does not share an event loop
 * with the server being measured (in one process, fetch's own cost was most of the CPU at a few
 * hundred requests/s, and it counted against the gateway). Node's http with keep-alive: cheaper per
 * request than fetch, which leaves more of the machine to the server.
 *
 *   node --import tsx sims/lib/load-client.ts '<json LoadSpec>'   → prints one JSON line LoadResult
 *
 * runLoad() spawns it and waits for the result.
 */
import { spawn } from 'node:child_process'
import { Agent, request } from 'node:http'
import { fileURLToPath } from 'node:url'

export interface LoadSpec {
  /** Base URL; requests go to /v1/chat/completions. */
  url: string
  /** Bearer token, if any. */
  secret?: string
  stream: boolean
  clients: number
  windowMs: number
  maxTokens: number
}

export interface LoadResult { done: number, errors: number, seconds: number }

async function post (agent: Agent, url: URL, headers: Record<string, string>, body: string): Promise<number> {
  return await new Promise<number>((resolve, reject) => {
    const req = request(url, { method: 'POST', agent, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) } }, (res) => {
      res.on('data', () => {})
      res.on('end', () => resolve(res.statusCode ?? 0))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body)
  })
}

async function load (spec: LoadSpec): Promise<LoadResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: spec.clients })
  const url = new URL('/v1/chat/completions', spec.url)
  const headers: Record<string, string> = { 'content-type': 'application/json', ...(spec.secret === undefined ? {} : { authorization: `Bearer ${spec.secret}` }) }
  const body = JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }], max_tokens: spec.maxTokens, stream: spec.stream })
  const deadline = Date.now() + spec.windowMs
  let done = 0
  let errors = 0
  const t0 = performance.now()
  await Promise.all(Array.from({ length: spec.clients }, async () => {
    while (Date.now() < deadline) {
      try {
        if (await post(agent, url, headers, body) === 200) done++
        else errors++
      } catch {
        errors++
      }
    }
  }))
  agent.destroy()
  return { done, errors, seconds: (performance.now() - t0) / 1000 }
}

const SELF = fileURLToPath(import.meta.url)

/** Runs one load window in a child process. */
export async function runLoad (spec: LoadSpec): Promise<LoadResult> {
  const child = spawn(process.execPath, ['--import', 'tsx', SELF, JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  child.stdout.on('data', (d: Buffer) => { out += d.toString() })
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve))
  if (code !== 0) throw new Error(`load client for ${spec.url} exited with ${code}: ${out.slice(0, 300)}`)
  return JSON.parse(out.trim().split('\n').pop() ?? '') as LoadResult
}

if (process.argv[1] === SELF) {
  const spec = JSON.parse(process.argv[2] ?? '') as LoadSpec
  process.stdout.write(JSON.stringify(await load(spec)) + '\n')
}
