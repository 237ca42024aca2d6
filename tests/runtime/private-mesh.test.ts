import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { multiaddr } from '@multiformats/multiaddr'
import { newMeshKey } from '../../runtime/cli/home.ts'
import { recordAdmission } from '../../runtime/node/admission.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { fullyPresent, openNode, stopAll, tempDir, waitFor } from '../helpers/mesh.ts'

describe('a private mesh', () => {
  const key = newMeshKey()
  let dir: Awaited<ReturnType<typeof tempDir>>
  let owner: MeshNode
  const started: MeshNode[] = []

  beforeAll(async () => {
    dir = await tempDir()
    owner = await openNode(join(dir.path, 'owner'), 'owner', { meshKey: key })
    await owner.start()
    started.push(owner)
  })
  afterAll(async () => {
    await stopAll(started)
    await dir.cleanup()
  })

  async function member (name: string, meshKey: string | undefined): Promise<MeshNode> {
    const node = await openNode(join(dir.path, name), name, meshKey === undefined ? {} : { meshKey })
    await node.start()
    started.push(node)
    return node
  }

  it('lets in a peer with the key that a member admitted', async () => {
    // What a redeemed invite does (tests/runtime/admission.test.ts goes through the invite itself).
    const friend = await openNode(join(dir.path, 'friend'), 'friend', { meshKey: key })
    await recordAdmission(friend.store, owner.peerId.toString(), 'invite', owner.peerId.toString())
    await owner.admissions!.admit(friend.peerId.toString(), 'redemption', owner.peerId.toString())
    await friend.start()
    started.push(friend)
    await friend.host!.dial(multiaddr(owner.multiaddrs()[0]))
    await waitFor('presence both ways', () => fullyPresent([owner, friend]))
  })

  it('refuses a peer with the wrong key, and one with no key', async () => {
    for (const [name, k] of [['stranger', newMeshKey()], ['keyless', undefined]] as const) {
      const outsider = await member(name, k)
      await expect(outsider.host!.dial(multiaddr(owner.multiaddrs()[0]), { signal: AbortSignal.timeout(5000) })).rejects.toThrow()
      expect(owner.host!.getConnections().some((c) => c.remotePeer.equals(outsider.peerId))).toBe(false)
      expect(owner.presence!.peers().some((p) => p.peerId === outsider.peerId.toString())).toBe(false)
    }
  })
})
