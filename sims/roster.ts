import type { Rng } from './core/rng.ts'
import { DEFAULT_PROFILES, type HardwareProfile, type Scenario } from './scenario.ts'

export type Adversary = 'dumper' | 'injector' | 'forger' | 'cartel'

/** Who one agent of a scenario is: its role, its machine and what its owner allows. */
export interface Member {
  index: number
  name: string
  head: boolean
  adversary?: Adversary
  profileName: string
  profile: HardwareProfile
  /** The owner's floor, credits per million layer-tokens. */
  floor: number
  /** Hours (UTC) the owner allows work in, when limited. */
  hours?: { from: string, to: string }
}

/**
 * The cast of a scenario, the same for the in-process simulator and the real-node mode: heads first,
 * then adversaries, then honest workers; workers get the hardware mix exactly (largest remainder) in
 * a seeded random order; floors are cost × a seeded markup. Draws from `rng` in a fixed order, so one
 * seed gives one cast.
 */
export function castScenario (s: Scenario, nAgents: number, rng: Rng, opts: { cartelHonest?: boolean } = {}): Member[] {
  const special: Array<{ adversary?: Adversary, head?: boolean }> = []
  for (let i = 0; i < s.heads.count; i++) special.push({ head: true })
  for (let i = 0; i < s.adversaries.dumpers; i++) special.push({ adversary: 'dumper' })
  for (let i = 0; i < s.adversaries.injectors; i++) special.push({ adversary: 'injector', head: i % 2 === 0 })
  for (let i = 0; i < s.adversaries.forgers; i++) special.push({ adversary: 'forger' })
  for (let i = 0; i < s.adversaries.cartel.members; i++) special.push({ adversary: 'cartel' })
  const profiles = { ...DEFAULT_PROFILES, ...s.agents.profiles }
  const meanMarkup = (s.owners.floorMarkup[0] + s.owners.floorMarkup[1]) / 2
  const nHeads = special.filter((r) => r.head === true).length
  const mixNames = Object.keys(s.agents.mix).filter((k) => s.agents.mix[k] > 0)
  const mixTotal = mixNames.reduce((n, k) => n + s.agents.mix[k], 0)
  const quota = mixNames.map((k) => ({ k, exact: (nAgents - nHeads) * s.agents.mix[k] / mixTotal }))
  const deck: string[] = quota.flatMap((q) => Array<string>(Math.floor(q.exact)).fill(q.k))
  for (const q of [...quota].sort((a, b) => (b.exact % 1) - (a.exact % 1))) if (deck.length < nAgents - nHeads) deck.push(q.k)
  for (let i = deck.length - 1; i > 0; i--) { const j = rng.int(0, i + 1); [deck[i], deck[j]] = [deck[j], deck[i]] }
  const cast: Member[] = []
  for (let i = 0; i < nAgents; i++) {
    const role = special[i] ?? {}
    const head = role.head === true
    const profileName = head ? 'big-gpu' : deck.pop()!
    const profile = profiles[profileName]
    const markup = rng.uniform(s.owners.floorMarkup[0], s.owners.floorMarkup[1])
    let floor = Math.round(profile.costPerLayer * markup)
    if (role.adversary === 'dumper') floor = Math.round(profile.costPerLayer * s.adversaries.dumpFactor)
    if (role.adversary === 'cartel' && opts.cartelHonest !== true) floor = Math.round(profile.costPerLayer * meanMarkup * s.adversaries.cartel.floorMultiple)
    const hours = s.owners.hours !== undefined && !head && role.adversary === undefined && rng.chance(s.owners.hours.share) ? { from: s.owners.hours.from, to: s.owners.hours.to } : undefined
    cast.push({ index: i, name: `${head ? 'head' : role.adversary ?? profileName}-${i}`, head, adversary: role.adversary, profileName, profile, floor, hours })
  }
  return cast
}

/** Whole layers of the model a member may lend: floor(free memory × owner's share / layer size). */
export function lendableLayers (m: Member, layerGB: number): number {
  return Math.floor(m.profile.freeMemoryGB * m.profile.memoryShare / layerGB)
}
