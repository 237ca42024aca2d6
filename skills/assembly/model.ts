import { stat } from 'node:fs/promises'
import { basename } from 'node:path'
import type { ModelRef } from '../../protocols/index.ts'
import { inspectGguf, sha256File } from '../../runtime/engine/catalog.ts'

/**
 * What a head announces about a model it wants assembled, read from its GGUF: the hash that names it,
 * its layer count, and an even share of the file per layer (what a worker weighs against its memory;
 * embeddings and output weights make it an overestimate for small models, which errs on the safe side).
 */
export async function modelRefFromGguf (path: string): Promise<ModelRef & { path: string }> {
  const [st, sha256, info] = await Promise.all([stat(path), sha256File(path), inspectGguf(path)])
  if (info.layers <= 0) throw new Error(`${path} reports no layers (architecture ${info.architecture}); cannot split it`)
  return { sha256, name: basename(path, '.gguf').slice(0, 200), nLayer: info.layers, layerBytes: Math.ceil(st.size / info.layers), path }
}
