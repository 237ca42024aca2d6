import { createHash } from 'node:crypto'
import { z } from 'zod'

/**
 * Anti-entropy for settled receipts: range-based set reconciliation in the manner of Negentropy
 * (Aljoscha Meyer's range-based set reconciliation, as used by Nostr relays), over one libp2p stream.
 *
 * Gossip is fire-and-forget, so a node that was down or not yet connected when a receipt was gossiped
 * never hears it, and its balances drift from everyone else's. Receipts never change once settled and
 * are identified by the hash of their terms, so a node's holdings are a grow-only set of ids, and two
 * sets can be compared cheaply: items are sorted by (receipt ts, id), and the initiator sends the
 * fingerprint of the whole range; a range whose fingerprints differ is split (by the item count of
 * the side that splits) into sub-ranges with fingerprints of their own, or sent as its id list once
 * it is small. Equal ranges cost one fingerprint, so two nearly equal sets of N receipts agree in
 * O(log N) round trips and bytes proportional to the difference, not to N.
 *
 * One session teaches only its initiator what it lacks (the responder's replies to an id list are
 * filtered to what the initiator does not have); the initiator then pulls those receipts by id. Every
 * node initiates on connect and every so often, so both sides of a connection converge.
 */
export function receiptSyncProtocolFor (networkId: string): string {
  return `/clawmesh/${networkId}/receipts-sync/1`
}

export const RECEIPT_SYNC_LIMITS = {
  /** Largest frame either side reads or writes (a length prefix above it is refused unread). */
  maxFrameBytes: 512 * 1024,
  /** Ranges per reconciliation frame; the tail beyond it is folded into one fingerprint range. */
  maxRangesPerFrame: 128,
  /** A differing range with at most this many items is sent as its id list instead of being split. */
  idListMax: 32,
  /** How many sub-ranges a differing range is split into. */
  fanout: 16,
  /** Reconciliation round trips per session; honest sets of millions need a handful. */
  maxRounds: 40,
  /** Receipts asked for (and served) per pull frame: 128 of ~1.3 KB each (their contract attached). */
  maxPullPerRequest: 128,
  /**
   * Receipts one session pulls; more are left to the next session, started at once. Booking costs
   * about 7 ms a receipt on a busy 2-core machine, so 1024 keep a session well inside its 20 s.
   */
  maxPullPerSession: 1024
} as const

export type SyncLimits = { -readonly [K in keyof typeof RECEIPT_SYNC_LIMITS]: number }

/** A settled receipt as the set sees it: its id (hash of its terms) and its own timestamp. */
export interface SyncItem { ts: number, id: string }

/**
 * A position in (ts, id) order. The id part may be '' (before every id at that ts) or '~' (after
 * every id, only used by the upper end of the whole space: '~' sorts after any hex digit).
 */
export type Bound = [number, string]

const MAX_TS = Number.MAX_SAFE_INTEGER
export const LOWEST: Bound = [0, '']
export const HIGHEST: Bound = [MAX_TS, '~']

const hexId = z.string().regex(/^[0-9a-f]{64}$/)
const BoundSchema = z.tuple([z.number().int().min(0).max(MAX_TS), z.string().regex(/^(|~|[0-9a-f]{64})$/)])

/** One range [l, u): either the sender's fingerprint of its items there, or its ids there. */
const RangeSchema = z.object({
  l: BoundSchema,
  u: BoundSchema,
  fp: z.string().regex(/^[0-9a-f]{32}$/).optional(),
  ids: z.array(hexId).max(RECEIPT_SYNC_LIMITS.idListMax).optional()
}).strict().refine((r) => (r.fp === undefined) !== (r.ids === undefined), 'a range carries exactly one of fp and ids')

export type SyncRange = z.infer<typeof RangeSchema>

export const SyncFrameSchema = z.discriminatedUnion('t', [
  /** Reconciliation: initiator → responder and back. An empty reply means the sets agree. */
  z.object({ t: z.literal('rec'), ranges: z.array(RangeSchema).max(RECEIPT_SYNC_LIMITS.maxRangesPerFrame) }).strict(),
  /** Initiator → responder: send me these receipts. */
  z.object({ t: z.literal('get'), ids: z.array(hexId).min(1).max(RECEIPT_SYNC_LIMITS.maxPullPerRequest) }).strict(),
  /** Responder → initiator: the double-signed receipts asked for that it holds (untrusted until verified). */
  z.object({ t: z.literal('docs'), receipts: z.array(z.unknown()).max(RECEIPT_SYNC_LIMITS.maxPullPerRequest) }).strict(),
  /** Initiator → responder: the session is over. */
  z.object({ t: z.literal('done') }).strict()
])

export type SyncFrame = z.infer<typeof SyncFrameSchema>

export class SyncProtocolError extends Error {
  constructor (readonly reason: 'malformed' | 'out-of-order', detail: string) {
    super(`${reason}: ${detail}`)
    this.name = 'SyncProtocolError'
  }
}

export function compareBounds (a: Bound, b: Bound): number {
  if (a[0] !== b[0]) return a[0] < b[0] ? -1 : 1
  return a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0
}

const MOD = 1n << 256n

