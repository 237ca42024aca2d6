import type { LayerRange } from '../../protocols/index.ts'
import type { Observation, ThreadView } from '../observation.ts'

/** One tool call the offline negotiator decides to make. */
export interface Move {
  tool: 'publish_cfp' | 'propose' | 'counter' | 'accept' | 'reject' | 'sign_contract'
  args: Record<string, unknown>
}

export const OFFLINE_LABEL = '[offline negotiator]'

const say = (sentence: string): string => `${OFFLINE_LABEL} ${sentence}`
const r2 = (x: number): number => Math.round(x * 100) / 100
const span = (r: LayerRange): string => r.end - r.start === 1 ? `layer ${r.start}` : `layers ${r.start} to ${r.end - 1}`

/**
 * The built-in negotiator's pricing strategy, deterministic and readable. It reads only binding terms
 * and its own bounds, never what peers wrote.
 *
 * Worker: anchors high (60-100% above its floor, more as its memory fills up, but not far above what
 * the head's budget allows per layer), concedes linearly toward the floor over the rounds, accepts any
 * counter within 15% of the floor or when rounds run out.
 * Head: waits for the deadline, then fills the missing layers with the cheapest offers first, paying at
 * most budget-left / layers-left per layer; accepts offers at or under that target as they stand,
 * counters the others at the target, and rejects what it does not need.
 */
export function decide (o: Observation): { moves: Move[], note: string } {
  switch (o.event.type) {
    case 'assemble': return callForProposals(o, o.event.missing)
    case 'cfp': return proposeFor(o)
    case 'deadline': return choose(o)
    case 'counter': return o.role === 'worker' ? answerAsWorker(o, o.event.peer) : answerAsHead(o, o.event.peer)
    case 'accepted': return countersign(o, o.event.peer)
    case 'rejected': return { moves: [], note: say('They walked away; nothing to do in this thread.') }
  }
}

/**
 * They accepted: countersign, unless (as a worker) the deal no longer fits. Offers go out to several
 * heads at once, and another head's acceptance may have taken the memory or the last deal slot in the
 * meantime; then say so at once, rather than let the head wait for the offer to lapse.
 */
function countersign (o: Observation, peer: string): { moves: Move[], note: string } {
  if (o.role === 'worker') {
    // This acceptance is already counted among the commitments.
    const over = o.committedBytes - o.bounds.lendableBytes
    if (o.deals > o.bounds.maxDeals || over > 0) {
      const reason = o.deals > o.bounds.maxDeals ? `I now hold ${o.deals - 1} deals, my owner's limit` : 'my memory went to another deal in the meantime'
      return { moves: [{ tool: 'reject', args: { peer, reason, text: say(`Sorry, I can no longer take this: ${reason}.`) } }], note: say('Accepted too late; declining.') }
    }
  }
  return { moves: [{ tool: 'sign_contract', args: { peer, text: say('Agreed; I have countersigned the contract.') } }], note: say('They accepted; countersigning.') }
}

function callForProposals (o: Observation, missing: LayerRange[]): { moves: Move[], note: string } {
  const total = missing.reduce((n, r) => n + r.end - r.start, 0)
  const left = Math.max(0, o.bounds.budget - o.spent)
  const moves: Move[] = missing.map((r) => {
    const n = r.end - r.start
    const budget = Math.floor(Math.min(o.bounds.ceiling * n, left * n / Math.max(1, total)) * 100) / 100
    return { tool: 'publish_cfp', args: { start: r.start, end: r.end, budget, text: say(`I am assembling ${o.model?.name ?? 'a model'} and need ${span(r)} served. Please send your best offer before the deadline.`) } }
  })
  return { moves, note: say(`Calling for ${total} missing layers.`) }
}

function capacityLayers (o: Observation, layerBytes: number): number {
  return Math.max(0, Math.floor((o.bounds.lendableBytes - o.committedBytes) / Math.max(1, layerBytes)))
}

