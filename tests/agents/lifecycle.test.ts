import { describe, expect, it } from 'vitest'
import { createActor } from 'xstate'
import { lifecycleMachine, startLifecycle, stateOf } from '../../agents/lifecycle.ts'

describe('ClawBot lifecycle', () => {
  it('boots, joins, negotiates, serves and drains', () => {
    const { actor } = startLifecycle(undefined)
    expect(stateOf(actor)).toBe('booting')
    actor.send({ type: 'BOOTED' })
    actor.send({ type: 'JOINED' })
    expect(stateOf(actor)).toBe('idle')
    actor.send({ type: 'NEGOTIATION_OPENED', cfpId: 'a' })
    actor.send({ type: 'NEGOTIATION_OPENED', cfpId: 'b' })
    expect(stateOf(actor)).toBe('negotiating')
    actor.send({ type: 'CONTRACTED' })
    actor.send({ type: 'NEGOTIATION_CLOSED', cfpId: 'a' })
    expect(stateOf(actor)).toBe('negotiating')
    actor.send({ type: 'NEGOTIATION_CLOSED', cfpId: 'b' })
    expect(stateOf(actor)).toBe('serving')
    actor.send({ type: 'CONTRACT_ENDED' })
    expect(stateOf(actor)).toBe('idle')
    actor.send({ type: 'DRAIN' })
    actor.send({ type: 'DRAINED' })
    expect(stateOf(actor)).toBe('stopped')
  })

  it('goes through error and recovery back to where its context says', () => {
    const { actor } = startLifecycle(undefined)
    actor.send({ type: 'BOOTED' })
    actor.send({ type: 'JOINED' })
    actor.send({ type: 'NEGOTIATION_OPENED', cfpId: 'a' })
    actor.send({ type: 'FAIL', error: 'llm timed out' })
    expect(stateOf(actor)).toBe('error')
    expect(actor.getSnapshot().context.lastError).toBe('llm timed out')
    actor.send({ type: 'RECOVER' })
    expect(stateOf(actor)).toBe('recovering')
    actor.send({ type: 'JOINED' })
    expect(stateOf(actor)).toBe('negotiating')
    expect(actor.getSnapshot().context.failures).toBe(1)
  })

  it('resumes a crashed snapshot through booting, keeping what it was doing', () => {
    const { actor } = startLifecycle(undefined)
    actor.send({ type: 'BOOTED' })
    actor.send({ type: 'JOINED' })
    actor.send({ type: 'NEGOTIATION_OPENED', cfpId: 'x' })
    // What the database holds after a crash: a JSON round trip of the persisted snapshot.
    const saved = JSON.parse(JSON.stringify(actor.getPersistedSnapshot())) as unknown
    actor.stop()
    const again = startLifecycle(saved)
    expect(again.resumedFrom).toBe('negotiating')
    expect(stateOf(again.actor)).toBe('booting')
    again.actor.send({ type: 'BOOTED' })
    again.actor.send({ type: 'JOINED' })
    expect(stateOf(again.actor)).toBe('negotiating')
    expect(again.actor.getSnapshot().context).toMatchObject({ negotiations: ['x'], resumedFrom: 'negotiating' })
  })

  it('starts over after a clean stop', () => {
    const actor = createActor(lifecycleMachine).start()
    actor.send({ type: 'BOOT' })
    actor.send({ type: 'BOOTED' })
    actor.send({ type: 'JOINED' })
    actor.send({ type: 'DRAIN' })
    actor.send({ type: 'DRAINED' })
    const again = startLifecycle(JSON.parse(JSON.stringify(actor.getPersistedSnapshot())))
    expect(again.resumedFrom).toBeUndefined()
    expect(stateOf(again.actor)).toBe('booting')
  })
})
