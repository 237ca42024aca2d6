import type { Thought, WireChat } from './llm-stand-ins.ts'

/**
 * What a stand-in LLM server "thinks": it reads only what a real LLM would get over the wire (the
 * system prompt, the observation as prose, tool results), never the structured observation, and
 * answers with tool calls. So a negotiation it completes shows that the prose carries enough to act
 * on, and that calls and results survive both wire formats. `who` prefixes its words, so that
 * transcripts show which brain spoke.
 */
export function proseNegotiator (who: string): (chat: WireChat) => Thought {
  const say = (s: string): string => `[${who}] ${s}`
  return (chat) => {
    const last = chat.messages[chat.messages.length - 1]
    if (last === undefined) throw new Error('a chat request without messages')
    if (chat.messages[0]?.role !== 'system') throw new Error(`the system prompt must come first, got ${chat.messages[0]?.role}`)
    const declared = new Set(chat.tools.map((t) => t.name))
    const call = (name: string, args: Record<string, unknown>): { name: string, args: Record<string, unknown> } => {
      if (!declared.has(name)) throw new Error(`the client did not declare the tool ${name}; it declared ${[...declared].join(', ')}`)
      return { name, args }
    }
    if (last.role === 'tool') {
      let i = chat.messages.length - 1
      while (i >= 0 && chat.messages[i].role === 'tool') i--
      const results = chat.messages.slice(i + 1).map((m) => m.content)
      return { content: say(`Done: ${results.join(' | ').slice(0, 200)}`) }
    }
    if (last.role !== 'user') throw new Error(`the last message is from ${last.role}`)
    const text = last.content
    const num = (re: RegExp): number => {
      const m = re.exec(text)
      if (m === null) throw new Error(`the observation lacks ${String(re)}:\n${text}`)
      return Number(m[1])
    }
    const ranges = (s: string): Array<[number, number]> => [...s.matchAll(/\[(\d+), (\d+)\)/g)].map((m) => [Number(m[1]), Number(m[2])])

    let m = /Layers nobody serves yet: ([^.]*)\./.exec(text)
    if (m !== null) {
      const budget = num(/owner's budget ([\d.]+) per million tokens/)
      return {
        content: say('Calling for proposals.'),
        calls: ranges(m[1]).map(([start, end]) => call('publish_cfp', { start, end, budget, text: say(`Who can serve layers ${start} to ${end - 1}?`) }))
      }
    }
    m = /calls for proposals to serve layers \[(\d+), (\d+)\) of .* \((\d+) bytes per layer\)/.exec(text)
    if (m !== null) {
      const [start, end, bytes] = [Number(m[1]), Number(m[2]), Number(m[3])]
      const floor = num(/floor ([\d.]+) per layer/)
      const left = num(/(\d+) bytes left to lend/)
      const n = Math.min(end - start, Math.floor(left / bytes))
      if (n <= 0) return { content: say('No room for this one.') }
      const price = floor + 0.5
      return { content: say('Proposing.'), calls: [call('propose', { start, end: start + n, price, text: say(`I can serve ${n} layers at ${price}.`) })] }
    }
    if (text.includes('The proposal window of your call has closed')) {
      // "- birch: proposed, their terms: layers [0, 6) at 1.5 per layer …": take them in name order, end to end.
      const offers = [...text.matchAll(/^- (\S+): proposed, their terms: layers \[(\d+), (\d+)\) at ([\d.]+) per layer/gm)]
        .map((o) => ({ name: o[1], start: Number(o[2]), end: Number(o[3]), price: Number(o[4]) }))
        .sort((a, b) => a.name.localeCompare(b.name))
      let cursor = Math.min(...offers.map((o) => o.start))
      const calls = offers.map((o) => {
        const end = cursor + o.end - o.start
        const c = o.start === cursor
          ? call('accept', { peer: o.name, text: say('Accepted as offered.') })
          : call('counter', { peer: o.name, start: cursor, end, price: o.price, text: say(`Please take layers ${cursor} to ${end - 1} instead.`) })
        cursor = end
        return c
      })
      return { content: say(`Assigning ${offers.length} offers.`), calls }
    }
    m = /^Event: (\S+) answered with a counter-offer/.exec(text)
    if (m !== null) return { content: say('Their counter works for me.'), calls: [call('accept', { peer: m[1], text: say('Agreed.') })] }
    m = /^Event: (\S+) accepted your terms/.exec(text)
    if (m !== null) return { content: say('Countersigning.'), calls: [call('sign_contract', { peer: m[1], text: say('Signed.') })] }
    if (/rejected the negotiation/.test(text)) return { content: say('Noted.') }
    throw new Error(`the stand-in does not understand this observation:\n${text}`)
  }
}
