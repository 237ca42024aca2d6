/**
 * Tokens this node served, per model: the engine records each finished request here, the board shows
 * tokens/s and /metrics exports the totals. Totals are per process; Prometheus handles counter resets.
 */
export class ServingMeter {
  private readonly totals = new Map<string, number>()
  private readonly samples: Array<{ model: string, tokens: number, at: number }> = []
  private static readonly WINDOW_MS = 5 * 60_000

  /** model: the model's sha256 (or its name when the sha is unknown). */
  record (model: string, tokens: number, at = Date.now()): void {
    if (!Number.isFinite(tokens) || tokens <= 0) return
    this.totals.set(model, (this.totals.get(model) ?? 0) + tokens)
    this.samples.push({ model, tokens, at })
    while (this.samples.length > 0 && this.samples[0].at < at - ServingMeter.WINDOW_MS) this.samples.shift()
    if (this.samples.length > 10_000) this.samples.splice(0, this.samples.length - 10_000)
  }

  total (): Map<string, number> {
    return new Map(this.totals)
  }

  /** Tokens per second over the last windowMs, per model. */
  rates (windowMs = 60_000, now = Date.now()): Map<string, number> {
    const out = new Map<string, number>()
    for (const s of this.samples) if (s.at >= now - windowMs) out.set(s.model, (out.get(s.model) ?? 0) + s.tokens)
    for (const [model, tokens] of out) out.set(model, tokens / (windowMs / 1000))
    return out
  }
}
