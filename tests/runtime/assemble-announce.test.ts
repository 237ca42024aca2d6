// agent.assemble may name a GGUF anywhere: the head announces it in its heartbeat, because workers
// only watch the markets of models that heads advertise (a model outside modelsDir went unheard).
import { createHash } from 'node:crypto'
import { mkdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { TEST_MODEL_PRESETS, generateTestModel } from '../../runtime/engine/test-model.ts'
import { resolveModelPath } from '../../runtime/engine/catalog.ts'
import type { MeshNode } from '../../runtime/node/node.ts'
import { openNode, stopAll, tempDir, waitFor } from '../helpers/mesh.ts'

describe('agent.assemble outside the models folder', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  const nodes: MeshNode[] = []
  let sha256: string
  let path: string

  beforeAll(async () => {
    dir = await tempDir('clawmesh-assemble-')
    await mkdir(join(dir.path, 'elsewhere'))
    path = join(dir.path, 'elsewhere', 'my-model.gguf')
    await generateTestModel({ path, seed: 3, ...TEST_MODEL_PRESETS.tiny })
    sha256 = createHash('sha256').update(await readFile(path)).digest('hex')
  }, 120_000)
  afterAll(async () => {
    await stopAll(nodes)
    await dir?.cleanup()
  })

  it('resolves absolute, ~/ and models-relative paths', () => {
    expect(resolveModelPath('/m/x.gguf', '/home/a/models')).toBe('/m/x.gguf')
    expect(resolveModelPath('x.gguf', '/home/a/models')).toBe('/home/a/models/x.gguf')
    expect(resolveModelPath('../big/x.gguf', '/home/a/models')).toBe('/home/a/big/x.gguf')
    expect(resolveModelPath('~/x.gguf', '/home/a/models')).toMatch(/^\/.+\/x\.gguf$/)
  })

  it('is announced in the head\'s heartbeat, and a worker hears of the model', async () => {
    const head = await openNode(join(dir.path, 'head'), 'head', { agent: { assemble: path } })
    nodes.push(head)
    const described = await head.describe()
    expect(described.models).toEqual([expect.objectContaining({ sha256, name: 'my-model', layers: TEST_MODEL_PRESETS.tiny.nLayer })])
    await head.start()
    const worker = await openNode(join(dir.path, 'worker'), 'worker', { bootstrap: head.multiaddrs() })
    nodes.push(worker)
    await worker.start()
    await waitFor('the worker to hear the head announce the model', () =>
      worker.presence!.peers().some((p) => p.peerId === head.peerId.toString() && p.presence.models.some((m) => m.sha256 === sha256)), 20_000)
    // The head's engine finds the file by its hash (EnginePipelineRunner reads model_files).
    expect((await head.store.db.get<{ path: string }>('SELECT path FROM model_files WHERE sha256 = ?', [sha256]))?.path).toBe(path)
  }, 60_000)
})
