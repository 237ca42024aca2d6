/** Nearest-rank percentile of an ascending array; NaN when empty. */
export function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))
  return sorted[rank]
}

/** Gini coefficient of non-negative values (0 = equal, 1 = one holds everything). */
export function gini (values: number[]): number {
  const xs = values.filter((x) => x >= 0).sort((a, b) => a - b)
  const n = xs.length
  const sum = xs.reduce((a, b) => a + b, 0)
  if (n === 0 || sum === 0) return 0
  let acc = 0
  xs.forEach((x, i) => { acc += (2 * (i + 1) - n - 1) * x })
  return acc / (n * sum)
}

/** x rounded to `digits` decimals. */
export function round (x: number, digits = 2): number {
  const f = 10 ** digits
  return Math.round(x * f) / f
}
