/** Seeded randomness (mulberry32): the same seed gives the same run. */
export class Rng {
  private s: number

  constructor (seed: number) {
    this.s = (seed >>> 0) || 0x9e3779b9
  }

  /** Uniform in [0, 1). */
  next (): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0
    let t = this.s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }

  uniform (lo: number, hi: number): number {
    return lo + (hi - lo) * this.next()
  }

  int (lo: number, hiExclusive: number): number {
    return lo + Math.floor(this.next() * (hiExclusive - lo))
  }

  chance (p: number): boolean {
    return this.next() < p
  }

  normal (mean = 0, sd = 1): number {
    const u = Math.max(1e-12, this.next())
    const v = this.next()
    return mean + sd * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v)
  }

  /** Poisson by inversion (small means) or a normal approximation (large ones). */
  poisson (mean: number): number {
    if (mean <= 0) return 0
    if (mean > 50) return Math.max(0, Math.round(this.normal(mean, Math.sqrt(mean))))
    const l = Math.exp(-mean)
    let k = 0
    let p = 1
    do { k++; p *= this.next() } while (p > l)
    return k - 1
  }

  pick<T> (items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]
  }

  /** Picks a key with probability proportional to its weight. */
  weighted<K extends string> (weights: Record<K, number>): K {
    const entries = Object.entries(weights) as Array<[K, number]>
    const total = entries.reduce((s, [, w]) => s + w, 0)
    let x = this.next() * total
    for (const [k, w] of entries) { x -= w; if (x < 0) return k }
    return entries[entries.length - 1][0]
  }

  /** 32 bytes for a deterministic Ed25519 seed. */
  bytes (n: number): Uint8Array {
    const out = new Uint8Array(n)
    for (let i = 0; i < n; i++) out[i] = Math.floor(this.next() * 256)
    return out
  }

  fork (): Rng {
    return new Rng(Math.floor(this.next() * 4294967296))
  }
}
