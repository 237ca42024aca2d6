/**
 * Group commit: calls that arrive while earlier work is queued ride one step together (one query,
 * one transaction), instead of one step each. A call that finds no group open opens one and queues
 * its step at once, so a lone request waits for nothing; under load every call that arrives before
 * that step starts joins it, and the group grows with the load instead of the queue.
 */
interface Waiting<I, O> { item: I, resolve: (o: O) => void, reject: (e: unknown) => void }

export class Grouper<I, O> {
  private open: Array<Waiting<I, O>> | undefined

  /**
   * @param schedule queues a step (HoldBook.serially: steps are ordered with every other accounting step)
   * @param work does one step for the items in arrival order: one result or Error per item
   */
  constructor (
    private readonly schedule: (step: () => Promise<void>) => Promise<void>,
    private readonly work: (items: I[]) => Promise<Array<O | Error>>
  ) {}

  async add (item: I): Promise<O> {
    return await new Promise<O>((resolve, reject) => {
      let group = this.open
      if (group === undefined) {
        const opened: Array<Waiting<I, O>> = []
        this.open = group = opened
        this.schedule(async () => {
          if (this.open === opened) this.open = undefined // later calls open the next group
          let results: Array<O | Error>
          try {
            results = await this.work(opened.map((g) => g.item))
          } catch (err) {
            for (const g of opened) g.reject(err)
            return
          }
          for (const [i, g] of opened.entries()) {
            const r = results[i]
            if (r instanceof Error) g.reject(r)
            else g.resolve(r)
          }
        }).catch((err: unknown) => { for (const g of opened) g.reject(err) })
      }
      group.push({ item, resolve, reject })
    })
  }
}
