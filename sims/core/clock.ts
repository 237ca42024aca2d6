/**
 * A discrete-event simulated clock: a priority queue of events ordered by (time, insertion order).
 * Nothing sleeps: `run` pops the next event, moves `now` to its time and awaits its handler to the end
 * (every promise it starts included), so a run is deterministic and as fast as the CPU allows.
 */
export type SimHandler = () => void | Promise<void>

interface SimEvent { at: number, seq: number, fn: SimHandler, cancelled: boolean }

export interface Timer { cancel (): void }

export class SimClock {
  private heap: SimEvent[] = []
  private seq = 0
  private current: number
  /** Events run so far. */
  processed = 0

  constructor (readonly start: number) {
    this.current = start
  }

  now (): number {
    return this.current
  }

  /** Runs fn at absolute sim time `at` (never in the past). */
  at (at: number, fn: SimHandler): Timer {
    const ev: SimEvent = { at: Math.max(Math.round(at), this.current), seq: this.seq++, fn, cancelled: false }
    this.push(ev)
    return { cancel: () => { ev.cancelled = true } }
  }

  after (ms: number, fn: SimHandler): Timer {
    return this.at(this.current + Math.max(0, ms), fn)
  }

  /** Runs fn every `ms` from now + first until `until` (exclusive). */
  every (ms: number, fn: SimHandler, opts: { first?: number, until?: number } = {}): Timer {
    let stopped = false
    const tick = async (): Promise<void> => {
      if (stopped) return
      await fn()
      if (!stopped && (opts.until === undefined || this.current + ms < opts.until)) this.after(ms, tick)
    }
    this.after(opts.first ?? ms, tick)
    return { cancel: () => { stopped = true } }
  }

  get pending (): number {
    return this.heap.length
  }

  /** Processes events until the queue is empty or the next one is at or after `until`. */
  async run (until: number, onError: (err: unknown) => void = (err) => { throw err }): Promise<void> {
    while (this.heap.length > 0 && this.heap[0].at < until) {
      const ev = this.pop()
      if (ev.cancelled) continue
      this.current = ev.at
      this.processed++
      try {
        await ev.fn()
      } catch (err) {
        onError(err)
      }
    }
    this.current = Math.max(this.current, until)
  }

  private less (a: SimEvent, b: SimEvent): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq)
  }

  private push (ev: SimEvent): void {
    const h = this.heap
    h.push(ev)
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!this.less(h[i], h[p])) break
      ;[h[i], h[p]] = [h[p], h[i]]
      i = p
    }
  }

  private pop (): SimEvent {
    const h = this.heap
    const top = h[0]
    const last = h.pop()!
    if (h.length > 0) {
      h[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < h.length && this.less(h[l], h[m])) m = l
        if (r < h.length && this.less(h[r], h[m])) m = r
        if (m === i) break
        ;[h[i], h[m]] = [h[m], h[i]]
        i = m
      }
    }
    return top
  }
}

/**
 * The market code (desk, tools, book, policy) reads `Date.now()`. During a run the process's clock is
 * the simulated one; `restore` puts the real clock back. Only the in-process simulator does this.
 */
export function installSimTime (clock: SimClock): { restore: () => void } {
  const real = Date.now
  Date.now = () => clock.now()
  return { restore: () => { Date.now = real } }
}
