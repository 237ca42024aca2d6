import { PROTOCOL_VERSION } from './version.ts'

/**
 * Gossip topics are scoped by network id so that two meshes sharing peers (or a test and a demo on one
 * machine) never mix their traffic, and by protocol version so that old and new peers ignore each other.
 */
export function topicFor (networkId: string, kind: string, scope?: string): string {
  if (scope === undefined) return `/clawmesh/${networkId}/${kind}/${PROTOCOL_VERSION}`
  if (!TOPIC_SCOPE_PATTERN.test(scope)) throw new RangeError(`topic scope must match ${TOPIC_SCOPE_PATTERN}, got "${scope}"`)
  return `/clawmesh/${networkId}/${kind}/${scope}/${PROTOCOL_VERSION}`
}

/**
 * A scope splits one kind over several topics (the market: one topic per model), so that peers only
 * receive the traffic of what they care about. Unscoped topics keep their original name.
 */
export const TOPIC_SCOPE_PATTERN = /^[a-z0-9][a-z0-9-]{0,63}$/

/** The kad-dht protocol of one network: a private DHT instead of joining the public IPFS one. */
export function dhtProtocolFor (networkId: string): string {
  return `/clawmesh/${networkId}/kad/1.0.0`
}

export const NETWORK_ID_PATTERN = /^[a-z0-9][a-z0-9-]{0,62}$/
