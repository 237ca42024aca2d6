import { canonicalBytes } from '../../protocols/encoding.ts'
import { sha256Hex, type FraudReport } from '../../protocols/receipts.ts'
import type { ContractRow } from '../ledger/contracts.ts'

/** Another provider of one contract's layer range, reachable as a whole pipeline (OpenAI-compatible). */
export interface Replay {
  /** The contract whose range this replay serves by someone else. */
  contract: string
  upstream: string
  /** Starts the replay pipeline on first use and gives its root URL (when `upstream` is empty). */
  start?: () => Promise<string>
  /** Who serves the replay (peer id or label), named in fraud reports. */
  provider: string
}

export interface SpotCheckOptions {
  /** Chance that a served request is replayed, 0..1. */
  probability: number
  replays: Replay[]
  /** Tokens generated in each replay: short, since a wrong slice diverges at once. */
  maxTokens?: number
  random?: () => number
}

export type SpotOutcome =
  | { outcome: 'match', contract: string }
  | { outcome: 'mismatch', contract: string, report: FraudReport }
  | { outcome: 'error', contract: string, error: string }

type Reporter = (r: Omit<FraudReport, 'voided' | 'ts'>) => Promise<FraudReport>

/**
 * Replays a request greedily on the pipeline that served it and on a pipeline where one range is
 * served by another provider, and compares the text. Sampling settings of the original request are
 * replaced by greedy ones (temperature 0, top-k 1, fixed seed): only deterministic outputs can be
 * compared. Which side lied cannot be told from two answers; we trust the replay provider (a
 * reference the head chose), so a mismatch accuses the contract's worker.
 */
export class SpotChecker {
  constructor (private readonly opts: SpotCheckOptions, private readonly primary: string, private readonly report: Reporter) {}

  pick (contracts: readonly ContractRow[]): { contract: ContractRow, replay: Replay } | undefined {
    const random = this.opts.random ?? Math.random
    if (random() >= this.opts.probability) return undefined
    const candidates = this.opts.replays.flatMap((replay) => {
      const contract = contracts.find((c) => c.id === replay.contract)
      return contract === undefined ? [] : [{ contract, replay }]
    })
    if (candidates.length === 0) return undefined
    return candidates[Math.floor(random() * candidates.length)]
  }

  async check (path: string, body: Record<string, unknown>, contract: ContractRow, replay: Replay): Promise<SpotOutcome> {
    const { stream: _s, stream_options: _so, max_completion_tokens: _m, ...rest } = body
    const n = Math.min(this.opts.maxTokens ?? 16, Number(body.max_tokens ?? 16))
    const probe = { ...rest, stream: false, temperature: 0, top_k: 1, seed: 1, n: 1, max_tokens: n, n_predict: n }
    try {
      const upstream = replay.upstream !== '' || replay.start === undefined ? replay.upstream : await replay.start()
      const [ours, theirs] = await Promise.all([generate(this.primary, path, probe), generate(upstream, path, probe)])
      if (ours === theirs) return { outcome: 'match', contract: contract.id }
      const report = await this.report({
        accused: contract.worker,
        contract: contract.id,
        modelHash: contract.modelSha256,
        layerStart: contract.layerStart,
        layerEnd: contract.layerEnd,
        requestHash: sha256Hex(canonicalBytes({ path, probe })),
        outputHash: sha256Hex(ours),
        referenceHash: sha256Hex(theirs),
        reference: replay.provider
      })
      return { outcome: 'mismatch', contract: contract.id, report }
    } catch (err) {
      return { outcome: 'error', contract: contract.id, error: (err as Error).message }
    }
  }
}

async function generate (base: string, path: string, body: unknown): Promise<string> {
  const r = await fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(60_000) })
  if (!r.ok) throw new Error(`spot check: POST ${base}${path} → HTTP ${r.status}: ${(await r.text()).slice(0, 200)}`)
  const j = await r.json() as { choices?: Array<{ message?: { content?: string }, text?: string }> }
  const c = j.choices?.[0]
  const text = c?.message?.content ?? c?.text
  if (typeof text !== 'string') throw new Error(`spot check: ${base}${path} answered without a choice`)
  return text
}
