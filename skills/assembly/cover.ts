import type { SignedContract } from '../../protocols/index.ts'

/**
 * Contracts that tile [0, nLayer) exactly, one per range, for a pipeline to run on; undefined when none
 * do. A head may hold overlapping contracts for a while (renewals signed before the old terms end), so
 * this searches: at each layer boundary it tries the contract that runs longest first, and backs off
 * when that leads to a boundary no contract starts at.
 */
export function exactCover (contracts: readonly SignedContract[], nLayer: number): SignedContract[] | undefined {
  const byStart = new Map<number, SignedContract[]>()
  for (const c of contracts) byStart.set(c.doc.start, [...(byStart.get(c.doc.start) ?? []), c])
  for (const list of byStart.values()) list.sort((a, b) => b.doc.serveUntil - a.doc.serveUntil)
  const dead = new Set<number>()
  const from = (cursor: number): SignedContract[] | undefined => {
    if (cursor === nLayer) return []
    if (dead.has(cursor)) return undefined
    for (const c of byStart.get(cursor) ?? []) {
      if (c.doc.end <= cursor || c.doc.end > nLayer) continue
      const rest = from(c.doc.end)
      if (rest !== undefined) return [c, ...rest]
    }
    dead.add(cursor)
    return undefined
  }
  return from(0)
}