/** The worker's asking price: scarcity pricing above the floor, tempered by what the head can pay. */
function anchor (o: Observation): number {
  const cfp = o.cfp!
  const used = o.bounds.lendableBytes > 0 ? o.committedBytes / o.bounds.lendableBytes : 1
  const perLayerBudget = cfp.budget / Math.max(1, cfp.want.end - cfp.want.start)
  return r2(Math.max(o.bounds.floor, Math.min(o.bounds.floor * (1.6 + 0.4 * used), perLayerBudget * 1.2)))
}

function proposeFor (o: Observation): { moves: Move[], note: string } {
  const cfp = o.cfp!
  if (o.deals >= o.bounds.maxDeals) return { moves: [], note: say(`I already hold ${o.deals} deals; passing on this call.`) }
  const cap = Math.min(capacityLayers(o, cfp.modelRef.layerBytes), cfp.want.end - cfp.want.start)
  if (cap === 0) return { moves: [], note: say('Not enough memory left to lend for even one layer; passing.') }
  const price = anchor(o)
  const range = { start: cfp.want.start, end: cfp.want.start + cap }
  return {
    moves: [{ tool: 'propose', args: { ...range, price, text: say(`I can hold up to ${cap} layers (${span(range)} or wherever you need them) for ${price} credits per layer per million tokens.`) } }],
    note: say(`Proposing ${cap} layers at ${price}.`)
  }
}

/**
 * A counter for layers the call did not ask for is declined as such: accepting it would sign a deal
 * outside the call (the policy refuses it too, but the negotiator must not try, and the other side
 * deserves the reason rather than silence).
 */
function outsideCall (o: Observation, t: ThreadView, peer?: string): { moves: Move[], note: string } | undefined {
  const want = o.cfp?.want
  if (want === undefined || (t.terms.start >= want.start && t.terms.end <= want.end)) return undefined
  const reason = `layers [${t.terms.start}, ${t.terms.end}) are outside the called range [${want.start}, ${want.end})`
  return { moves: [{ tool: 'reject', args: { ...(peer === undefined ? {} : { peer }), reason, text: say(`That is not what was called for: ${reason}.`) } }], note: say('Counter outside the call; declining.') }
}

function roundsLeft (o: Observation, t: ThreadView): number {
  return (o.cfp?.maxRounds ?? 1) * 2 - t.rounds
}

function answerAsWorker (o: Observation, peer: string): { moves: Move[], note: string } {
  const t = o.threads.find((x) => x.peer === peer)
  if (t === undefined) return { moves: [], note: say('No such offer.') }
  const off = outsideCall(o, t)
  if (off !== undefined) return off
  const cfp = o.cfp!
  const p = t.terms.price
  const n = t.terms.end - t.terms.start
  const cap = capacityLayers(o, cfp.modelRef.layerBytes)
  if (n > cap) return { moves: [{ tool: 'reject', args: { reason: `${n} layers do not fit; I can hold ${cap}`, text: say(`I cannot hold ${n} layers; ${cap} is my limit.`) } }], note: say('Range too large.') }
  const left = roundsLeft(o, t)
  // Linear concession from the anchor to the floor as rounds are used up.
  const want = r2(Math.max(o.bounds.floor, anchor(o) - (anchor(o) - o.bounds.floor) * (t.rounds / ((cfp.maxRounds * 2) || 1))))
  if (p >= o.bounds.floor && (p >= want * 0.95 || p >= o.bounds.floor * 1.15 || left <= 1)) {
    return { moves: [{ tool: 'accept', args: { text: say(`Deal: ${span(t.terms)} at ${p}.`) } }], note: say(`Accepting ${p}.`) }
  }
  if (left <= 1) return { moves: [{ tool: 'reject', args: { reason: 'no agreement within the rounds', text: say('We are too far apart; I will pass this time.') } }], note: say('Out of rounds.') }
  const price = r2(Math.max(o.bounds.floor, (p + want) / 2))
  return {
    moves: [{ tool: 'counter', args: { start: t.terms.start, end: t.terms.end, price, text: say(`I can do ${span(t.terms)}, but not at ${p}; meet me at ${price}.`) } }],
    note: say(`Countering at ${price}.`)
  }
}

