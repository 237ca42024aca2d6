import { readFile, rename, rm, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { GossipStats } from './gossip.ts'
import type { TrafficCounts } from './traffic.ts'
import type { PipelineState } from './pipelines.ts'

/**
 * What a running node tells the CLI (and anyone who reads its home) about itself. The node rewrites it
 * atomically on every heartbeat and connection change; a stale file from a crashed node is recognised by
 * its dead pid.
 */
export interface NodeStatus {
  pid: number
  name: string
  peerId: string
  networkId: string
  privateMesh: boolean
  startedAt: number
  updatedAt: number
  addrs: string[]
  connections: Array<{ peerId: string, addr: string, direction: string }>
  presentPeers: number
  gossip: GossipStats
  state: string
  /** Streams and connections opened since start (rates come from two readings). */
  traffic?: TrafficCounts
  /** Resident memory of the node's process, bytes. */
  memory?: { rss: number }
  /** The head's pipelines by model SHA-256. */
  pipelines?: Record<string, PipelineState>
  /** Tokens served since this process started, per model sha256 (the node's ServingMeter), and the rate over the last minute. */
  serving?: { tokens: Record<string, number>, perSecond: Record<string, number> }
}

export const STATUS_FILE = 'status.json'
let writeSeq = 0

export async function writeStatus (home: string, status: NodeStatus): Promise<void> {
  const path = join(home, STATUS_FILE)
  // A unique temp name: two writes in flight must not rename each other's file away.
  const tmp = `${path}.${process.pid}.${++writeSeq}.tmp`
  await writeFile(tmp, JSON.stringify(status, null, 2))
  await rename(tmp, path)
}

export async function readStatus (home: string): Promise<NodeStatus | undefined> {
  try {
    return JSON.parse(await readFile(join(home, STATUS_FILE), 'utf8')) as NodeStatus
  } catch {
    return undefined
  }
}

export async function clearStatus (home: string): Promise<void> {
  await rm(join(home, STATUS_FILE), { force: true })
}

export function isAlive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** The status of a node that is running now, or undefined when the file is missing or its process is gone. */
export async function readLiveStatus (home: string): Promise<NodeStatus | undefined> {
  const status = await readStatus(home)
  return status !== undefined && isAlive(status.pid) ? status : undefined
}
