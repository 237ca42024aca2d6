import { createHash } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { readdir, stat } from 'node:fs/promises'
import { homedir } from 'node:os'
import { basename, isAbsolute, join, resolve } from 'node:path'
import type { ModelOnDisk } from '../../protocols/index.ts'
import type { Store } from '../store/store.ts'

/** SHA-256 of a whole file, streamed: a model is identified by the hash of its GGUF bytes. */
export async function sha256File (path: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20 })) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

/** Architecture and layer count from the GGUF header, via node-llama-cpp (tensor data is not read). */
export async function inspectGguf (path: string): Promise<{ architecture: string, layers: number }> {
  const { readGgufFileInfo } = await import('node-llama-cpp')
  const info = await readGgufFileInfo(path, { readTensorInfo: false, logWarnings: false, ignoreKeys: ['tokenizer.ggml.tokens', 'tokenizer.ggml.scores', 'tokenizer.ggml.token_type', 'tokenizer.ggml.merges'] })
  const architecture = String(info.metadata.general?.architecture ?? 'unknown')
  const layers = Number((info.architectureMetadata as { block_count?: number }).block_count ?? 0)
  return { architecture, layers }
}

/**
 * The GGUF models in a folder, with hashes and layer counts. Hashing a large model takes seconds, so
 * results are cached in the store by (path, size, mtime) and recomputed only when the file changes.
 * Unreadable files are skipped with a warning instead of hiding every other model.
 */
export async function scanModels (dir: string, store: Store, warn: (msg: string) => void = () => {}): Promise<ModelOnDisk[]> {
  let names: string[]
  try {
    names = (await readdir(dir)).filter((n) => n.toLowerCase().endsWith('.gguf')).sort()
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw err
  }
  return await scanModelFiles(names.map((name) => join(dir, name)), store, warn)
}

/**
 * Where agent.assemble points: an absolute path, ~/… in the user's home, else a path relative to the
 * models folder (a bare file name there being the common case).
 */
export function resolveModelPath (target: string, modelsDir: string): string {
  if (target === '~' || target.startsWith('~/')) return join(homedir(), target.slice(1))
  return isAbsolute(target) ? target : resolve(modelsDir, target)
}

/** GGUF files given by path (anywhere on disk), catalogued like scanModels' (hashes cached in the store). */
export async function scanModelFiles (paths: readonly string[], store: Store, warn: (msg: string) => void = () => {}): Promise<ModelOnDisk[]> {
  const models: ModelOnDisk[] = []
  for (const path of paths) {
    const name = basename(path)
    try {
      const st = await stat(path)
      if (!st.isFile()) continue
      let row = await store.getModelFile(path)
      if (row === undefined || row.sizeBytes !== st.size || row.mtimeMs !== Math.floor(st.mtimeMs)) {
        const [sha256, info] = await Promise.all([sha256File(path), inspectGguf(path)])
        row = { path, sizeBytes: st.size, mtimeMs: Math.floor(st.mtimeMs), sha256, ...info }
        await store.putModelFile(row)
      }
      models.push({ name: basename(name, '.gguf').slice(0, 200), sha256: row.sha256, sizeBytes: row.sizeBytes, architecture: row.architecture.slice(0, 64), layers: row.layers })
    } catch (err) {
      warn(`skipping ${path}: ${(err as Error).message}`)
    }
  }
  return models
}