/** What the head may pay per layer for what it still needs in this call. */
function target (o: Observation): number {
  const want = o.cfp!.want
  const held = o.heldRanges.filter((r) => r.start >= want.start && r.end <= want.end)
  const missing = (want.end - want.start) - held.reduce((n, r) => n + r.end - r.start, 0)
  return r2(Math.min(o.bounds.ceiling, (o.callBudgetLeft ?? 0) / Math.max(1, missing)))
}

function missingRanges (want: LayerRange, held: LayerRange[]): LayerRange[] {
  const out: LayerRange[] = []
  let cursor = want.start
  for (const r of [...held].sort((a, b) => a.start - b.start)) {
    if (r.end <= want.start || r.start >= want.end) continue
    if (r.start > cursor) out.push({ start: cursor, end: r.start })
    cursor = Math.max(cursor, r.end)
  }
  if (cursor < want.end) out.push({ start: cursor, end: want.end })
  return out
}

function choose (o: Observation): { moves: Move[], note: string } {
  const now = o.now
  const offers = o.threads.filter((t) => t.from === 'them' && t.status === 'proposed' && t.terms.expiresAt > now)
  if (offers.length === 0) return { moves: [], note: say('No offers arrived; I will call again.') }
  const goal = target(o)
  const sorted = [...offers].sort((a, b) => a.terms.price - b.terms.price || (b.terms.end - b.terms.start) - (a.terms.end - a.terms.start) || a.peer.localeCompare(b.peer))
  const moves: Move[] = []
  const used = new Set<string>()
  for (const gap of missingRanges(o.cfp!.want, o.heldRanges)) {
    let cursor = gap.start
    for (const t of sorted) {
      if (cursor >= gap.end) break
      if (used.has(t.peer)) continue
      used.add(t.peer)
      const n = Math.min(t.terms.end - t.terms.start, gap.end - cursor)
      const range = { start: cursor, end: cursor + n }
      cursor += n
      if (range.start === t.terms.start && range.end === t.terms.end && t.terms.price <= goal) {
        moves.push({ tool: 'accept', args: { peer: t.peer, text: say(`Accepted: ${span(range)} at ${t.terms.price}.`) } })
      } else {
        const price = t.terms.price <= goal ? t.terms.price : r2(goal * 0.9)
        moves.push({ tool: 'counter', args: { peer: t.peer, ...range, price, text: say(`I would like you on ${span(range)} at ${price} per layer.`) } })
      }
    }
  }
  for (const t of sorted) {
    if (!used.has(t.peer)) moves.push({ tool: 'reject', args: { peer: t.peer, reason: 'covered by other offers', text: say('Thank you; the layers are covered this time.') } })
  }
  return { moves, note: say(`Chose among ${offers.length} offers at a target of ${goal} per layer.`) }
}

function answerAsHead (o: Observation, peer: string): { moves: Move[], note: string } {
  const t = o.threads.find((x) => x.peer === peer)
  if (t === undefined) return { moves: [], note: say('No such offer.') }
  const off = outsideCall(o, t, peer)
  if (off !== undefined) return off
  const goal = target(o)
  const p = t.terms.price
  if (p <= goal) return { moves: [{ tool: 'accept', args: { peer, text: say(`Agreed at ${p}.`) } }], note: say(`Accepting ${p}.`) }
  if (roundsLeft(o, t) <= 1) return { moves: [{ tool: 'reject', args: { peer, reason: 'price above what I can pay', text: say(`${p} is more than I can pay per layer; I will look elsewhere.`) } }], note: say('Out of rounds.') }
  return {
    moves: [{ tool: 'counter', args: { peer, start: t.terms.start, end: t.terms.end, price: goal, text: say(`${goal} per layer is the most I can offer for ${span(t.terms)}.`) } }],
    note: say(`Countering at ${goal}.`)
  }
}
