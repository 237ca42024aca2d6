import { z } from 'zod'
import { tool, type StructuredToolInterface } from '@langchain/core/tools'
import type { RunnableConfig } from '@langchain/core/runnables'
import { contractFromTerms, dealCost, type ModelRef, type Terms } from '../../protocols/index.ts'
import { MarketError, shortPeer, type MarketDesk } from './desk.ts'
import type { MarketGuard, Verdict } from './guard.ts'
import type { Negotiation } from './book.ts'

/** What a tool call did, for the agent's action log and for tests: refusals included. */
export interface ActionRecord {
  thread: string
  tool: string
  args: Record<string, unknown>
  outcome: 'done' | 'refused' | 'failed'
  detail: string
}

export interface MarketToolsOptions {
  desk: MarketDesk
  guard: MarketGuard
  /** How long offers we make stay open. */
  offerTtlMs: number
  /** Collection window and service length of the calls we publish. */
  cfpWindowMs: number
  serveForMs: number
  maxRounds: number
  /** The model a goal thread (`assemble:<sha256>`) is about. */
  modelFor (sha256: string): ModelRef | undefined
  /** Display name of a peer (from its presence), for tool results the LLM reads. */
  nameOf (peerId: string): string
  record (entry: ActionRecord): void
}

/** Threads are named after what they are about: `cfp:<id>` (a negotiation) or `assemble:<sha256>` (a goal). */
export function threadFor (what: { cfpId: string } | { assemble: string }): string {
  return 'cfpId' in what ? `cfp:${what.cfpId}` : `assemble:${what.assemble}`
}

function threadOf (config: RunnableConfig | undefined): string {
  const id = config?.configurable?.thread_id
  if (typeof id !== 'string') throw new MarketError('tool called outside a thread')
  return id
}

const TEXT = z.string().max(1500).describe('What you say to the other side, in plain sentences. It does not bind; the terms do.')
const PEER = z.string().max(100).optional().describe('The other side, by name or peer id. As a worker, leave it out: your counterpart is the head.')
const PRICE = z.number().nonnegative().describe('Credits per million layer-tokens, per layer.')
const LAYER = z.number().int().nonnegative()

/**
 * The market skills as LangChain tools with zod schemas. Each tool turns the LLM's call into a
 * MarketAction, asks the guard, and only then moves. A refusal is returned as the tool's result (the
 * LLM reads why and may try again inside the bounds); nothing reaches the wire.
 */
