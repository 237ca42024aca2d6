import { join } from 'node:path'
import { MeshNode } from './node.ts'
import { createLogger, type LogLevel } from '../log.ts'
import type { ConfigInput } from '../config.ts'
import type { HostExtras } from './host.ts'

/**
 * Several nodes in one process on 127.0.0.1: the demo, the tests and the benchmarks all use it.
 * mDNS stays off (it multicasts off loopback) and NAT traversal too (there is no NAT on loopback).
 */
export function loopbackConfig (name: string, extra: Partial<ConfigInput> = {}, logLevel: LogLevel = 'silent'): Partial<ConfigInput> {
  return {
    name,
    networkId: 'local',
    listen: ['/ip4/127.0.0.1/tcp/0'],
    mdns: false,
    nat: { relayClient: false, relayServer: false, autonat: false, dcutr: false },
    presenceIntervalMs: 1000,
    probeGpu: false,
    logLevel,
    ...extra
  }
}

export async function openLoopbackNode (home: string, name: string, extra: Partial<ConfigInput> = {}, logLevel: LogLevel = 'silent', host?: HostExtras): Promise<MeshNode> {
  const overrides = loopbackConfig(name, extra, logLevel)
  return await MeshNode.open({ home, overrides, env: {}, log: createLogger(name, overrides.logLevel), host })
}

/**
 * Starts n nodes under root/<name>: the first alone, the rest bootstrapping from it only, so that they
 * find everyone else through the DHT and gossip as they would on a real network.
 */
export async function startLocalMesh (root: string, n: number, opts: { extra?: Partial<ConfigInput>, logLevel?: LogLevel, names?: string[], hostFor?: (i: number) => HostExtras } = {}): Promise<MeshNode[]> {
  const name = (i: number): string => opts.names?.[i] ?? `n${i}`
  const first = await openLoopbackNode(join(root, name(0)), name(0), opts.extra, opts.logLevel, opts.hostFor?.(0))
  await first.start()
  const bootstrap = first.multiaddrs()
  const rest = await Promise.all(Array.from({ length: n - 1 }, async (_, i) => {
    const node = await openLoopbackNode(join(root, name(i + 1)), name(i + 1), { bootstrap, ...opts.extra }, opts.logLevel, opts.hostFor?.(i + 1))
    await node.start()
    return node
  }))
  return [first, ...rest]
}

/** True when every node has a live heartbeat from every other node. */
export function fullyPresent (nodes: MeshNode[]): boolean {
  return nodes.every((node) => {
    const seen = new Set(node.presence?.peers().map((p) => p.peerId))
    return nodes.every((other) => other === node || seen.has(other.peerId.toString()))
  })
}

export async function waitFor (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000, everyMs = 25): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (await check()) return
    await new Promise((resolve) => setTimeout(resolve, everyMs))
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
}

export async function stopAll (nodes: MeshNode[]): Promise<void> {
  await Promise.allSettled(nodes.map(async (n) => { await n.stop() }))
}
