import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { createInvite } from '../../protocols/index.ts'
import { newMeshKey } from '../../runtime/cli/home.ts'
import { cmdJoin } from '../../runtime/cli/start.ts'
import { recordSingleUseInvite } from '../../runtime/node/invites.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { fullyPresent, openNode, stopAll, tempDir, waitFor } from '../helpers/mesh.ts'

const LOOPBACK = ['/ip4/127.0.0.1/tcp/0']

/**
 * Issue #15, finding 12: single-use and expiry were checked only by the joiner's command, so a refused
 * joiner and the holder of an expired invite entered the private mesh with the key from the invite line.
 * Written against APIs that existed before the fix, so that it reproduces the finding on that code.
 */
describe('private mesh admission is bound to a redeemed invite', () => {
  const key = newMeshKey()
  let dir: Awaited<ReturnType<typeof tempDir>>
  let owner: MeshNode
  const started: MeshNode[] = []

  beforeAll(async () => {
    vi.spyOn(console, 'log').mockImplementation(() => {})
    dir = await tempDir('clawmesh-admission-')
    owner = await openNode(join(dir.path, 'owner'), 'owner', { meshKey: key })
    await owner.start()
    started.push(owner)
  })
  afterAll(async () => {
    await stopAll(started)
    await dir.cleanup()
    vi.restoreAllMocks()
  })

  async function singleUseInvite (expiresAt?: number): Promise<string> {
    const id = randomBytes(16).toString('base64url')
    await recordSingleUseInvite(owner.store, id, expiresAt)
    return await createInvite(owner.key, { net: 'test', boot: owner.multiaddrs(), psk: key, once: id, ...(expiresAt !== undefined ? { exp: expiresAt } : {}) })
  }

  async function joinAndStart (name: string, line: string): Promise<MeshNode> {
    const home = join(dir.path, name)
    await cmdJoin(home, line, { json: true, start: false, listen: LOOPBACK })
    const node = await openNode(home, name)
    await node.start()
    started.push(node)
    return node
  }

  /**
   * Someone who holds the key from an invite line but whose invite was refused starts a node anyway,
   * with software that lets everyone in on its side: only the members' checks can keep it out.
   */
  async function intruder (name: string, line: string, expectRefusal: RegExp): Promise<MeshNode> {
    const home = join(dir.path, name)
    await expect(cmdJoin(home, line, { json: true, start: false, listen: LOOPBACK })).rejects.toThrow(expectRefusal)
    const node = await openNode(home, name, { meshKey: key, bootstrap: owner.multiaddrs() }, { connectionGater: {}, appScore: () => 0 })
    await node.start()
    started.push(node)
    return node
  }

  it('lets in the peers that redeemed their invites, at the inviter and at the other members', async () => {
    const member = await joinAndStart('member', await singleUseInvite())
    const friend = await joinAndStart('friend', await singleUseInvite())
    await waitFor('presence among the three', () => fullyPresent([owner, member, friend]))
    // The friend was admitted by the owner; the member heard of it and lets it connect directly.
    await waitFor('friend connects to member', async () => {
      try {
        await friend.host!.dial(multiaddr(member.multiaddrs()[0]), { signal: AbortSignal.timeout(2000) })
        return true
      } catch { return false }
    }, 15_000, 300)
  })

  it('keeps out a refused joiner and the holder of an expired invite, though they hold the mesh key', async () => {
    const used = await singleUseInvite()
    await joinAndStart('first', used)
    const shortLived = await singleUseInvite(Date.now() + 300)
    await new Promise((resolve) => setTimeout(resolve, 400))
    const refused = await intruder('refused', used, /already used by another agent|used up or expired/)
    const expired = await intruder('expired', shortLived, /expired/)
    const members = started.filter((n) => n !== refused && n !== expired)
    for (const outsider of [refused, expired]) {
      for (const m of members) {
        // The dial may even resolve: the member refuses after the handshake, and closes the connection.
        await outsider.host!.dial(multiaddr(m.multiaddrs()[0]), { signal: AbortSignal.timeout(5000) }).catch(() => {})
      }
    }
    // A few heartbeats later, nobody has heard of them and they have heard of nobody.
    await new Promise((resolve) => setTimeout(resolve, 2000))
    for (const outsider of [refused, expired]) {
      expect(outsider.presence!.peers()).toEqual([])
      for (const m of members) {
        expect(m.presence!.peers().some((p) => p.peerId === outsider.peerId.toString())).toBe(false)
        expect(m.host!.getConnections().some((c) => c.remotePeer.equals(outsider.peerId)), `${m.config.name} connected to ${outsider.config.name}`).toBe(false)
      }
    }
  })
})

describe('a peer that is not admitted, while an invite is open', () => {
  const key = newMeshKey()
  let dir: Awaited<ReturnType<typeof tempDir>>
  const started: MeshNode[] = []
  afterAll(async () => {
    await stopAll(started)
    await dir?.cleanup()
  })

  it('may connect to redeem it, hears no gossip, and is disconnected after the grace period', async () => {
    dir = await tempDir('clawmesh-probation-')
    const owner = await openNode(join(dir.path, 'owner'), 'owner', { meshKey: key, admissionGraceMs: 1500 })
    await owner.start()
    started.push(owner)
    await recordSingleUseInvite(owner.store, randomBytes(16).toString('base64url'), undefined)
    const prober = await openNode(join(dir.path, 'prober'), 'prober', { meshKey: key }, { connectionGater: {}, appScore: () => 0 })
    await prober.start()
    started.push(prober)
    await prober.host!.dial(multiaddr(owner.multiaddrs()[0]))
    await new Promise((resolve) => setTimeout(resolve, 1000))
    expect(owner.presence!.peers()).toEqual([])
    expect(prober.presence!.peers()).toEqual([])
    await waitFor('the owner to drop the prober', () => owner.host!.getConnections().every((c) => !c.remotePeer.equals(prober.peerId)), 5000)
    expect(owner.admissions!.has(prober.peerId.toString())).toBe(false)
  })
})
