import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { join } from 'node:path'
import { CfpKind, PROTOCOL_VERSION, marketScope, topicFor, type Cfp, type Envelope } from '../../protocols/index.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { fullyPresent, startMesh, stopAll, tempDir, waitFor } from '../helpers/mesh.ts'

const A = 'a1'.repeat(32)
const B = 'b2'.repeat(32)

function cfpFor (model: string, cfpId: string): Cfp {
  return { cfpId, model, modelRef: { sha256: model, name: 'm', nLayer: 4, layerBytes: 10 }, want: { start: 0, end: 4 }, budget: 4, deadline: Date.now() + 60_000, serveUntil: Date.now() + 120_000, maxRounds: 2, text: 'anyone?' }
}

/** The market runs one gossip topic per model; the bus binds each message to its topic's model. */
describe('per-model market topics', () => {
  let tmp: Awaited<ReturnType<typeof tempDir>>
  let nodes: MeshNode[]

  beforeAll(async () => {
    tmp = await tempDir()
    nodes = await startMesh(join(tmp.path, 'mesh'), 2)
    await waitFor('the two nodes to see each other', () => fullyPresent(nodes))
  })
  afterAll(async () => {
    await stopAll(nodes ?? [])
    await tmp.cleanup()
  })

  it('keeps unscoped topic names as they were and gives each model its own', () => {
    expect(topicFor('test', 'presence')).toBe(`/clawmesh/test/presence/${PROTOCOL_VERSION}`)
    expect(topicFor('test', 'market-cfp', marketScope(A))).toBe(`/clawmesh/test/market-cfp/${A.slice(0, 16)}/${PROTOCOL_VERSION}`)
    expect(() => topicFor('test', 'market-cfp', 'Bad/Scope')).toThrow(/scope/)
  })

  it('delivers a model\'s messages on its topic and rejects those that name another model', async () => {
    const [sender, receiver] = nodes
    const got: Array<{ env: Envelope<Cfp>, scope?: string }> = []
    receiver.bus!.subscribe(CfpKind, (env, ctx) => { got.push({ env, scope: ctx.scope }) }, { scope: marketScope(A), scopeOf: (b) => marketScope(b.model) })
    // The sender joins the topic too, so that gossipsub has a mesh to publish into.
    sender.bus!.subscribe(CfpKind, undefined, { scope: marketScope(A), scopeOf: (b) => marketScope(b.model) })
    await waitFor('the receiver to be a subscriber', () => sender.host!.services.pubsub.getSubscribers(topicFor('test', CfpKind.kind, marketScope(A))).length > 0)

    const rejectedBefore = receiver.bus!.getStats().rejected.malformed
    await sender.bus!.publish(CfpKind, cfpFor(B, 'smuggled-1'), { scope: marketScope(A) })
    await sender.bus!.publish(CfpKind, cfpFor(A, 'honest-01'), { scope: marketScope(A) })
    await waitFor('the honest call to arrive', () => got.length > 0)
    await waitFor('the smuggled call to be rejected', () => receiver.bus!.getStats().rejected.malformed > rejectedBefore)
    expect(got.map((g) => g.env.body.cfpId)).toEqual(['honest-01'])
    expect(got[0].scope).toBe(marketScope(A))
  })
})
