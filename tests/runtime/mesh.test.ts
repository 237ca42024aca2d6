import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { generateKeyPair } from '@libp2p/crypto/keys'
import {
  MAX_ENVELOPE_BYTES, PresenceKind, encodeEnvelope, sealEnvelope, utf8, type Presence
} from '../../protocols/index.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { fullyPresent, openNode, startMesh, stopAll, tempDir, waitFor } from '../helpers/mesh.ts'

describe('a 5-node mesh on loopback', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let nodes: MeshNode[]

  beforeAll(async () => {
    dir = await tempDir()
    nodes = await startMesh(dir.path, 5)
    await waitFor('every node to see every other node\'s presence', () => fullyPresent(nodes))
  })
  afterAll(async () => {
    await stopAll(nodes)
    await dir.cleanup()
  })

  it('every node sees every other node\'s signed presence, stored in its database', async () => {
    for (const node of nodes) {
      const peers = await node.store.listPeers()
      const withPresence = peers.filter((p) => p.presence !== null).map((p) => p.peerId)
      for (const other of nodes) if (other !== node) expect(withPresence).toContain(other.peerId.toString())
      const stored = await node.store.listMessages({ kind: 'presence' })
      expect(stored.some((m) => !m.outgoing)).toBe(true)
      expect(stored.some((m) => m.outgoing)).toBe(true)
    }
    const seen = nodes[1].presence!.peers().find((p) => p.peerId === nodes[2].peerId.toString())!
    expect(seen.presence.name).toBe('n2')
    expect(seen.presence.hardware.cpu.cores).toBeGreaterThan(0)
    expect(seen.presence.addrs[0]).toMatch(/^\/ip4\/127\.0\.0\.1\/tcp\/\d+\/p2p\//)
  })

  it('grows direct links beyond the bootstrap hub, so the mesh outlives it', async () => {
    await waitFor('each node to have at least 2 direct links', () => nodes.every((n) => n.host!.getConnections().length >= 2))
    const hub = nodes[0]
    await hub.stop()
    const rest = nodes.slice(1)
    const marker = Date.now()
    await waitFor('heartbeats after the hub left', () => rest.every((node) =>
      rest.every((other) => other === node || (node.presence!.peers().find((p) => p.peerId === other.peerId.toString())?.receivedAt ?? 0) > marker + 600)
    ), 10_000)
    nodes = rest
  })
})

describe('hostile gossip', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let victim: MeshNode
  let mallory: MeshNode
  let topic: string
  let presence: Presence

  beforeAll(async () => {
    dir = await tempDir()
    ;[victim, mallory] = await startMesh(dir.path, 2)
    await waitFor('the two nodes to see each other', () => fullyPresent([victim, mallory]))
    topic = victim.bus!.topic('presence')
    presence = await mallory.describe()
  })
  afterAll(async () => {
    await stopAll([victim, mallory])
    await dir.cleanup()
  })

  /** Publishes raw bytes from Mallory's gossipsub, bypassing her own envelope checks. */
  async function inject (bytes: Uint8Array): Promise<void> {
    await mallory.host!.services.pubsub.publish(topic, bytes)
  }

  async function expectRejected (reason: string, bytes: Uint8Array): Promise<void> {
    const before = victim.bus!.getStats().rejected[reason as 'malformed']
    const stored = await victim.store.countMessages()
    await inject(bytes)
    await waitFor(`a ${reason} rejection`, () => victim.bus!.getStats().rejected[reason as 'malformed'] === before + 1, 5000)
    expect(await victim.store.countMessages()).toBeLessThanOrEqual(stored + 1) // at most a genuine heartbeat in between
    const all = await victim.store.listMessages({ author: mallory.peerId.toString() })
    expect(all.every((m) => m.envelope.kind === 'presence' && typeof m.envelope.sig === 'string')).toBe(true)
  }

  it('rejects malformed bytes', async () => {
    await expectRejected('malformed', utf8('{"hello": "world"}'))
  })

  it('rejects oversized messages', async () => {
    await expectRejected('oversized', new Uint8Array(MAX_ENVELOPE_BYTES + 100).fill(0x20))
  })

  it('rejects a message forged in another peer\'s name', async () => {
    const stranger = await generateKeyPair('Ed25519')
    const env = await sealEnvelope(stranger, PresenceKind, presence, { networkId: 'test' })
    // Claiming to be the victim: gossipsub's own signature says Mallory published it.
    await expectRejected('signer-mismatch', utf8(JSON.stringify({ ...env, from: victim.peerId.toString() })))
    // Under Mallory's own name but with someone else's signature: it cannot verify.
    await expectRejected('bad-signature', utf8(JSON.stringify({ ...env, from: mallory.peerId.toString() })))
    // A genuine envelope of a third peer, passed off by Mallory as her own message.
    await expectRejected('signer-mismatch', encodeEnvelope(env))
  })

  it('rejects an expired message', async () => {
    const env = await sealEnvelope(mallory.key, PresenceKind, presence, { networkId: 'test', now: Date.now() - 120_000 })
    await expectRejected('expired', encodeEnvelope(env))
  })

  it('rejects a replayed message and stores it only once', async () => {
    const env = await sealEnvelope(mallory.key, PresenceKind, presence, { networkId: 'test' })
    const accepted = victim.bus!.getStats().accepted.presence ?? 0
    await inject(encodeEnvelope(env))
    await waitFor('the first copy to be accepted', () => (victim.bus!.getStats().accepted.presence ?? 0) > accepted, 5000)
    // Same envelope bytes again; gossipsub gives it a new sequence number, so only our guard can tell.
    await expectRejected('replayed', encodeEnvelope(env))
    const copies = (await victim.store.listMessages({ author: mallory.peerId.toString() })).filter((m) => m.id === env.id)
    expect(copies).toHaveLength(1)
  })

  it('lowers the relaying peer\'s gossipsub score', async () => {
    // Gossipsub caches scores for a heartbeat (1 s).
    await waitFor('Mallory\'s score to drop', () => victim.bus!.scoreOf(mallory.peerId.toString()) < -10, 3000)
    expect(mallory.bus!.scoreOf(victim.peerId.toString())).toBeGreaterThanOrEqual(0)
  })
})

describe('restart', () => {
  it('keeps its PeerId and its database', async () => {
    const dir = await tempDir()
    try {
      const home = join(dir.path, 'solo')
      const first = await openNode(home, 'solo')
      await first.start()
      const id = first.peerId.toString()
      await waitFor('own heartbeat stored', async () => (await first.store.countMessages()) > 0)
      const count = await first.store.countMessages()
      await first.stop()
      const second = await openNode(home, 'solo')
      expect(second.peerId.toString()).toBe(id)
      expect(await second.store.countMessages()).toBe(count)
      await second.start()
      expect(second.multiaddrs()[0]).toContain(id)
      await second.stop()
    } finally {
      await dir.cleanup()
    }
  })
})
