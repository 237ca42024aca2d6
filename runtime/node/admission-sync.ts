import { lpStream } from '@libp2p/utils'
import type { PeerId } from '@libp2p/interface'
import { z } from 'zod'
import { MeshAdmitKind, fromUtf8, utf8 } from '../../protocols/index.ts'
import type { Admissions } from './admission.ts'
import type { GossipBus } from './gossip.ts'
import type { Host } from './host.ts'
import type { Logger } from '../log.ts'

/**
 * How members learn who is admitted. A member that redeems an invite announces the new peer on gossip
 * (so that members online now let it in at once); two members that connect exchange their lists (so that
 * a member that was down, or a newcomer, catches up). Either way a member's word counts only if that
 * member is itself admitted here.
 */
export const admissionProtocol = (networkId: string): string => `/clawmesh/${networkId}/admissions/1`

const MAX_PEERS = 4096
const PeerIdText = z.string().min(40).max(80)
const Response = z.object({ peers: z.array(PeerIdText).max(MAX_PEERS) }).strict()

/** Serves our admission list, to admitted members only (a peer on probation learns nothing). */
export async function serveAdmissions (host: Host, admissions: Admissions, networkId: string, log: Logger): Promise<void> {
  await host.handle(admissionProtocol(networkId), async (stream, connection) => {
    const asker = connection.remotePeer.toString()
    try {
      if (!admissions.has(asker)) throw new Error('the asker is not admitted')
      const lp = lpStream(stream, { maxDataLength: 512 * 1024 })
      await lp.write(utf8(JSON.stringify({ peers: admissions.list().slice(0, MAX_PEERS) })))
      await stream.close()
    } catch (err) {
      log.debug('admission list not served', { peer: asker, error: (err as Error).message.slice(0, 200) })
      stream.abort(err as Error)
    }
  })
}

/** Fetches a member's list and admits every peer on it, vouched for by that member. Returns how many were new. */
export async function syncAdmissions (host: Host, admissions: Admissions, member: PeerId, networkId: string, timeoutMs = 5000): Promise<number> {
  const by = member.toString()
  if (!admissions.has(by)) return 0
  const stream = await host.dialProtocol(member, admissionProtocol(networkId), { signal: AbortSignal.timeout(timeoutMs) })
  try {
    const lp = lpStream(stream, { maxDataLength: 512 * 1024 })
    const reply = Response.parse(JSON.parse(fromUtf8((await lp.read({ signal: AbortSignal.timeout(timeoutMs) })).subarray())))
    await stream.close().catch(() => {})
    let added = 0
    for (const peer of reply.peers) if (await admissions.admit(peer, 'sync', by)) added++
    return added
  } catch (err) {
    stream.abort(err as Error)
    throw err
  }
}

/** Believes mesh-admit notices from admitted members. */
export function listenForAdmissions (bus: GossipBus, admissions: Admissions, log: Logger): void {
  bus.subscribe(MeshAdmitKind, async (env) => {
    if (!admissions.has(env.from)) {
      log.warn('ignored an admission by a peer that is not admitted', { author: env.from, peer: env.body.peer })
      return
    }
    if (await admissions.admit(env.body.peer, 'gossip', env.from, env.body.invite)) log.info('a member admitted a peer', { by: env.from, peer: env.body.peer })
  })
}

/** Tells the mesh that we admitted a peer. */
export async function announceAdmission (bus: GossipBus, peer: string, invite: string): Promise<void> {
  await bus.publish(MeshAdmitKind, { peer, invite })
}
