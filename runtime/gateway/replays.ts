import { contractId, type SignedContract } from '../../protocols/index.ts'
import type { Replay } from './spot-check.ts'

/**
 * The replays a head's spot checks can use: for each contract of the running pipeline, another
 * active contract of the head for the same model and exactly the same layer range with a different
 * worker, picked at random among those there are (so a worker cannot know it is the reference). The
 * replay pipeline is the running one with that one range swapped, started on first use by `start`.
 * A range nobody else serves gets no replay: its worker's outputs are not spot-checked (its token
 * counts still are, by its own meter against the head), and the caller says so once.
 */
export function replaysFor (
  pipeline: readonly SignedContract[],
  held: readonly SignedContract[],
  start: (contracts: SignedContract[]) => Promise<string>,
  random: () => number = Math.random
): { replays: Replay[], unchecked: string[] } {
  const replays: Replay[] = []
  const unchecked: string[] = []
  for (const c of pipeline) {
    const others = held.filter((o) => o.doc.model === c.doc.model && o.doc.start === c.doc.start && o.doc.end === c.doc.end && o.doc.worker !== c.doc.worker)
    if (others.length === 0) { unchecked.push(contractId(c.doc)); continue }
    const alt = others[Math.floor(random() * others.length)]
    let url: Promise<string> | undefined
    replays.push({
      contract: contractId(c.doc),
      provider: alt.doc.worker,
      upstream: '',
      start: async () => {
        url ??= start(pipeline.map((p) => (p === c ? alt : p)))
        url.catch(() => { url = undefined }) // a failed start is tried again on the next check
        return await url
      }
    })
  }
  return { replays, unchecked }
}
