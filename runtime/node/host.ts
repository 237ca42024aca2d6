import { createHash } from 'node:crypto'
import { createLibp2p, type Libp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify, identifyPush } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub, type GossipSub } from '@libp2p/gossipsub'
import type { MetricsRegister } from '@libp2p/gossipsub/metrics'
import { kadDHT, removePublicAddressesMapper, passthroughMapper, type KadDHT } from '@libp2p/kad-dht'
import { bootstrap } from '@libp2p/bootstrap'
import { mdns } from '@libp2p/mdns'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { autoNAT } from '@libp2p/autonat'
import { dcutr } from '@libp2p/dcutr'
import { preSharedKey } from '@libp2p/pnet'
import type { ConnectionGater, Metrics, PrivateKey } from '@libp2p/interface'
import type { Identify } from '@libp2p/identify'
import type { Ping } from '@libp2p/ping'
import { dhtProtocolFor } from '../../protocols/index.ts'
import type { Config } from '../config.ts'

export interface HostServices {
  identify: Identify
  ping: Ping
  pubsub: GossipSub
  dht?: KadDHT
  [name: string]: unknown
}

export type Host = Libp2p<HostServices>

function fastMessageId (msg: { from?: Uint8Array, seqno?: Uint8Array, data?: Uint8Array, signature?: Uint8Array, topic: string }): string {
  const hash = createHash('sha1')
  // Length-prefixed, so that no two different field splits hash alike.
  for (const part of [msg.from, msg.seqno, msg.data, msg.signature]) {
    const bytes = part ?? new Uint8Array()
    hash.update(`${bytes.byteLength}:`)
    hash.update(bytes)
  }
  return hash.update(msg.topic).digest('base64')
}

/** The swarm.key text libp2p's pnet expects, from the 64-hex-character key kept in config and invites. */
export function swarmKeyFromHex (hex: string): Uint8Array {
  return new TextEncoder().encode(`/key/swarm/psk/1.0.0/\n/base16/\n${hex}`)
}

function isLoopbackOrPrivate (addrs: string[]): boolean {
  return addrs.every((a) => /^\/ip4\/(127\.|10\.|192\.168\.|172\.(1[6-9]|2\d|3[01])\.)|^\/ip6\/(::1|fe80|fc|fd)/.test(a))
}

/**
 * Builds the libp2p host from the owner's config: TCP + noise + yamux, identify, ping, signed gossipsub,
 * a network-scoped kad-dht, bootstrap and mDNS discovery, and circuit relay v2 + DCUtR + AutoNAT for
 * peers behind NAT. A mesh key turns on libp2p's private network protector.
 */
export interface HostExtras {
  /** A libp2p metrics implementation (benchmarks measure bytes per protocol with it). */
  metrics?: (components: any) => Metrics
  /** Gossipsub's own metrics (RPC bytes sent and received, among others). */
  gossipsubMetrics?: MetricsRegister
  /** Refuses connections (a private mesh's admission gate). */
  connectionGater?: ConnectionGater
  /** Gossipsub's application-specific score of a peer (weighted 10); far below -8 graylists it. */
  appScore?: (peerId: string) => number
}

