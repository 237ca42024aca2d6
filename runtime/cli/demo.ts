import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fullyPresent, startLocalMesh, stopAll, waitFor } from '../node/local-mesh.ts'
import { ago, bytes, table } from './format.ts'
import { startBoard, type BoardHandle } from '../board/index.ts'

const NAMES = ['ada', 'bruno', 'chiara', 'dmitri', 'emeka', 'fatima', 'goran', 'hana', 'ivo', 'jun', 'kemal', 'lena']

/**
 * A whole mesh on this machine with nothing configured: n agents in fresh temporary homes on
 * 127.0.0.1, each with its own identity and database, that find each other and exchange signed
 * heartbeats. The homes are deleted when the demo ends.
 */
export async function cmdDemo (opts: { nodes: number, durationS?: number }): Promise<void> {
  const n = Math.max(2, Math.min(opts.nodes, NAMES.length))
  const root = await mkdtemp(join(tmpdir(), 'clawmesh-demo-'))
  console.log(`clawmesh demo: starting ${n} agents on 127.0.0.1 (homes under ${root})`)
  const t0 = Date.now()
  const nodes = await startLocalMesh(root, n, { names: NAMES, extra: { networkId: 'demo', probeGpu: true }, logLevel: 'warn' })
  let stopping = false
  let board: BoardHandle | undefined
  const finish = async (): Promise<void> => {
    if (stopping) return
    stopping = true
    console.log('\nstopping the demo mesh…')
    await board?.stop()
    await stopAll(nodes)
    await rm(root, { recursive: true, force: true })
  }
  try {
    for (const node of nodes) console.log(`  ${node.config.name.padEnd(7)} ${node.peerId.toString()}  ${node.multiaddrs()[0] ?? ''}`)
    await waitFor('every agent to hear every other', () => fullyPresent(nodes), 30_000)
    console.log(`\nAll ${n} agents see each other's signed presence after ${Date.now() - t0} ms.\n`)
    const first = nodes[0]
    console.log(`What ${first.config.name} knows about the mesh:`)
    console.log(table(
      ['AGENT', 'PEER', 'CPU', 'BACKEND', 'FREE RAM', 'FLOOR', 'HEARD'],
      (first.presence?.peers() ?? []).map((p) => [
        p.presence.name, `…${p.peerId.slice(-10)}`, `${p.presence.hardware.cpu.cores} cores`,
        p.presence.hardware.backend === false ? 'cpu' : p.presence.hardware.backend,
        bytes(p.presence.hardware.memory.free), String(p.presence.priceFloor), ago(p.receivedAt)
      ])
    ))
    board = await startBoard(first, { port: 0 })
    console.log(`\nWatch ${first.config.name}'s board: ${board.url}  (owner controls: ${board.url}#/agent?token=${board.token})`)
    console.log('\nThe layer market, the engine and the paid API arrive as their issues land; see README.md.')
    const onSignal = (): void => { void finish().then(() => process.exit(0)) }
    process.once('SIGINT', onSignal)
    process.once('SIGTERM', onSignal)
    const until = opts.durationS !== undefined ? Date.now() + opts.durationS * 1000 : Infinity
    console.log(opts.durationS !== undefined ? `Running for ${opts.durationS} s…` : 'Running; press Ctrl-C to stop.')
    while (!stopping && Date.now() < until) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(10_000, until - Date.now())))
      if (stopping) break
      const stats = nodes.map((node) => node.bus?.getStats().accepted.presence ?? 0)
      console.log(`  ${new Date().toISOString().slice(11, 19)} heartbeats heard per agent: ${stats.join(' ')}`)
    }
  } finally {
    await finish()
  }
}
