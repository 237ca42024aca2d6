import type { MeshNode } from '../node/node.ts'

/** peerId -> the name the peer announces (live presence first, then what the database remembers). */
export async function peerNames (node: MeshNode): Promise<Map<string, string>> {
  const names = new Map<string, string>()
  for (const row of await node.store.listPeers()) if (row.name !== null) names.set(row.peerId, row.name)
  for (const p of node.presence?.peers() ?? []) names.set(p.peerId, p.presence.name)
  names.set(node.peerId.toString(), node.config.name)
  return names
}

export function shortPeer (peerId: string): string {
  return peerId.length > 12 ? `…${peerId.slice(-6)}` : peerId
}

export function nameOf (names: Map<string, string>, peerId: string): string {
  return names.get(peerId) ?? shortPeer(peerId)
}
