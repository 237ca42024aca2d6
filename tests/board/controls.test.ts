import { afterEach, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { ControlRefused } from '../../runtime/node/controls.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { AgentSettingsSchema } from '../../runtime/config.ts'
import { installOwnerPolicy, withinHours } from '../../skills/market/owner-policy.ts'
import { openNode, tempDir } from '../helpers/mesh.ts'

describe('owner controls without an agent (DefaultControls)', () => {
  const cleanups: Array<() => Promise<void>> = []
  afterEach(async () => { for (const c of cleanups.splice(0)) await c() })

  async function fresh (): Promise<{ home: string, open: () => Promise<MeshNode> }> {
    const dir = await tempDir('clawmesh-controls-')
    cleanups.push(dir.cleanup)
    const home = join(dir.path, 'owner')
    return { home, open: async () => await openNode(home, 'owner', { priceFloor: 2 }) }
  }

  it('serving hours: inside, outside, and across midnight', () => {
    const at = (h: number, m = 0): Date => new Date(2026, 0, 1, h, m)
    expect(withinHours(null, at(3))).toBe(true)
    expect(withinHours({ start: '09:00', end: '17:00' }, at(9))).toBe(true)
    expect(withinHours({ start: '09:00', end: '17:00' }, at(17))).toBe(false)
    expect(withinHours({ start: '09:00', end: '17:00' }, at(8, 59))).toBe(false)
    expect(withinHours({ start: '22:00', end: '07:00' }, at(23, 30))).toBe(true)
    expect(withinHours({ start: '22:00', end: '07:00' }, at(6, 59))).toBe(true)
    expect(withinHours({ start: '22:00', end: '07:00' }, at(12))).toBe(false)
  })

  it('policy bounds are validated, outlive a restart, and win over the config file\'s floor', async () => {
    const { open } = await fresh()
    let node = await open()
    // No policy installed (no agent yet): the board shows the config's floor and refuses edits.
    await expect(node.controls.setPolicy({ priceFloor: 3 })).rejects.toBeInstanceOf(ControlRefused)
    const settings = AgentSettingsSchema.parse({})
    await installOwnerPolicy(node, settings)
    expect(node.controls.policy()).toMatchObject({ priceFloor: 2, memoryShare: 0.5, hours: null })
    await expect(node.controls.setPolicy({ memoryShare: 0 })).rejects.toThrow(/memoryShare/)
    await expect(node.controls.setPolicy({ hours: { start: '25:00', end: '07:00' } })).rejects.toThrow(/hours/)
    await expect(node.controls.setPolicy({ ceiling: 1 })).rejects.toThrow(RangeError)
    expect(node.controls.policy().memoryShare).toBe(0.5)
    await node.controls.setPolicy({ priceFloor: 7.5, hours: { start: '22:00', end: '07:00' } })
    expect(node.config.priceFloor).toBe(7.5)
    expect((await node.activity.list({ kind: 'control' }))[0].summary).toMatch(/policy bounds changed/)
    await node.stop()
    node = await open()
    await installOwnerPolicy(node, settings)
    expect(node.controls.policy()).toMatchObject({ priceFloor: 7.5, memoryShare: 0.5, hours: { start: '22:00', end: '07:00' } })
    expect(node.config.priceFloor).toBe(7.5)
    expect((await node.describe()).priceFloor).toBe(7.5)
    await node.stop()
  })

  it('pause and resume flip the state with a recorded reason; after the kill switch both are refused', async () => {
    const { open } = await fresh()
    const node = await open()
    node.state = 'idle'
    expect(node.controls.accepting()).toBe(true)
    await node.controls.pause('testing')
    expect(node.state).toBe('paused')
    expect(node.controls.accepting()).toBe(false)
    await node.controls.resume()
    expect(node.state).toBe('idle')
    let drained = false
    node.controls.onDrain(async () => { await new Promise((resolve) => setTimeout(resolve, 50)); drained = true })
    await node.controls.kill()
    expect(drained).toBe(true)
    expect(node.state).toBe('stopped')
    await expect(node.controls.resume()).rejects.toBeInstanceOf(ControlRefused)
    await expect(node.controls.pause()).rejects.toBeInstanceOf(ControlRefused)
    const life = await node.controls.lifecycle()
    expect(life.killed).toBe(true)
    expect(life.history.map((h) => h.state)).toEqual(['offline', 'idle', 'paused', 'idle', 'draining', 'stopped'])
    expect(life.history.find((h) => h.state === 'paused')?.reason).toBe('testing')
    // The activity log keeps the same story, newest first, in the database.
    await new Promise((resolve) => setTimeout(resolve, 20))
    const lifecycle = (await node.activity.list({ kind: 'lifecycle' })).map((e) => e.summary)
    expect(lifecycle[0]).toMatch(/^state stopped/)
    expect(lifecycle).toContain('state paused: testing')
    await node.stop()
  })

  it('the activity log keeps the newest first and caps what one entry may store', async () => {
    const { open } = await fresh()
    const node = await open()
    await node.activity.record('decision', 'first', { why: 'a' })
    await node.activity.record('decision', 'second', { why: 'x'.repeat(40_000) })
    const [newest, older] = await node.activity.list({ kind: 'decision' })
    expect(newest.summary).toBe('second')
    expect(older.summary).toBe('first')
    expect(newest.detail).toMatchObject({ truncated: true })
    expect(JSON.stringify(newest.detail).length).toBeLessThan(20_000)
    await node.stop()
  })
})
