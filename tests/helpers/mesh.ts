import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { ConfigInput } from '../../runtime/config.ts'
import type { LogLevel } from '../../runtime/log.ts'
import { openLoopbackNode, startLocalMesh } from '../../runtime/node/local-mesh.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import type { HostExtras } from '../../runtime/node/host.ts'
export { fullyPresent, stopAll, waitFor } from '../../runtime/node/local-mesh.ts'

const logLevel: LogLevel = process.env.CLAWMESH_TEST_LOG === '1' ? 'debug' : 'silent'
/** Tests heartbeat faster than the demo, and on a network of their own. */
const testExtra: Partial<ConfigInput> = { networkId: 'test', presenceIntervalMs: 500 }

export async function tempDir (prefix = 'clawmesh-test-'): Promise<{ path: string, cleanup: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), prefix))
  return { path, cleanup: async () => await rm(path, { recursive: true, force: true }) }
}

export async function openNode (home: string, name: string, extra: Partial<ConfigInput> = {}, host?: HostExtras): Promise<MeshNode> {
  return await openLoopbackNode(home, name, { ...testExtra, ...extra }, logLevel, host)
}

export async function startMesh (root: string, n: number, extra: Partial<ConfigInput> = {}): Promise<MeshNode[]> {
  return await startLocalMesh(root, n, { extra: { ...testExtra, ...extra }, logLevel })
}