export async function createHost (key: PrivateKey, config: Config, extras: HostExtras = {}): Promise<Host> {
  const peerDiscovery = []
  if (config.bootstrap.length > 0) peerDiscovery.push(bootstrap({ list: config.bootstrap, timeout: 100 }))
  if (config.mdns) peerDiscovery.push(mdns({ serviceTag: `clawmesh-${config.networkId}` }))

  // A mesh that lives on one LAN (or loopback) keeps private addresses; kad-dht drops them by default.
  const lanOnly = isLoopbackOrPrivate([...config.listen, ...config.bootstrap])
  const services: Record<string, (components: any) => unknown> = {
    identify: identify(),
    identifyPush: identifyPush(),
    ping: ping(),
    pubsub: gossipsub({
      // Our own envelope signature rides on top; StrictSign makes gossipsub bind the relaying author too.
      globalSignaturePolicy: 'StrictSign',
      allowPublishToZeroTopicPeers: true,
      emitSelf: false,
      // Small meshes (a household, a test) should still gossip to everyone quickly.
      D: 6,
      Dlo: 3,
      Dhi: 12,
      // Without a fast id, gossipsub verifies the signature of every duplicate copy before it notices
      // the duplicate: with D = 6 that was 6x the Ed25519 work (profiled with 20 nodes). Hashing every
      // signed field means only byte-identical copies are short-circuited.
      fastMsgIdFn: fastMessageId,
      // Own messages go to mesh peers like any other instead of to every peer we know: with 20 peers
      // flood publishing tripled the writes of each heartbeat.
      floodPublish: false,
      // Gossipsub penalises many peers behind one IP (a Sybil signal on the internet). On a LAN or
      // loopback mesh every peer shares the same address space, and 12+ local peers would graylist
      // each other, so the penalty is off there.
      scoreParams: {
        ...(lanOnly ? { IPColocationFactorWeight: 0 } : {}),
        ...(extras.appScore !== undefined ? { appSpecificScore: extras.appScore } : {})
      },
      ...(extras.gossipsubMetrics !== undefined ? { metricsRegister: extras.gossipsubMetrics, metricsTopicStrToLabel: new Map() } : {})
    })
  }
  if (config.dht) {
    services.dht = kadDHT({
      protocol: dhtProtocolFor(config.networkId),
      clientMode: false,
      peerInfoMapper: lanOnly ? removePublicAddressesMapper : passthroughMapper
    })
  }
  const listen = [...config.listen]
  // Reservations only on relays the owner named. A bare '/p2p-circuit' listen address makes libp2p
  // search the network for relays with a kad-dht random walk that never ends while no peer is a relay
  // (the default: relayServer is off): on a 3-node mesh that was ~175 DHT streams/s and dials of every
  // peer it found, dead ones included, until the connections carrying engine tunnels were reset.
  // Dialling relayed addresses of others works without any listen address.
  if (config.nat.relayClient) for (const relay of config.nat.relays) listen.push(`${relay.replace(/\/p2p-circuit$/, '')}/p2p-circuit`)
  if (config.nat.relayServer) services.relay = circuitRelayServer()
  if (config.nat.autonat) services.autonat = autoNAT()
  if (config.nat.dcutr) services.dcutr = dcutr()

  return await createLibp2p({
    privateKey: key,
    addresses: { listen, announce: config.announce },
    transports: [tcp(), ...(config.nat.relayClient ? [circuitRelayTransport()] : [])],
    connectionEncrypters: [noise()],
    // Engine tunnels (/clawmesh/rpc/1) carry bulk tensor traffic: yamux's default 256 KiB window throttles
    // them, and a paused stream is reset once its read buffer passes maxReadBufferLength, so the buffer must
    // hold at least one full window (stack.md gotcha #3).
    streamMuxers: [yamux({ streamOptions: { maxStreamWindowSize: 4 * 1024 * 1024, maxReadBufferLength: 8 * 1024 * 1024 } })],
    ...(config.meshKey !== undefined ? { connectionProtector: preSharedKey({ psk: swarmKeyFromHex(config.meshKey) }) } : {}),
    ...(extras.connectionGater !== undefined ? { connectionGater: extras.connectionGater } : {}),
    peerDiscovery,
    // libp2p accepts 5 inbound connections per second per IP by default, which refuses half of a LAN
    // (or loopback) mesh that starts at once; on a LAN-only mesh the per-IP limit protects nothing.
    connectionManager: { maxConnections: config.maxConnections, ...(lanOnly ? { inboundConnectionThreshold: 100 } : {}) },
    services,
    ...(extras.metrics !== undefined ? { metrics: extras.metrics } : {})
  }) as unknown as Host
}
