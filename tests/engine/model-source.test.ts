// Model references resolve to a local GGUF, its SHA-256 and a layer plan: a plain path, the owner's
// Ollama store (a fake one here, same layout), Hugging Face through node-llama-cpp's downloader
// pointed at a loopback server, and a plain URL.
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Store } from '../../runtime/store/store.js';
import { sha256File } from '../../runtime/engine/catalog.js';
import { TEST_MODEL_PRESETS, generateTestModel } from '../../runtime/engine/test-model.js';
import { ollamaManifestPath, parseModelRef, readModelPlanInfo, resolveModel } from '../../runtime/engine/model-source.js';

let dir: string;
let model: string;
let sha: string;
let server: Server;
let base: string;
const requests: string[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'clawmesh-model-source-'));
  model = join(dir, 'tiny.gguf');
  await generateTestModel({ path: model, seed: 99, ...TEST_MODEL_PRESETS.tiny });
  sha = await sha256File(model);
  const size = (await stat(model)).size;
  // A minimal Hugging Face-like file server: HEAD, GET and byte ranges, as the downloader uses them.
  server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    const path = (req.url ?? '').split('?')[0];
    if (path !== '/clawmesh/tiny-GGUF/resolve/main/tiny.gguf' && path !== '/files/tiny.gguf') { res.writeHead(404).end(); return; }
    const range = /bytes=(\d+)-(\d*)/.exec(req.headers.range ?? '');
    const start = range ? Number(range[1]) : 0;
    const end = range && range[2] ? Number(range[2]) : size - 1;
    res.writeHead(range ? 206 : 200, {
      'content-type': 'application/octet-stream', 'content-length': String(end - start + 1), 'accept-ranges': 'bytes',
      ...(range ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
    });
    if (req.method === 'HEAD') res.end();
    else createReadStream(model, { start, end }).pipe(res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
}, 60_000);

afterAll(async () => {
  server?.close();
  await rm(dir, { recursive: true, force: true });
});

describe('model sources', () => {
  it('parses references', () => {
    expect(parseModelRef('/m/x.gguf')).toEqual({ kind: 'path', path: '/m/x.gguf' });
    expect(parseModelRef('ollama:qwen2.5:0.5b')).toEqual({ kind: 'ollama', name: 'qwen2.5:0.5b' });
    expect(parseModelRef('hf:u/r/f.gguf')).toEqual({ kind: 'hf', uri: 'hf:u/r/f.gguf' });
    expect(parseModelRef('https://x/y.gguf')).toEqual({ kind: 'url', url: 'https://x/y.gguf' });
    expect(ollamaManifestPath('qwen2.5:0.5b', '/r')).toBe('/r/manifests/registry.ollama.ai/library/qwen2.5/0.5b');
    expect(ollamaManifestPath('llama3.2', '/r')).toBe('/r/manifests/registry.ollama.ai/library/llama3.2/latest');
    expect(ollamaManifestPath('someone/model:q4', '/r')).toBe('/r/manifests/registry.ollama.ai/someone/model/q4');
    expect(ollamaManifestPath('host.example:5000/ns/model:v1', '/r')).toBe('/r/manifests/host.example:5000/ns/model/v1');
  });

  it('reads the layer plan from the GGUF header with node-llama-cpp', async () => {
    const plan = await readModelPlanInfo(model);
    expect(plan).toMatchObject({ architecture: 'llama', nLayer: TEST_MODEL_PRESETS.tiny.nLayer, nEmbd: TEST_MODEL_PRESETS.tiny.nEmbd });
    expect(new Set(plan.layerBytes).size).toBe(1); // identical layers, identical sizes
    const { nEmbd, nFf, nHead, nHeadKv } = TEST_MODEL_PRESETS.tiny;
    const kv = (nEmbd / nHead) * nHeadKv;
    // f16 matrices (q, k, v, o, gate, up, down) plus two f32 norms, up to alignment padding.
    const expected = 2 * (2 * nEmbd * nEmbd + 2 * nEmbd * kv + 3 * nEmbd * nFf) + 2 * 4 * nEmbd;
    expect(plan.layerBytes[0]).toBeGreaterThanOrEqual(expected);
    expect(plan.layerBytes[0]).toBeLessThan(expected + 9 * 32);
    expect(plan.layerBytes.reduce((a, b) => a + b, 0) + plan.otherBytes).toBeLessThanOrEqual(plan.sizeBytes);
  });

  it('resolves an Ollama model to its blob in place, named by its SHA-256', async () => {
    const root = join(dir, 'ollama');
    await mkdir(join(root, 'blobs'), { recursive: true });
    const blob = join(root, 'blobs', `sha256-${sha}`);
    await copyFile(model, blob); // the fake store's content; resolution itself copies nothing
    const manifestDir = join(root, 'manifests', 'registry.ollama.ai', 'library', 'tinytest');
    await mkdir(manifestDir, { recursive: true });
    await writeFile(join(manifestDir, 'q8'), JSON.stringify({
      schemaVersion: 2,
      layers: [
        { mediaType: 'application/vnd.ollama.image.template', digest: `sha256:${'1'.repeat(64)}`, size: 10 },
        { mediaType: 'application/vnd.ollama.image.model', digest: `sha256:${sha}`, size: (await stat(model)).size },
      ],
    }));
    const r = await resolveModel('ollama:tinytest:q8', { env: { OLLAMA_MODELS: root } });
    expect(r.path).toBe(blob);
    expect(r.sha256).toBe(sha);
    expect(r.nLayer).toBe(TEST_MODEL_PRESETS.tiny.nLayer);
    const verified = await resolveModel('ollama:tinytest:q8', { env: { OLLAMA_MODELS: root }, verifyOllamaDigest: true });
    expect(verified.sha256).toBe(sha);
    await expect(resolveModel('ollama:absent', { env: { OLLAMA_MODELS: root } })).rejects.toThrow(/ollama pull absent/);
  });

  it('downloads hf: URIs through node-llama-cpp from a custom endpoint, and plain URLs', async () => {
    const store = await Store.open(join(dir, 'store.db'));
    try {
      const r = await resolveModel('hf:clawmesh/tiny-GGUF/tiny.gguf', { huggingFaceEndpoint: base, dir: join(dir, 'dl'), store });
      expect(r.sha256).toBe(sha);
      expect(r.path.startsWith(join(dir, 'dl'))).toBe(true);
      expect(requests.some((q) => q.startsWith('GET /clawmesh/tiny-GGUF/resolve/main/tiny.gguf'))).toBe(true);
      // The hash is cached by (path, size, mtime), as the catalog does.
      expect((await store.getModelFile(r.path))?.sha256).toBe(sha);
      const u = await resolveModel(`${base}files/tiny.gguf`, { dir: join(dir, 'dl-url') });
      expect(u.sha256).toBe(sha);
    } finally {
      await store.close();
    }
  }, 60_000);
});
