import { lpStream } from '@libp2p/utils'
import type { PeerId } from '@libp2p/interface'
import { z } from 'zod'
import { fromUtf8, utf8 } from '../../protocols/index.ts'
import type { Store } from '../store/store.ts'
import type { Host } from './host.ts'
import type { Logger } from '../log.ts'

/**
 * "What is the state of our contracts?" asked of the other party over a direct stream. A contract has
 * one life on both sides, but notices that end one travel by gossip and a party that was down when one
 * was sent never hears it (a worker killed and restarted kept a contract its head had broken, and counted
 * it against its memory for the rest of the term). So the parties compare notes whenever they meet.
 *
 * Only a party learns anything: the asker's id comes from the connection (noise authenticated it), and
 * the state of a contract it is not party to is 'unknown'.
 */
export const contractQueryProtocol = (networkId: string): string => `/clawmesh/${networkId}/contracts/1`

const MAX_IDS = 64
const ContractId = z.string().regex(/^[0-9a-f]{32}$/)
const Request = z.object({ v: z.literal(1), ids: z.array(ContractId).max(MAX_IDS) }).strict()
const State = z.enum(['active', 'broken', 'ended', 'unknown'])
const Response = z.object({ states: z.record(ContractId, State) }).strict()
export type ContractState = z.infer<typeof State>

/** Answers contract queries from the local contracts table. */
export async function serveContractQueries (host: Host, store: Store, networkId: string, log: Logger): Promise<void> {
  await host.handle(contractQueryProtocol(networkId), async (stream, connection) => {
    const lp = lpStream(stream, { maxDataLength: 8192 })
    const asker = connection.remotePeer.toString()
    try {
      const req = Request.parse(JSON.parse(fromUtf8((await lp.read({ signal: AbortSignal.timeout(5000) })).subarray())))
      const states: Record<string, ContractState> = {}
      for (const id of req.ids) {
        const row = await store.db.get<{ status: string, head: string, worker: string }>('SELECT status, head, worker FROM contracts WHERE id = ?', [id])
        const party = row !== undefined && (row.head === asker || row.worker === asker)
        const parsed = State.safeParse(row?.status)
        states[id] = party && parsed.success ? parsed.data : 'unknown'
      }
      await lp.write(utf8(JSON.stringify({ states })))
      await stream.close()
    } catch (err) {
      log.debug('bad contract query', { peer: asker, error: (err as Error).message.slice(0, 200) })
      stream.abort(err as Error)
    }
  })
}

/** Asks a connected party about contracts; states it did not answer for are missing from the result. */
export async function queryContracts (host: Host, peer: PeerId, networkId: string, ids: string[], timeoutMs = 5000): Promise<Record<string, ContractState>> {
  if (ids.length === 0) return {}
  const out: Record<string, ContractState> = {}
  for (let i = 0; i < ids.length; i += MAX_IDS) {
    const stream = await host.dialProtocol(peer, contractQueryProtocol(networkId), { signal: AbortSignal.timeout(timeoutMs) })
    try {
      const lp = lpStream(stream, { maxDataLength: 16384 })
      await lp.write(utf8(JSON.stringify({ v: 1, ids: ids.slice(i, i + MAX_IDS) })))
      const reply = Response.parse(JSON.parse(fromUtf8((await lp.read({ signal: AbortSignal.timeout(timeoutMs) })).subarray())))
      Object.assign(out, reply.states)
      await stream.close().catch(() => {})
    } catch (err) {
      stream.abort(err as Error)
      throw err
    }
  }
  return out
}
