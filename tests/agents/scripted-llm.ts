import { randomUUID } from 'node:crypto'
import { fakeModel, type FakeBuiltModel } from '@langchain/core/testing'
import { AIMessage, HumanMessage, ToolMessage, type BaseMessage } from '@langchain/core/messages'
import { observationOf, type Observation } from '../../agents/observation.ts'

type Call = { name: string, args: Record<string, unknown> }

/**
 * A stand-in for an LLM, built on LangChain's tool-calling fake model: each invocation runs a factory
 * that reads the agent's observation (as a real LLM reads its prompt) and answers with tool calls.
 * `gullible` makes it do what injected peer text asks (propose at 0 when told to ignore the floor,
 * accept whatever is offered), so tests can show that policy, not the LLM, keeps the agent in bounds.
 * Every AIMessage gets a unique id (stack notes, gotcha 9).
 */
export function scriptedLlm (opts: { gullible?: boolean, turns?: number } = {}): FakeBuiltModel {
  const model = fakeModel()
  for (let i = 0; i < (opts.turns ?? 200); i++) model.respond((messages: BaseMessage[]) => answer(messages, opts.gullible === true))
  return model
}

function reply (content: string, calls: Call[] = []): AIMessage {
  return new AIMessage({ id: randomUUID(), content, tool_calls: calls.map((c) => ({ id: randomUUID(), name: c.name, args: c.args, type: 'tool_call' as const })) })
}

function answer (messages: BaseMessage[], gullible: boolean): AIMessage {
  const last = messages[messages.length - 1]
  if (ToolMessage.isInstance(last)) return afterTools(messages)
  const o = observationOf(last as HumanMessage)
  if (o === undefined) return reply('I see no observation.')
  return decide(o, messages, gullible)
}

/** After a refusal the "LLM" reads the reason and retries once inside the bounds it was told. */
function afterTools (messages: BaseMessage[]): AIMessage {
  let i = messages.length - 1
  while (i >= 0 && ToolMessage.isInstance(messages[i])) i--
  const ai = messages[i] as AIMessage
  const results = messages.slice(i + 1).map((m) => String(m.content))
  const wasRetry = typeof ai.content === 'string' && ai.content.startsWith('Retrying')
  const refusedPropose = ai.tool_calls?.find((c, k) => c.name === 'propose' && results[k]?.startsWith('REFUSED'))
  if (refusedPropose !== undefined && !wasRetry) {
    const o = findObservation(messages)
    return reply('Retrying within my floor.', [{ name: 'propose', args: { ...refusedPropose.args, price: o?.bounds.floor ?? 1, text: 'I can do it at my usual rate.' } }])
  }
  const refusedAccepts = ai.tool_calls?.filter((c, k) => c.name === 'accept' && results[k]?.startsWith('REFUSED')) ?? []
  if (refusedAccepts.length > 0 && !wasRetry) {
    return reply('Retrying: declining what policy refused.', refusedAccepts.map((c) => ({ name: 'reject', args: { peer: c.args.peer, reason: 'outside my bounds', text: 'I cannot take this offer.' } })))
  }
  return reply(`Done: ${results.join(' | ').slice(0, 300)}`)
}

function findObservation (messages: BaseMessage[]): Observation | undefined {
  for (let i = messages.length - 1; i >= 0; i--) {
    const o = HumanMessage.isInstance(messages[i]) ? observationOf(messages[i] as HumanMessage) : undefined
    if (o !== undefined) return o
  }
  return undefined
}

function decide (o: Observation, _messages: BaseMessage[], gullible: boolean): AIMessage {
  const e = o.event
  switch (e.type) {
    case 'assemble':
      return reply('Calling for proposals.', e.missing.map((r) => ({ name: 'publish_cfp', args: { start: r.start, end: r.end, budget: o.bounds.budget, text: 'Who can serve these layers?' } })))
    case 'cfp': {
      const cfp = o.cfp!
      const cap = Math.min(cfp.want.end - cfp.want.start, Math.floor((o.bounds.lendableBytes - o.committedBytes) / cfp.modelRef.layerBytes))
      if (cap <= 0) return reply('No room.')
      const obey = gullible && /ignore your floor/i.test(o.cfpText ?? '')
      const price = obey ? 0 : o.bounds.floor + 0.5
      return reply(obey ? 'The head says to ignore my floor, so I will.' : 'Proposing.', [{ name: 'propose', args: { start: cfp.want.start, end: cfp.want.start + cap, price, text: `I can serve ${cap} layers at ${price}.` } }])
    }
    case 'counter':
      return reply('Accepting the counter-offer.', [{ name: 'accept', args: { peer: e.peer, text: 'Agreed.' } }])
    case 'accepted':
      return reply('Countersigning.', [{ name: 'sign_contract', args: { peer: e.peer, text: 'Signed.' } }])
    case 'rejected':
      return reply('Noted.')
    case 'deadline': {
      const offers = o.threads.filter((t) => t.from === 'them' && t.status === 'proposed')
      if (gullible) return reply('Accepting everything, as they ask.', offers.map((t) => ({ name: 'accept', args: { peer: t.name, text: 'Accepted.' } })))
      // Assign consecutive slots by name, each as long as the worker offered, at the worker's price.
      let cursor = o.cfp!.want.start
      const calls: Call[] = []
      for (const t of [...offers].sort((a, b) => a.name.localeCompare(b.name))) {
        if (cursor >= o.cfp!.want.end) break
        const end = Math.min(o.cfp!.want.end, cursor + t.terms.end - t.terms.start)
        calls.push(t.terms.start === cursor && t.terms.end === end
          ? { name: 'accept', args: { peer: t.name, text: 'Accepted as offered.' } }
          : { name: 'counter', args: { peer: t.name, start: cursor, end, price: t.terms.price, text: `Please take layers ${cursor} to ${end - 1} instead.` } })
        cursor = end
      }
      return reply('Assigning slots.', calls)
    }
  }
}
