/**
 * Token buckets per API key, in memory: a key may burst `burst` requests, then one more every
 * 60/ratePerMin seconds. Memory only: a restart refills every bucket, which errs on the user's side.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number, at: number }>()

  /** Takes one token; returns 0 when allowed, else the milliseconds until a token is available. */
  take (id: string, ratePerMin: number, burst: number, now = Date.now()): number {
    const perMs = ratePerMin / 60_000
    const b = this.buckets.get(id) ?? { tokens: burst, at: now }
    b.tokens = Math.min(burst, b.tokens + (now - b.at) * perMs)
    b.at = now
    this.buckets.set(id, b)
    if (b.tokens >= 1) {
      b.tokens -= 1
      return 0
    }
    return Math.ceil((1 - b.tokens) / perMs)
  }
}
