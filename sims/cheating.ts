// Is cheating unprofitable? (#15, finding 7). `npx tsx sims/cheating.ts [--seed N]` runs, in well
// under a second, cheating heads against the workers' real receipt audit (runtime/ledger/audit.ts)
// and cheating workers against the gateway's real spot-check draw (runtime/gateway/spot-check.ts),
// and prints audit rate × penalty against the gain, per strategy.
//
// Heads: each request computes T rows on a worker (T from 20 to 2,000) and an honest head claims
// T + 1 (prompt + completion, measured on a real pipeline). A cheat claims (1 − shave) × T. The worker's
// audit checks every claim against its own meter; a refused claim ends the contract (the worker
// suspends it: the head loses the rest of its term, here the surplus of the requests left in it).
// Workers: a cheat skips the compute (saves its cost, 80 % of what a request pays) and returns
// junk. The head replays 5 % of requests on another provider; a caught worker loses every receipt
// still in the 30 s challenge window, and its contract.
import { ReceiptAudit, tolerance, type WorkMeter } from '../runtime/ledger/audit.ts'
import { SpotChecker } from '../runtime/gateway/spot-check.ts'
import type { Receipt } from '../protocols/receipts.ts'
import type { ContractRow } from '../runtime/ledger/contracts.ts'

const seedArg = process.argv.indexOf('--seed')
let seed = seedArg > 0 ? Number(process.argv[seedArg + 1]) : 7
const random = (): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed / 2 ** 31 }

const PRICE = 1 // credits per token (one worker, its layers folded in)
const REQUESTS = 2000 // requests in a contract's term
const HEAD_SURPLUS = 0.5 // what a served request is worth to the head beyond what it pays, per token

function cheatingHead (shave: number): { caughtAt: number | undefined, gain: number, penalty: number } {
  let rows = 0
  let lastAt = 0
  const meter: WorkMeter = { counted: () => ({ rows, lastAt }) }
  const audit = new ReceiptAudit(meter, 5000)
  let t = 0
  let gain = 0
  let remainingValue = 0
  for (let i = 1; i <= REQUESTS; i++) {
    const T = 20 + Math.floor(random() * 1980)
    t += 3000
    rows += T
    lastAt = t
    const claim = Math.max(1, Math.floor((1 - shave) * (T + 1)))
    const p: Receipt = { contract: 'c', seq: i, tokens: claim, prior: 0, layers: 1, modelHash: '0'.repeat(64), price: PRICE, head: 'h', worker: 'w', ts: t }
    let d = audit.offer(p, t)
    if (d === undefined) d = audit.review(['c'], t + 6000)[0] // the meter goes quiet before the next request
    if (d?.kind === 'refuse') {
      // Refused receipts are void: that request went unpaid (all of it is gained), but the contract ends here.
      gain += (T + 1) * PRICE
      for (let j = i + 1; j <= REQUESTS; j++) remainingValue += (20 + 990) * HEAD_SURPLUS
      return { caughtAt: i, gain, penalty: remainingValue }
    }
    gain += (T + 1 - claim) * PRICE
  }
  return { caughtAt: undefined, gain, penalty: 0 }
}

function cheatingWorker (probability: number, requestsPerSecond: number, settleMs: number, costShare: number): { caught: number, gain: number, penalty: number, honestProfit: number } {
  const contract = { id: 'c' } as ContractRow
  const checker = new SpotChecker({ probability, replays: [{ contract: 'c', upstream: 'x', provider: 'ref' }], random }, 'p', async () => { throw new Error('unused') })
  const window = Math.round(settleMs / 1000 * requestsPerSecond) // requests still unsettled when one is caught
  let gain = 0
  let penalty = 0
  let caught = 0
  let honestProfit = 0
  for (let i = 0; i < REQUESTS; i++) {
    const pay = (20 + Math.floor(random() * 1980)) * PRICE
    gain += pay * costShare
    if (checker.pick([contract]) !== undefined) {
      caught++
      penalty += window * 1010 * PRICE // every receipt in the challenge window is voided
      break // and the contract is over: the head drops a worker it caught
    }
  }
  for (let i = 0; i < REQUESTS; i++) honestProfit += (20 + Math.floor(random() * 1980)) * PRICE * (1 - costShare)
  return { caught, gain, penalty, honestProfit }
}

const fmt = (n: number): string => Math.round(n).toLocaleString('en-US')
console.log('Cheating heads against the worker\'s meter audit (tolerance 32 rows + 2 %; audit rate: every receipt)')
console.log('shave   | caught at request | gain before caught | penalty (rest of term) | gain − penalty')
for (const shave of [0.01, 0.02, 0.05, 0.2, 0.999]) {
  const runs = Array.from({ length: 20 }, () => cheatingHead(shave))
  const caught = runs.filter((r) => r.caughtAt !== undefined)
  const mean = (f: (r: typeof runs[number]) => number): number => runs.reduce((n, r) => n + f(r), 0) / runs.length
  console.log(`${(shave * 100).toFixed(1).padStart(5)} % | ${caught.length === 0 ? 'never (within tolerance)' : `${caught.length}/20 runs, mean #${fmt(caught.reduce((n, r) => n + r.caughtAt!, 0) / caught.length)}`} | ${fmt(mean((r) => r.gain))} | ${fmt(mean((r) => r.penalty))} | ${fmt(mean((r) => r.gain - r.penalty))}`)
}
console.log(`(within tolerance a head can shave at most ${tolerance(1000)} of 1,000 tokens per quiet period: the bound the audit leaves)`)
console.log('')
console.log('Cheating workers against spot checks (skip the compute: save 80 % of the pay; 1 request/s; 30 s challenge window)')
console.log('audit rate | P(caught in term) | E[gain per request] | audit rate × penalty per request | honest profit per request')
for (const p of [0.01, 0.02, 0.05, 0.1]) {
  const runs = Array.from({ length: 200 }, () => cheatingWorker(p, 1, 30_000, 0.8))
  const penaltyPerCatch = 30 * 1010 * PRICE
  const perRequestGain = 1010 * 0.8 * PRICE
  const caughtShare = runs.filter((r) => r.caught > 0).length / runs.length
  const net = runs.reduce((n, r) => n + r.gain - r.penalty, 0) / runs.length
  console.log(`${(p * 100).toFixed(0).padStart(8)} % | ${(caughtShare * 100).toFixed(0).padStart(5)} % | ${fmt(perRequestGain)} | ${fmt(p * penaltyPerCatch)} ${p * penaltyPerCatch > perRequestGain ? '>' : '≤'} gain | ${fmt(1010 * 0.2 * PRICE)}  (over a term of ${fmt(REQUESTS)} requests: cheater's mean net ${fmt(net)}, honest worker's ${fmt(runs.reduce((n, r) => n + r.honestProfit, 0) / runs.length)})`)
}
