// Range-based set reconciliation on its own (protocols/receipt-sync.ts): what the initiator learns it
// lacks must be exactly the responder's set minus its own, in few rounds, within the frame limits.
import { createHash } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import {
  HIGHEST, LOWEST, RECEIPT_SYNC_LIMITS, SyncFrameSchema, SyncProtocolError, SyncSet, type SyncItem, type SyncRange
} from '../../protocols/receipt-sync.ts'
import { utf8 } from '../../protocols/encoding.ts'

const item = (n: number): SyncItem => ({ ts: 1_700_000_000_000 + Math.floor(n / 3) * 1000, id: createHash('sha256').update(`r${n}`).digest('hex') })
const items = (from: number, to: number): SyncItem[] => Array.from({ length: to - from }, (_, k) => item(from + k))

/** Runs a whole session in memory, checking every frame against the wire schema and size cap. */
function session (mine: SyncItem[], theirs: SyncItem[]): { need: Set<string>, rounds: number, bytes: number } {
  const initiator = new SyncSet(mine)
  const responder = new SyncSet(theirs)
  const need = new Set<string>()
  let ranges: SyncRange[] = initiator.initial()
  let rounds = 0
  let bytes = 0
  const wire = (frame: unknown): void => {
    const size = utf8(JSON.stringify(frame)).byteLength
    expect(size).toBeLessThanOrEqual(RECEIPT_SYNC_LIMITS.maxFrameBytes)
    expect(SyncFrameSchema.safeParse(frame).success).toBe(true)
    bytes += size
  }
  while (ranges.length > 0) {
    rounds++
    if (rounds > 100) throw new Error('reconciliation does not terminate')
    wire({ t: 'rec', ranges })
    const reply = responder.reconcile(ranges, 'responder', new Set())
    wire({ t: 'rec', ranges: reply })
    ranges = initiator.reconcile(reply, 'initiator', need)
  }
  return { need, rounds, bytes }
}

const ids = (xs: SyncItem[]): string[] => xs.map((x) => x.id).sort()

describe('receipt set reconciliation', () => {
  it('equal sets agree in one round trip, with one fingerprint each way', () => {
    const all = items(0, 5000)
    const r = session(all, [...all].reverse())
    expect(r.need.size).toBe(0)
    expect(r.rounds).toBe(1)
    expect(r.bytes).toBeLessThan(200)
  })

  it('learns exactly what it lacks: empty side, small and large gaps, disjoint sets', () => {
    const cases: Array<[SyncItem[], SyncItem[]]> = [
      [[], items(0, 10)],
      [[], items(0, 3000)],
      [items(0, 3000), []],
      [items(0, 2000), items(0, 2000).concat(items(5000, 5007))],
      [items(0, 1000).filter((_, k) => k % 7 !== 0), items(0, 1000)],
      [items(0, 800), items(400, 1600)],
      [items(0, 500), items(500, 1000)]
    ]
    for (const [mine, theirs] of cases) {
      const r = session(mine, theirs)
      const have = new Set(mine.map((x) => x.id))
      expect([...r.need].sort()).toEqual(ids(theirs.filter((x) => !have.has(x.id))))
    }
  })

  it('costs bytes in proportion to the difference, not to the set', () => {
    const base = items(0, 20_000)
    const few = session(base, base.concat(items(30_000, 30_010)))
    expect(few.need.size).toBe(10)
    // 20 000 receipts held by both: the ten missing ones cost a few round trips and a few KB.
    expect(few.rounds).toBeLessThanOrEqual(5)
    expect(few.bytes).toBeLessThan(40_000)
  })

  it('refuses ranges that are inverted or overlap', () => {
    const set = new SyncSet(items(0, 10))
    const fp = '0'.repeat(32)
    expect(() => set.reconcile([{ l: HIGHEST, u: LOWEST, fp }], 'responder', new Set())).toThrow(SyncProtocolError)
    const mid: [number, string] = [1_700_000_001_000, '']
    expect(() => set.reconcile([{ l: LOWEST, u: HIGHEST, fp }, { l: mid, u: HIGHEST, fp }], 'responder', new Set())).toThrow(/overlap/)
  })
})
