import { assign, createActor, setup, type Actor, type SnapshotFrom } from 'xstate'

/**
 * A ClawBot's lifecycle. The context remembers what the agent is in the middle of (open negotiations,
 * contracts it serves under), so that a snapshot restored after a crash knows where to go back to once
 * the node has rejoined the mesh.
 */
export interface LifecycleContext {
  negotiations: string[]
  contracts: number
  failures: number
  lastError?: string
  /** The state a crash interrupted, when this run resumed from a snapshot. */
  resumedFrom?: string
}

export type LifecycleEvent =
  | { type: 'BOOT' }
  | { type: 'BOOTED' }
  | { type: 'JOINED' }
  | { type: 'RESTARTED', from: string }
  | { type: 'NEGOTIATION_OPENED', cfpId: string }
  | { type: 'NEGOTIATION_CLOSED', cfpId: string }
  | { type: 'CONTRACTED' }
  | { type: 'CONTRACT_ENDED' }
  | { type: 'PAUSE' }
  | { type: 'RESUME' }
  | { type: 'DRAIN' }
  | { type: 'DRAINED' }
  | { type: 'FAIL', error: string }
  | { type: 'RECOVER' }

export const LIFECYCLE_STATES = ['offline', 'booting', 'joining', 'idle', 'negotiating', 'serving', 'paused', 'draining', 'stopped', 'error', 'recovering'] as const
export type LifecycleState = typeof LIFECYCLE_STATES[number]

const busy = {
  NEGOTIATION_OPENED: { target: '#clawbot.negotiating', actions: 'addNegotiation' },
  CONTRACTED: { actions: 'addContract' },
  PAUSE: '#clawbot.paused',
  DRAIN: '#clawbot.draining',
  FAIL: { target: '#clawbot.error', actions: 'recordError' }
} as const

/** Where an agent goes once it is free to work again (joined, recovered, resumed): what its context says it is in. */
const back = [
  { target: '#clawbot.negotiating', guard: 'hasNegotiations' },
  { target: '#clawbot.serving', guard: 'hasContracts' },
  { target: '#clawbot.idle' }
] as const

export const lifecycleMachine = setup({
  types: {
    context: {} as LifecycleContext,
    events: {} as LifecycleEvent
  },
  actions: {
    addNegotiation: assign({ negotiations: ({ context, event }) => event.type === 'NEGOTIATION_OPENED' && !context.negotiations.includes(event.cfpId) ? [...context.negotiations, event.cfpId] : context.negotiations }),
    removeNegotiation: assign({ negotiations: ({ context, event }) => event.type === 'NEGOTIATION_CLOSED' ? context.negotiations.filter((id) => id !== event.cfpId) : context.negotiations }),
    addContract: assign({ contracts: ({ context }) => context.contracts + 1 }),
    endContract: assign({ contracts: ({ context }) => Math.max(0, context.contracts - 1) }),
    recordError: assign({ lastError: ({ event }) => event.type === 'FAIL' ? event.error : undefined }),
    countFailure: assign({ failures: ({ context }) => context.failures + 1 }),
    markResumed: assign({ resumedFrom: ({ event }) => event.type === 'RESTARTED' ? event.from : undefined })
  },
  guards: {
    hasNegotiations: ({ context }) => context.negotiations.length > 0,
    hasContracts: ({ context }) => context.contracts > 0
  }
}).createMachine({
  id: 'clawbot',
  initial: 'offline',
  context: { negotiations: [], contracts: 0, failures: 0 },
  // A snapshot restored after a crash is in whatever state the crash caught; the node is down again,
  // so every run restarts from booting, keeping the context that says what to resume.
  on: { RESTARTED: { target: '.booting', actions: 'markResumed' } },
  states: {
    offline: { on: { BOOT: 'booting' } },
    booting: { on: { BOOTED: 'joining', FAIL: { target: 'error', actions: 'recordError' } } },
    joining: {
      on: {
        JOINED: back,
        NEGOTIATION_OPENED: { actions: 'addNegotiation' },
        NEGOTIATION_CLOSED: { actions: 'removeNegotiation' },
        FAIL: { target: 'error', actions: 'recordError' }
      }
    },
    idle: { on: { ...busy, CONTRACTED: { target: 'serving', actions: 'addContract' } } },
    negotiating: {
      on: {
        ...busy,
        NEGOTIATION_OPENED: { actions: 'addNegotiation' },
        NEGOTIATION_CLOSED: { actions: 'removeNegotiation' },
        CONTRACT_ENDED: { actions: 'endContract' }
      },
      // Once the last negotiation closes: serve if it ended in contracts, else wait.
      always: [{ target: 'serving', guard: ({ context }) => context.negotiations.length === 0 && context.contracts > 0 }, { target: 'idle', guard: ({ context }) => context.negotiations.length === 0 }]
    },
    serving: {
      on: {
        ...busy,
        CONTRACT_ENDED: { actions: 'endContract' }
      },
      always: { target: 'idle', guard: ({ context }) => context.contracts === 0 && context.negotiations.length === 0 }
    },
    // The owner paused the agent (board): it takes no new work, and market events only update what it
    // is in the middle of, so that nothing but RESUME (or the kill switch) takes it out of here.
    paused: {
      on: {
        RESUME: back,
        NEGOTIATION_OPENED: { actions: 'addNegotiation' },
        NEGOTIATION_CLOSED: { actions: 'removeNegotiation' },
        CONTRACTED: { actions: 'addContract' },
        CONTRACT_ENDED: { actions: 'endContract' },
        DRAIN: 'draining',
        FAIL: { target: 'error', actions: 'recordError' }
      }
    },
    draining: { on: { DRAINED: 'stopped', NEGOTIATION_CLOSED: { actions: 'removeNegotiation' }, CONTRACT_ENDED: { actions: 'endContract' } } },
    stopped: { on: { BOOT: 'booting' } },
    error: { on: { RECOVER: { target: 'recovering', actions: 'countFailure' }, DRAIN: 'draining' } },
    recovering: {
      on: {
        JOINED: back,
        FAIL: { target: 'error', actions: 'recordError' },
        DRAIN: 'draining'
      }
    }
  }
})

export type LifecycleSnapshot = SnapshotFrom<typeof lifecycleMachine>
export type LifecycleActor = Actor<typeof lifecycleMachine>

/**
 * Starts the lifecycle, from a persisted snapshot when there is one. A snapshot of a clean stop (or of
 * a machine that never booted) starts over; any other state means a crash, which RESTARTED resumes.
 */
export function startLifecycle (persisted: unknown | undefined): { actor: LifecycleActor, resumedFrom?: string } {
  const state = (persisted as { value?: unknown } | undefined)?.value
  const crashed = typeof state === 'string' && !['offline', 'stopped'].includes(state)
  const actor = createActor(lifecycleMachine, persisted !== undefined ? { snapshot: persisted as LifecycleSnapshot } : {})
  actor.start()
  if (crashed) {
    actor.send({ type: 'RESTARTED', from: state })
    return { actor, resumedFrom: state }
  }
  actor.send({ type: 'BOOT' })
  return { actor }
}

export function stateOf (actor: LifecycleActor): LifecycleState {
  return actor.getSnapshot().value as LifecycleState
}
