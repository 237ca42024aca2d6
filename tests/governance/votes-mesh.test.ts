import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { encodeEnvelope } from '../../protocols/envelope.ts'
import { ParameterProposalKind, VoteKind } from '../../protocols/governance.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { VoteService } from '../../governance/votes.ts'
import type { VotingRules } from '../../governance/rules.ts'
import { voteTools } from '../../skills/governance/vote-tools.ts'
import { startMesh, stopAll, tempDir, waitFor } from '../helpers/mesh.ts'
import { cliEnv, runJson } from '../helpers/cli.ts'

describe('parameter votes on 5 real libp2p nodes', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let nodes: MeshNode[] = []
  let services: VoteService[] = []

  beforeAll(async () => {
    dir = await tempDir('clawmesh-gov-')
    nodes = await startMesh(dir.path, 5)
    // The owners attest all five agents, one weight each; a result needs 4 of them; votes last 4 s.
    const rules: VotingRules = { voters: Object.fromEntries(nodes.map((n) => [n.peerId.toString(), 1])), quorum: 4, votingPeriodMs: 4000, bounds: {} }
    services = nodes.map((n) => new VoteService(n, rules))
    for (const s of services) await s.start()
    // Gossip flows along each topic's mesh, grafted at gossipsub heartbeats: wait until every node
    // knows all the others' subscriptions and has mesh peers on both topics, or a message can take
    // seconds (gossip rounds) to reach a node.
    await waitFor('governance topics to span the mesh', () => nodes.every((n) =>
      [ParameterProposalKind, VoteKind].every((k) => {
        const topic = n.bus!.topic(k.kind)
        return n.host!.services.pubsub.getSubscribers(topic).length >= 4 && (n.host!.services.pubsub as unknown as { getMeshPeers (t: string): string[] }).getMeshPeers(topic).length >= 2
      })), 20_000)
  })
  afterAll(async () => {
    for (const s of services) s.stop()
    await stopAll(nodes)
    await dir.cleanup()
  })

  it('computes the identical tally on every node, with changed, duplicate and late votes, and applies it', async () => {
    // Generous: on a loaded 2-core machine, spreading the proposal and casting the votes can take seconds.
    const { id, env } = await services[0].propose({ parameter: 'review-quorum', value: 3, rationale: 'more eyes on merges', voteTtlMs: 1000 })
    const deadline = env.body.deadline
    await waitFor('the proposal on every node', async () => (await Promise.all(services.map(async (s) => await s.store.getProposal(id)))).every((p) => p !== undefined))

    await services[0].vote(id, 'yes')
    // Node 1 votes through the agent skill, as its LLM would.
    const [, castVote1] = voteTools(services[1])
    expect(await castVote1.invoke({ proposal: id, choice: 'yes' })).toMatch(/^Voted yes/)
    await services[2].vote(id, 'yes')
    // Node 3 changes its mind: only its last vote before the deadline counts.
    await services[3].vote(id, 'yes')
    await new Promise((resolve) => setTimeout(resolve, 5))
    const changed = await services[3].vote(id, 'no')
    // A verbatim re-broadcast of node 3's vote: the replay guard drops it, and the tally dedups it anyway.
    await nodes[3].host!.services.pubsub.publish(nodes[3].bus!.topic(VoteKind.kind), encodeEnvelope(changed)).catch(() => {})
    expect(Date.now(), 'the on-time votes were cast before the deadline (machine too slow?)').toBeLessThan(deadline)
    // Node 4 votes only after the deadline: late, so it must not count anywhere.
    await waitFor('the deadline to pass', () => Date.now() > deadline + 5, 10_000)
    const [, castVote4] = voteTools(services[4])
    expect(await castVote4.invoke({ proposal: id, choice: 'no' })).toMatch(/will not count/)

    await waitFor('every node to finalize', async () => (await Promise.all(services.map(async (s) => await s.store.getResult(id)))).every((r) => r !== undefined), 15_000)
    const results = await Promise.all(services.map(async (s) => (await s.store.getResult(id))!))
    expect(new Set(results.map((r) => r.digest)).size).toBe(1)
    expect(results[0]).toMatchObject({ yes: 3, no: 1, voters: 4, outcome: 'passed', parameter: 'review-quorum', value: 3 })
    expect(results[0].ignored.map((i) => i.reason).sort()).toEqual(['late', 'superseded'])
    expect(env.from).toBe(nodes[0].peerId.toString())

    for (const s of services) {
      expect(await s.store.parameters()).toEqual([expect.objectContaining({ parameter: 'review-quorum', value: 3, proposal: id })])
    }

    // The board's view: every voter heard (the late one too), and the outcome.
    expect(await nodes[1].store.db.all('SELECT proposal, outcome, voters_heard FROM board_votes')).toEqual([{ proposal: id, outcome: 'passed', voters_heard: 5 }])

    // The owner sees the same from the CLI, read from the running node's database.
    const view = await runJson<{ proposals: Array<{ id: string, result: { outcome: string, digest: string } }>, parameters: Array<{ parameter: string, value: number }> }>(['proposals', '--home', nodes[2].home], cliEnv(dir.path))
    expect(view.proposals).toEqual([expect.objectContaining({ id, result: expect.objectContaining({ outcome: 'passed', digest: results[0].digest }) })])
    expect(view.parameters).toEqual([expect.objectContaining({ parameter: 'review-quorum', value: 3 })])
  })
})