/**
 * The items one side holds, sorted, with prefix sums of their ids read as 256-bit integers, so that
 * any range's fingerprint costs two binary searches and one hash. The fingerprint is Negentropy's:
 * the sum of the ids mod 2^256 and the count, hashed (a sum, unlike XOR, does not cancel pairs).
 */
export class SyncSet {
  private readonly items: SyncItem[]
  private readonly prefix: bigint[]
  readonly ids: ReadonlySet<string>

  constructor (items: Iterable<SyncItem>, private readonly limits: SyncLimits = RECEIPT_SYNC_LIMITS) {
    const byId = new Map<string, SyncItem>()
    for (const item of items) byId.set(item.id, item)
    this.items = [...byId.values()].sort((a, b) => compareBounds([a.ts, a.id], [b.ts, b.id]))
    this.prefix = [0n]
    for (const item of this.items) this.prefix.push((this.prefix[this.prefix.length - 1] + BigInt('0x' + item.id)) % MOD)
    this.ids = new Set(byId.keys())
  }

  get size (): number {
    return this.items.length
  }

  /** The opening frame of a session: the fingerprint of everything. */
  initial (): SyncRange[] {
    return [{ l: LOWEST, u: HIGHEST, fp: this.fingerprint(0, this.items.length) }]
  }

  /**
   * Answers the peer's ranges. As initiator, id lists received add what we lack to `need` and are not
   * answered; as responder, an id list is answered with our ids there that it lacks. A differing
   * fingerprint is answered with our id list when small, else with split fingerprints. Returns the
   * ranges to send back; none means this side has nothing more to say.
   */
  reconcile (incoming: SyncRange[], role: 'initiator' | 'responder', need: Set<string>): SyncRange[] {
    checkOrder(incoming)
    const out: SyncRange[] = []
    for (const r of incoming) {
      const i = this.lowerIndex(r.l)
      const j = this.lowerIndex(r.u)
      if (r.ids !== undefined) {
        if (role === 'initiator') {
          for (const id of r.ids) if (!this.ids.has(id)) need.add(id)
          continue
        }
        const theirs = new Set(r.ids)
        const missing = this.items.slice(i, j).filter((item) => !theirs.has(item.id)).map((item) => item.id)
        if (missing.length === 0) continue
        // They hold at most idListMax here: if they lack more than that, split so they answer per part.
        if (missing.length <= this.limits.idListMax) out.push({ l: r.l, u: r.u, ids: missing })
        else out.push(...this.split(i, j, r.l, r.u))
        continue
      }
      if (r.fp === this.fingerprint(i, j)) continue
      if (j - i <= this.limits.idListMax) out.push({ l: r.l, u: r.u, ids: this.items.slice(i, j).map((item) => item.id) })
      else out.push(...this.split(i, j, r.l, r.u))
    }
    return this.capped(out)
  }

  /**
   * Keeps a frame within maxRangesPerFrame: the tail is folded into one fingerprint over its whole
   * span, which the peer will find differing and split again next round. Each round still settles
   * the ranges before the tail, so the session progresses.
   */
  private capped (out: SyncRange[]): SyncRange[] {
    const max = this.limits.maxRangesPerFrame
    if (out.length <= max) return out
    const l = out[max - 1].l
    const u = out[out.length - 1].u
    return [...out.slice(0, max - 1), { l, u, fp: this.fingerprint(this.lowerIndex(l), this.lowerIndex(u)) }]
  }

  private split (i: number, j: number, l: Bound, u: Bound): SyncRange[] {
    const count = j - i
    const parts = Math.min(this.limits.fanout, count)
    const starts = Array.from({ length: parts }, (_, k) => i + Math.floor(k * count / parts))
    return starts.map((start, k) => {
      const end = k + 1 < parts ? starts[k + 1] : j
      const lower: Bound = k === 0 ? l : [this.items[start].ts, this.items[start].id]
      const upper: Bound = k + 1 < parts ? [this.items[end].ts, this.items[end].id] : u
      return { l: lower, u: upper, fp: this.fingerprint(start, end) }
    })
  }

  /** Hash of (count, Σ ids mod 2^256) over items[i, j). */
  private fingerprint (i: number, j: number): string {
    const sum = ((this.prefix[j] - this.prefix[i]) % MOD + MOD) % MOD
    return createHash('sha256').update(`${j - i}:${sum.toString(16)}`).digest('hex').slice(0, 32)
  }

  /** Index of the first item at or after the bound. */
  private lowerIndex (b: Bound): number {
    let lo = 0
    let hi = this.items.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      const item = this.items[mid]
      if (compareBounds([item.ts, item.id], b) < 0) lo = mid + 1
      else hi = mid
    }
    return lo
  }
}

/** Ranges must be non-empty and ascending without overlap: otherwise a peer could make us redo work. */
function checkOrder (ranges: SyncRange[]): void {
  let prev: Bound | undefined
  for (const r of ranges) {
    if (compareBounds(r.l, r.u) >= 0) throw new SyncProtocolError('out-of-order', `empty or inverted range [${r.l.join(',')}, ${r.u.join(',')})`)
    if (prev !== undefined && compareBounds(r.l, prev) < 0) throw new SyncProtocolError('out-of-order', 'ranges overlap or are not ascending')
    prev = r.u
  }
}
