/**
 * Remembers (author, id) pairs until the message they belong to expires. Gossipsub's own seen-cache
 * forgets after a couple of minutes and keys on its sequence number, which the author can change at
 * will; this guard keys on the signed envelope id instead. Memory is bounded because envelopes may not
 * live longer than MAX_TTL_MS.
 */
export class ReplayGuard {
  private readonly seen = new Map<string, number>()
  private nextSweep = 0

  /** Returns false (and records nothing) when the pair was already seen and has not yet expired. */
  admit (from: string, id: string, exp: number, now = Date.now()): boolean {
    this.sweep(now)
    const key = `${from}/${id}`
    const known = this.seen.get(key)
    if (known !== undefined && known > now) return false
    this.seen.set(key, exp)
    return true
  }

  get size (): number {
    return this.seen.size
  }

  private sweep (now: number): void {
    if (now < this.nextSweep) return
    this.nextSweep = now + 10_000
    for (const [key, exp] of this.seen) if (exp <= now) this.seen.delete(key)
  }
}
