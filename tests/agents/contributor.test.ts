import { describe, expect, it } from 'vitest'
import { Contributor, type ContributingAgent } from '../../agents/contributor.ts'
import type { ProposerForge } from '../../governance/forge.ts'
import type { ChangeAuthor } from '../../governance/change-author.ts'
import { createLogger } from '../../runtime/log.ts'
import { waitFor } from '../helpers/mesh.ts'

const unused = async (): Promise<never> => { throw new Error('not part of looking for a task') }

/** A forge with no task issues whose issue list answers after `listMs`, counting looks and overlaps. */
function emptyForge (listMs: number): ProposerForge & { looks: number, maxConcurrent: number } {
  let now = 0
  const forge = {
    repo: { owner: 'o', repo: 'r' },
    looks: 0,
    maxConcurrent: 0,
    listIssues: async () => {
      forge.looks++
      forge.maxConcurrent = Math.max(forge.maxConcurrent, ++now)
      await new Promise((resolve) => setTimeout(resolve, listMs))
      now--
      return []
    },
    listOpenPullRequests: async () => [],
    whoami: unused, branchSha: unused, commitTree: unused, createBlob: unused, createTree: unused, createCommit: unused, createBranch: unused, createPullRequest: unused
  }
  return forge as unknown as ProposerForge & { looks: number, maxConcurrent: number }
}

const neverCalled: ChangeAuthor = { proposeChange: async () => { throw new Error('no task, no change') } }

describe('the contributor takes work only when its agent may', () => {
  it('looks for a task only while the agent is idle, unpaused, within hours and (idleOnly) on an idle machine; never twice at once', async () => {
    const state = { halted: undefined as string | undefined, busy: true, hours: true, idleOnly: false, machineIdle: true }
    const agent: ContributingAgent = {
      get halted () { return state.halted },
      get busy () { return state.busy },
      owner: { allowsWorkAt: () => state.hours, current: () => ({ idleOnly: state.idleOnly }) }
    }
    const forge = emptyForge(30)
    const c = new Contributor({
      agent,
      propose: { forge, author: neverCalled, agent: { name: 'a', key: undefined as never }, cloneUrl: '/nowhere', label: 'task' },
      intervalMs: 1,
      watchMs: 5,
      log: createLogger('test', 'silent'),
      machineIdle: () => state.machineIdle
    })
    c.start()
    const quiet = async (): Promise<void> => {
      const before = forge.looks
      await new Promise((resolve) => setTimeout(resolve, 100))
      expect(forge.looks).toBe(before)
    }
    try {
      await quiet() // a market turn is queued
      state.busy = false
      state.halted = 'the owner paused this agent'
      await quiet()
      state.halted = undefined
      state.hours = false
      await quiet()
      state.hours = true
      state.idleOnly = true
      state.machineIdle = false
      await quiet()
      state.machineIdle = true
      await waitFor('a few looks', async () => forge.looks >= 3, 5000, 5)
      expect(forge.maxConcurrent).toBe(1)
    } finally {
      await c.stop()
    }
    expect(c.working).toBe(false)
  })
})
