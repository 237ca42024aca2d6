// Where a model comes from and what the planner needs to know about it. A model reference is one of
//   /path/to/model.gguf                 a local file
//   ollama:qwen2.5:0.5b                 the owner's Ollama store (resolved to its blob in place, no copy)
//   hf:user/repo/file.gguf  (or hf:user/repo:Q4_K_M)   Hugging Face, through node-llama-cpp's downloader
//   https://host/file.gguf              a plain URL, same downloader
// and is identified on the mesh by the SHA-256 of its GGUF bytes.
import { readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Store } from '../store/store.ts';
import { sha256File } from './catalog.ts';

export type ModelRef =
  | { kind: 'path'; path: string }
  | { kind: 'ollama'; name: string }
  | { kind: 'hf'; uri: string }
  | { kind: 'url'; url: string };

export function parseModelRef(ref: string): ModelRef {
  if (ref.startsWith('ollama:')) return { kind: 'ollama', name: ref.slice('ollama:'.length) };
  if (ref.startsWith('hf:') || ref.startsWith('huggingface:')) return { kind: 'hf', uri: ref };
  if (/^https?:\/\//.test(ref)) return { kind: 'url', url: ref };
  return { kind: 'path', path: ref };
}

/** The Ollama models root: $OLLAMA_MODELS, else ~/.ollama/models. */
export function ollamaModelsRoot(env: NodeJS.ProcessEnv = process.env): string {
  return env.OLLAMA_MODELS !== undefined && env.OLLAMA_MODELS !== '' ? env.OLLAMA_MODELS : join(homedir(), '.ollama', 'models');
}

/** `qwen2.5:0.5b` → manifests/registry.ollama.ai/library/qwen2.5/0.5b (the tag defaults to latest). */
export function ollamaManifestPath(name: string, root: string): string {
  const colon = name.lastIndexOf(':');
  const hasTag = colon > name.lastIndexOf('/');
  const repo = hasTag ? name.slice(0, colon) : name;
  const tag = hasTag ? name.slice(colon + 1) : 'latest';
  const parts = repo.split('/').filter(Boolean);
  if (parts.length === 0 || tag === '') throw new Error(`invalid Ollama model name ${JSON.stringify(name)}`);
  // Same defaults as ollama's model name parser: host registry.ollama.ai, namespace library.
  const full = parts.length === 1 ? ['registry.ollama.ai', 'library', parts[0]] : parts.length === 2 ? ['registry.ollama.ai', ...parts] : parts;
  return join(root, 'manifests', ...full, tag);
}

export interface OllamaModel {
  path: string;
  /** From the manifest's digest: Ollama names blobs by the SHA-256 of their bytes. */
  sha256: string;
  manifest: string;
}

/** Finds the GGUF blob of an Ollama model (the layer with mediaType application/vnd.ollama.image.model). */
export async function resolveOllamaModel(name: string, opts: { root?: string; env?: NodeJS.ProcessEnv } = {}): Promise<OllamaModel> {
  const root = opts.root ?? ollamaModelsRoot(opts.env);
  const manifest = ollamaManifestPath(name, root);
  let json: { layers?: Array<{ mediaType?: string; digest?: string }> };
  try {
    json = JSON.parse(await readFile(manifest, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new Error(code === 'ENOENT'
      ? `Ollama model ${name} is not in ${root} (no manifest at ${manifest}); run \`ollama pull ${name}\` or set OLLAMA_MODELS`
      : `cannot read Ollama manifest ${manifest}: ${(err as Error).message}`);
  }
  const layer = json.layers?.find((l) => l.mediaType === 'application/vnd.ollama.image.model');
  const m = layer?.digest !== undefined ? /^sha256[:-]([0-9a-f]{64})$/.exec(layer.digest) : null;
  if (m === null) throw new Error(`Ollama manifest ${manifest} has no model layer with a sha256 digest`);
  const path = join(root, 'blobs', `sha256-${m[1]}`);
  try {
    await stat(path);
  } catch {
    throw new Error(`Ollama manifest ${manifest} points to ${path}, which does not exist (incomplete pull?)`);
  }
  return { path, sha256: m[1], manifest };
}

export interface DownloadOptions {
  /** Where downloads go (default ~/.cache/clawmesh/models). */
  dir?: string;
  /** Hugging Face endpoint override (node-llama-cpp also honours HF_ENDPOINT / MODEL_ENDPOINT). */
  huggingFaceEndpoint?: string;
  onProgress?: (downloaded: number, total: number) => void;
  signal?: AbortSignal;
}

/** Downloads (or finds an earlier download of) an hf: URI or URL with node-llama-cpp; returns the local path. */
export async function downloadModel(ref: { kind: 'hf'; uri: string } | { kind: 'url'; url: string }, o: DownloadOptions = {}): Promise<string> {
  const { createModelDownloader } = await import('node-llama-cpp');
  const downloader = await createModelDownloader({
    ...(ref.kind === 'hf' ? { modelUri: ref.uri } : { modelUrl: ref.url }),
    dirPath: o.dir ?? join(homedir(), '.cache', 'clawmesh', 'models'),
    showCliProgress: false,
    skipExisting: true,
    ...(o.huggingFaceEndpoint !== undefined ? { endpoints: { huggingFace: o.huggingFaceEndpoint } } : {}),
    ...(o.onProgress !== undefined ? { onProgress: (s: { downloadedSize: number; totalSize: number }) => o.onProgress!(s.downloadedSize, s.totalSize) } : {}),
  });
  if (downloader.totalFiles > 1) throw new Error(`${ref.kind === 'hf' ? ref.uri : ref.url} is a split GGUF (${downloader.totalFiles} parts); llama.cpp's --rpc split needs one file, merge it with llama-gguf-split --merge`);
  return await downloader.download({ signal: o.signal });
}

export interface ModelPlanInfo {
  architecture: string;
  /** Repeating blocks (layers) the pipeline splits; the output head counts as one more. */
  nLayer: number;
  nEmbd?: number;
  contextLength?: number;
  sizeBytes: number;
  /** Bytes of tensor data per layer (blk.N.*), for sizing shards. */
  layerBytes: number[];
  /** Bytes outside the layers: embeddings (stay on the head) and the output head (on the last worker). */
  otherBytes: number;
}

/** Reads what shard planning needs from the GGUF header with node-llama-cpp (tensor data is not read). */
export async function readModelPlanInfo(path: string): Promise<ModelPlanInfo> {
  const { readGgufFileInfo } = await import('node-llama-cpp');
  const info = await readGgufFileInfo(path, {
    readTensorInfo: true,
    logWarnings: false,
    ignoreKeys: ['tokenizer.ggml.tokens', 'tokenizer.ggml.scores', 'tokenizer.ggml.token_type', 'tokenizer.ggml.merges'],
  });
  const arch = info.architectureMetadata as { block_count?: number; embedding_length?: number; context_length?: number };
  const nLayer = Number(arch.block_count ?? 0);
  if (!Number.isInteger(nLayer) || nLayer <= 0) throw new Error(`${path}: GGUF has no ${String(info.metadata.general?.architecture)}.block_count; cannot split it by layers`);
  const sizeBytes = (await stat(path)).size;
  const tensors = [...(info.fullTensorInfo ?? [])].sort((a, b) => Number(a.fileOffset) - Number(b.fileOffset));
  const layerBytes = new Array<number>(nLayer).fill(0);
  let otherBytes = 0;
  tensors.forEach((t, i) => {
    const end = i + 1 < tensors.length ? Number(tensors[i + 1].fileOffset) : sizeBytes;
    const bytes = end - Number(t.fileOffset);
    const m = /^blk\.(\d+)\./.exec(t.name);
    if (m !== null && Number(m[1]) < nLayer) layerBytes[Number(m[1])] += bytes;
    else otherBytes += bytes;
  });
  return {
    architecture: String(info.metadata.general?.architecture ?? 'unknown'),
    nLayer,
    nEmbd: arch.embedding_length,
    contextLength: arch.context_length,
    sizeBytes,
    layerBytes,
    otherBytes,
  };
}

export interface ResolvedModel extends ModelPlanInfo {
  path: string;
  sha256: string;
  ref: ModelRef;
}

export interface ResolveOptions extends DownloadOptions {
  /** Caches hashes by (path, size, mtime) in model_files, like scanModels. */
  store?: Store;
  ollamaRoot?: string;
  env?: NodeJS.ProcessEnv;
  /** Re-hash Ollama blobs instead of trusting the digest in their name. */
  verifyOllamaDigest?: boolean;
}

async function hashWithCache(path: string, store: Store | undefined, plan: ModelPlanInfo): Promise<string> {
  if (store === undefined) return await sha256File(path);
  const st = await stat(path);
  const row = await store.getModelFile(path);
  if (row !== undefined && row.sizeBytes === st.size && row.mtimeMs === Math.floor(st.mtimeMs)) return row.sha256;
  const sha256 = await sha256File(path);
  await store.putModelFile({ path, sizeBytes: st.size, mtimeMs: Math.floor(st.mtimeMs), sha256, architecture: plan.architecture, layers: plan.nLayer });
  return sha256;
}

/** Turns a model reference into a local GGUF path, its identifying hash and its layer plan. */
export async function resolveModel(ref: string | ModelRef, o: ResolveOptions = {}): Promise<ResolvedModel> {
  const r = typeof ref === 'string' ? parseModelRef(ref) : ref;
  let path: string;
  let knownSha: string | undefined;
  if (r.kind === 'path') path = r.path;
  else if (r.kind === 'ollama') {
    const m = await resolveOllamaModel(r.name, { root: o.ollamaRoot, env: o.env });
    path = m.path;
    if (o.verifyOllamaDigest !== true) knownSha = m.sha256;
  } else path = await downloadModel(r, o);
  const plan = await readModelPlanInfo(path);
  const sha256 = knownSha ?? (await hashWithCache(path, o.store, plan));
  return { ...plan, path, sha256, ref: r };
}
