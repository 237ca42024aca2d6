import type { ConnectionGater, PeerId } from '@libp2p/interface'
import type { Admissions } from './admission.ts'
import type { Host } from './host.ts'
import type { Logger } from '../log.ts'

/** How long a peer that is not admitted may stay connected to redeem an invite. */
export const DEFAULT_ADMISSION_GRACE_MS = 10_000

/** The gossipsub score of a peer that is not admitted: far below the graylist threshold (-80). */
export const UNADMITTED_SCORE = -1000

/**
 * The connection gater of a private mesh: a peer gets past it only if it is admitted, after noise has
 * proven its id. One exception: while this node has an invite that can still be redeemed, a peer that
 * is not admitted may connect so that it can redeem it; it is then on probation (see Probation).
 * Outbound, we dial only members, so a peer found by the DHT or mDNS with the key is not let in through
 * our own dial either.
 */
export function admissionGater (admissions: Admissions, openInvites: () => Promise<boolean>, log: Logger): ConnectionGater {
  const refuse = async (peer: PeerId, direction: 'inbound' | 'outbound'): Promise<boolean> => {
    const id = peer.toString()
    if (await admissions.knows(id)) return false
    if (direction === 'inbound' && await openInvites()) {
      log.info('a peer that is not admitted connects, on probation (it may redeem an invite)', { peer: id })
      return false
    }
    log.info('refused a peer that is not admitted to this private mesh', { peer: id, direction })
    return true
  }
  return {
    denyDialPeer: async (peer) => !await admissions.knows(peer.toString()),
    denyInboundEncryptedConnection: async (peer) => await refuse(peer, 'inbound'),
    denyOutboundEncryptedConnection: async (peer) => await refuse(peer, 'outbound')
  }
}

/**
 * A peer on probation hears no gossip and is heard by nobody (gossipsub graylists it through its app
 * score, so its messages and subscriptions are dropped and nothing is published to it), and it is
 * disconnected after the grace period unless it was admitted meanwhile.
 */
export class Probation {
  private readonly timers = new Map<string, NodeJS.Timeout>()

  constructor (private readonly host: Host, private readonly admissions: Admissions, private readonly graceMs: number, private readonly log: Logger) {}

  watch (peer: PeerId): void {
    const id = peer.toString()
    if (this.admissions.has(id) || this.timers.has(id)) return
    this.timers.set(id, setTimeout(() => {
      this.timers.delete(id)
      if (this.admissions.has(id)) return
      this.log.info('disconnecting a peer that did not get admitted in time', { peer: id, graceMs: this.graceMs })
      this.host.hangUp(peer).catch(() => {})
    }, this.graceMs))
  }

  stop (): void {
    for (const t of this.timers.values()) clearTimeout(t)
    this.timers.clear()
  }
}