export function marketTools (o: MarketToolsOptions): StructuredToolInterface[] {
  const refused = (thread: string, name: string, args: Record<string, unknown>, reason: string): string => {
    o.record({ thread, tool: name, args, outcome: 'refused', detail: reason })
    return `REFUSED by policy: ${reason}. Nothing was sent.`
  }

  /** Runs a move with uniform bookkeeping: protocol errors also come back as refusals, with the reason. */
  const run = async (name: string, args: Record<string, unknown>, config: RunnableConfig | undefined, body: (thread: string) => Promise<string | Verdict>): Promise<string> => {
    const thread = threadOf(config)
    try {
      const out = await body(thread)
      if (typeof out !== 'string') return out.ok ? 'ok' : refused(thread, name, args, out.reason)
      o.record({ thread, tool: name, args, outcome: 'done', detail: out })
      return out
    } catch (err) {
      if (err instanceof MarketError) return refused(thread, name, args, err.message)
      o.record({ thread, tool: name, args, outcome: 'failed', detail: (err as Error).message })
      return `FAILED: ${(err as Error).message}`
    }
  }

  /**
   * One commitment at a time for this agent. LangGraph runs the tool calls of one reply concurrently:
   * two accepts checked against the same commitments would each fit the budget (or the memory, or the
   * deal limit), and together break it. Holding the lock from the guard's check until the desk has
   * recorded the move makes every check see every commitment before it. Only the moves that commit
   * (accept, sign_contract) take it: calls, proposals and counters commit nothing, and whatever they
   * lead to is checked again when it is accepted or signed.
   */
  let moving: Promise<unknown> = Promise.resolve()
  const oneAtATime = async <T>(move: () => Promise<T>): Promise<T> => {
    const turn = moving.then(move)
    moving = turn.catch(() => {})
    return await turn
  }

  const negotiationOf = async (thread: string): Promise<Negotiation> => {
    if (!thread.startsWith('cfp:')) throw new MarketError('this tool works inside a negotiation thread only')
    const n = await o.desk.book.negotiation(thread.slice(4))
    if (n === undefined) throw new MarketError(`no negotiation ${thread.slice(4)}`)
    return n
  }

  /** As a worker the counterpart is always the head; as a head the LLM names the worker. */
  const counterpart = async (n: Negotiation, peer: string | undefined): Promise<string> => {
    if (n.role === 'worker') return n.head
    if (peer === undefined) throw new MarketError('name the worker (peer) you mean')
    const needle = peer.trim().replace(/^…/, '')
    const threads = await o.desk.book.threads(n.cfpId)
    const hit = threads.filter((t) => t.peer === needle || o.nameOf(t.peer) === needle || (needle.length >= 6 && t.peer.endsWith(needle)))
    if (hit.length !== 1) throw new MarketError(`no single worker "${peer}" in this negotiation; known: ${threads.map((t) => o.nameOf(t.peer)).join(', ') || 'none'}`)
    return hit[0].peer
  }

  const terms = (a: { start: number, end: number, price: number }): Terms => ({ start: a.start, end: a.end, price: a.price, expiresAt: Date.now() + o.offerTtlMs })

  const publishCfp = tool(async (args, config) => await run('publish_cfp', args, config, async (thread) => {
    if (!thread.startsWith('assemble:')) throw new MarketError('publish_cfp works in an assembly thread only')
    const model = o.modelFor(thread.slice('assemble:'.length))
    if (model === undefined) throw new MarketError('this agent is not assembling that model')
    if (args.end <= args.start || args.end > model.nLayer) throw new MarketError(`layers [${args.start}, ${args.end}) are not inside the model's [0, ${model.nLayer})`)
    const verdict = await o.guard.check({ type: 'publish_cfp', model, want: { start: args.start, end: args.end }, budget: args.budget })
    if (!verdict.ok) return verdict
    const cfp = await o.desk.publishCfp({ model, want: { start: args.start, end: args.end }, budget: args.budget, windowMs: o.cfpWindowMs, serveForMs: o.serveForMs, maxRounds: o.maxRounds, text: args.text })
    return `Call ${cfp.cfpId} published for layers [${args.start}, ${args.end}); proposals close in ${o.cfpWindowMs} ms.`
  }), {
    name: 'publish_cfp',
    description: 'As a head: call for proposals to serve layers [start, end) of the model you are assembling, within a total budget per million tokens.',
    schema: z.object({ start: LAYER, end: LAYER, budget: PRICE, text: TEXT })
  })

  const propose = tool(async (args, config) => await run('propose', args, config, async (thread) => {
    const n = await negotiationOf(thread)
    if (n.role !== 'worker') throw new MarketError('only workers propose; as the head use accept, counter or reject')
    const t = terms(args)
    const verdict = await o.guard.check({ type: 'propose', cfp: n.cfp, terms: t })
    if (!verdict.ok) return verdict
    await o.desk.propose(n.cfpId, t, args.text)
    return `Proposed layers [${t.start}, ${t.end}) at ${t.price} to ${o.nameOf(n.head)}.`
  }), {
    name: 'propose',
    description: 'As a worker: offer to serve layers [start, end) of the called model at a price per layer.',
    schema: z.object({ start: LAYER, end: LAYER, price: PRICE, text: TEXT })
  })

  const counter = tool(async (args, config) => await run('counter', args, config, async (thread) => {
    const n = await negotiationOf(thread)
    const peer = await counterpart(n, args.peer)
    const current = await o.desk.book.thread(n.cfpId, peer)
    if (current === undefined) throw new MarketError(`no offers exchanged with ${o.nameOf(peer)}`)
    const t = terms(args)
    const verdict = await o.guard.check({ type: 'counter', role: n.role, cfp: n.cfp, peer, terms: t, thread: current })
    if (!verdict.ok) return verdict
    await o.desk.counter(n.cfpId, peer, t, args.text)
    return `Countered ${o.nameOf(peer)}: layers [${t.start}, ${t.end}) at ${t.price}.`
  }), {
    name: 'counter',
    description: 'Answer the terms on the table with your own: layers [start, end) at a price per layer. Each side has a limited number of rounds.',
    schema: z.object({ peer: PEER, start: LAYER, end: LAYER, price: PRICE, text: TEXT })
  })

  const accept = tool(async (args, config) => await run('accept', args, config, async (thread) => await oneAtATime(async () => {
    const n = await negotiationOf(thread)
    const peer = await counterpart(n, args.peer)
    const current = await o.desk.book.thread(n.cfpId, peer)
    if (current === undefined) throw new MarketError(`no offer from ${o.nameOf(peer)} to accept`)
    const verdict = await o.guard.check({ type: 'accept', role: n.role, cfp: n.cfp, peer, terms: current.terms })
    if (!verdict.ok) return verdict
    const t = await o.desk.accept(n.cfpId, peer, args.text)
    return `Accepted ${o.nameOf(peer)}'s terms: layers [${t.start}, ${t.end}) at ${t.price} (cost ${dealCost(t)} per million tokens); signed our side of the contract.`
  })), {
    name: 'accept',
    description: 'Accept the terms the other side has on the table, exactly as they stand (their binding terms, not what their text says), and sign the contract they imply.',
    schema: z.object({ peer: PEER, text: TEXT })
  })

  const reject = tool(async (args, config) => await run('reject', args, config, async (thread) => {
    const n = await negotiationOf(thread)
    const peer = await counterpart(n, args.peer)
    await o.desk.reject(n.cfpId, peer, args.reason, args.text)
    return `Rejected ${o.nameOf(peer)}: ${args.reason}`
  }), {
    name: 'reject',
    description: 'End the negotiation with one counterpart.',
    schema: z.object({ peer: PEER, reason: z.string().max(300), text: TEXT })
  })

  const sign = tool(async (args, config) => await run('sign_contract', args, config, async (thread) => await oneAtATime(async () => {
    const n = await negotiationOf(thread)
    const peer = await counterpart(n, args.peer)
    const current = await o.desk.book.thread(n.cfpId, peer)
    const acc = current?.acceptance
    if (current === undefined || acc === undefined || acc.by !== peer) throw new MarketError(`${o.nameOf(peer)} has not accepted anything to sign`)
    // The guard judges the contract document itself, which the desk then checks against the terms.
    const expected = contractFromTerms({ net: acc.contract.net, cfp: n.cfp, head: n.head, worker: n.role === 'head' ? peer : o.desk.me, terms: current.terms })
    const verdict = await o.guard.check({ type: 'sign_contract', role: n.role, cfp: n.cfp, peer, contract: expected })
    if (!verdict.ok) return verdict
    const { id, signed } = await o.desk.signContract(n.cfpId, peer, args.text)
    return `Contract ${id} signed with ${o.nameOf(peer)}: layers [${signed.doc.start}, ${signed.doc.end}) at ${signed.doc.price}.`
  })), {
    name: 'sign_contract',
    description: 'Countersign the contract the other side accepted and signed; it then binds both.',
    schema: z.object({ peer: PEER, text: TEXT })
  })

  const listOffers = tool(async (_args, config) => await run('list_offers', {}, config, async (thread) => {
    const n = await negotiationOf(thread)
    const threads = await o.desk.book.threads(n.cfpId)
    if (threads.length === 0) return 'No offers in this negotiation.'
    return threads.map((t) => `${o.nameOf(t.peer)} (${shortPeer(t.peer)}): ${t.status}, layers [${t.terms.start}, ${t.terms.end}) at ${t.terms.price}, on the table from ${t.termsFrom === o.desk.me ? 'us' : 'them'}, round ${t.rounds}`).join('\n')
  }), {
    name: 'list_offers',
    description: 'List every offer in this negotiation with its binding terms and status.',
    schema: z.object({})
  })

  return [publishCfp, propose, counter, accept, reject, sign, listOffers] as StructuredToolInterface[]
}
