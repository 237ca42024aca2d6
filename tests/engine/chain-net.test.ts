// The chain engine over libp2p on loopback: real nodes, real contracts, stage to stage directly.
// Greedy tokens through 2, 3 and 4 stages must equal one process's; a stage refuses a head without
// a contract, a contract for other layers and a sender that is not the hop before it; a stage
// killed mid-generation is replaced and the request completes with the same tokens.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { multiaddr } from '@multiformats/multiaddr';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MeshNode } from '../../runtime/node/node.js';
import { TEST_MODEL_PRESETS, generateTestModel } from '../../runtime/engine/test-model.js';
import { sha256File } from '../../runtime/engine/catalog.js';
import { insertContractRow, writeTestContract } from '../../runtime/engine/contracts.js';
import { writeEndsGguf } from '../../runtime/engine/stage-gguf.js';
import { StageProcess } from '../../runtime/engine/stage-proc.js';
import { ChainEngine } from '../../runtime/engine/chain.js';
import { ChainBroken, ChainClient, StageServer } from '../../runtime/engine/chain-net.js';
import { ensureStageBinary } from '../../runtime/engine/stage-build.js';
import { StageFiles, StageWeightsServer, fetchStageWeights } from '../../runtime/engine/stage-weights.js';
import { existsSync } from 'node:fs';
import type { ChainHop } from '../../protocols/chain.js';
import { startMesh, stopAll } from '../helpers/mesh.js';
import { nodeGreedy, nodeLlama } from './helpers.js';

const N = 16;
const PROMPT = 'Once upon a time';
const preset = TEST_MODEL_PRESETS.small; // 8 layers, n_embd 256
const dir = mkdtempSync(join(tmpdir(), 'clawmesh-chain-net-'));
const modelPath = join(dir, 'small.gguf');
let sha = '';
let nodes: MeshNode[] = [];
let head: MeshNode;
let client: ChainClient;
let weights: StageWeightsServer;
const files = new StageFiles(join(dir, 'head-stages'));
let ends: StageProcess;
const servers: StageServer[] = [];
let ref: number[] = [];
let prompt: Int32Array;

beforeAll(async () => {
  await generateTestModel({ path: modelPath, seed: 4321, ...preset });
  sha = await sha256File(modelPath);
  const bin = await ensureStageBinary();
  nodes = await startMesh(join(dir, 'mesh'), 6);
  head = nodes[0];
  // Everyone can dial everyone: on a real mesh the peer store learns addresses through identify and the DHT.
  for (const a of nodes) for (const b of nodes) if (a !== b) await a.host!.peerStore.merge(b.peerId, { multiaddrs: b.multiaddrs().map((m) => multiaddr(m)) });
  for (const w of nodes.slice(1)) {
    servers.push(await StageServer.start({
      // Worker 5 holds no copy of the model: the head sends it its layers.
      host: w.host!, store: w.store, peerId: w.peerId, bin, modelFile: (s) => (s === sha && w !== nodes[5] ? modelPath : undefined),
      cacheDir: join(dir, `stages-${w.peerId.toString().slice(-6)}`), threads: 1, seqs: 4, batch: 64, ctx: 512, log: w.log.child('stage'),
    }));
  }
  client = await ChainClient.start({ host: head.host!, key: head.key, peerId: head.peerId });
  weights = await StageWeightsServer.start({ host: head.host!, store: head.store, peerId: head.peerId, files, modelPath: (s) => (s === sha ? modelPath : undefined) });
  writeEndsGguf(modelPath, join(dir, 'ends.gguf'));
  ends = await StageProcess.start({ bin, model: join(dir, 'ends.gguf'), role: 'ends', batch: 64, threads: 1 });
  prompt = await ends.tokenize(PROMPT, true, false);
  const llama = await nodeLlama();
  const model = await llama.loadModel({ modelPath });
  ref = (await nodeGreedy(model, PROMPT, N)).tokens.map(Number);
  await model.dispose();
}, 45 * 60_000);

afterAll(async () => {
  await client?.stop();
  await weights?.stop();
  await ends?.stop();
  await Promise.allSettled(servers.map((s) => s.stop()));
  await stopAll(nodes);
  rmSync(dir, { recursive: true, force: true });
});

/** Contracts as the market leaves them in each worker's database, and the route they make. */
async function hire(ranges: Array<[number, number, number]>): Promise<ChainHop[]> {
  return await Promise.all(ranges.map(async ([w, start, end]) => {
    const node = nodes[w];
    const c = await writeTestContract(node.store, { modelSha256: sha, headKey: head.key, workerKey: node.key, layerStart: start, layerEnd: end });
    await insertContractRow(head.store, c); // the market leaves the contract in both parties' databases
    return { peer: node.peerId.toString(), contract: c.id, start, end };
  }));
}

const greedy = { temperature: 0 };

describe('chain over libp2p', () => {
  for (const ranges of [[[1, 0, 3], [2, 3, 8]], [[1, 0, 2], [2, 2, 5], [3, 5, 8]], [[1, 0, 2], [2, 2, 4], [3, 4, 6], [4, 6, 8]]] as Array<Array<[number, number, number]>>) {
    it(`${ranges.length} stages give one process's greedy tokens; each stage counts its own tokens`, async () => {
      const route = await hire(ranges);
      const path = await client.open({ model: sha, route, nEmbd: ends.info.n_embd });
      const engine = new ChainEngine({ ends, path, slots: 4, batch: 64 });
      const res = await engine.generate({ prompt, maxTokens: N, sampling: greedy });
      expect(res.tokens).toEqual(ref);
      // Each stage metered every position it computed: the prompt once and each generated token but the last.
      for (const hop of route) {
        const m = servers.flatMap((s) => s.meter()).find((x) => x.contract === hop.contract);
        expect(m?.tokens).toBe(prompt.length + N - 1);
      }
      await engine.close();
    }, 120_000);
  }

  it('speculative decoding over libp2p: rejected drafts are dropped on every stage, output is plain greedy decoding\'s', async () => {
    const route = await hire([[1, 0, 4], [2, 4, 8]]);
    const path = await client.open({ model: sha, route, nEmbd: ends.info.n_embd });
    const plain = new ChainEngine({ ends, path, slots: 4, batch: 64 });
    const spec = new ChainEngine({ ends, path, slots: 4, batch: 64, draft: { k: 4 } });
    for (const sampling of [greedy, { temperature: 0, logitBias: [[ref[3], 8]] as Array<[number, number]> }]) {
      const want = (await plain.generate({ prompt, maxTokens: 32, sampling })).tokens;
      expect((await spec.generate({ prompt, maxTokens: 32, sampling })).tokens).toEqual(want);
    }
    expect(spec.stats.drafted).toBeGreaterThan(spec.stats.accepted);
    await spec.close();
  }, 120_000);

  it('a worker without the model receives its layers from the head, by content hash, under its contract only', async () => {
    const route = await hire([[1, 0, 4], [5, 4, 8]]);
    const f = await files.get(modelPath, sha, 4, 8);
    route[1] = { ...route[1], weights: f.sha256 };
    const path = await client.open({ model: sha, route, nEmbd: ends.info.n_embd });
    const engine = new ChainEngine({ ends, path, slots: 4, batch: 64 });
    expect((await engine.generate({ prompt, maxTokens: N, sampling: greedy })).tokens).toEqual(ref);
    await engine.close();
    expect(existsSync(join(dir, `stages-${nodes[5].peerId.toString().slice(-6)}`, `${f.sha256}.gguf`))).toBe(true);
    // Another worker asking for those layers under a contract that is not its own gets nothing.
    await expect(fetchStageWeights(nodes[3].host!, head.peerId, { model: sha, start: 4, end: 8, contract: route[1].contract, sha256: f.sha256 }, join(dir, 'thief')))
      .rejects.toThrow(/refused the weights: contract \w+ is not yours/);
  }, 120_000);

  it('a stage refuses a head without a contract, a contract for other layers, and a sender off the route', async () => {
    const [good] = await hire([[1, 0, 4]]);
    const [tail] = await hire([[2, 4, 8]]);
    const open = (route: ChainHop[]) => client.open({ model: sha, route, nEmbd: ends.info.n_embd });
    await expect(open([{ ...good, contract: 'f'.repeat(32) }, tail])).rejects.toThrow(/no contract f{32}/);
    await expect(open([{ ...good, end: 3 }, { ...tail, start: 3 }])).rejects.toThrow(/covers layers \[0, 4\), the ticket asks \[0, 3\)/);
    // Worker 3 holds no contract for layers 4-8 with this head: named as the hop that refused.
    const err = await open([good, { ...tail, peer: nodes[3].peerId.toString() }]).catch((e: unknown) => e as ChainBroken);
    expect(err).toBeInstanceOf(ChainBroken);
    expect((err as ChainBroken).hop).toBe(1);
    // A stage only takes hidden states from the hop before it: a bystander replaying the head's ticket is refused.
    const path = await open([good, tail]);
    const bystander = await ChainClient.start({ host: nodes[5].host!, key: nodes[5].key, peerId: nodes[5].peerId });
    const stolen = await (bystander as unknown as { o: { host: MeshNode['host'] } }).o.host!.dialProtocol(nodes[2].peerId, '/clawmesh/stage/1');
    const refused = new Promise<string>((resolve) => stolen.addEventListener('message', (e) => resolve(Buffer.from(e.data instanceof Uint8Array ? e.data : e.data.subarray()).subarray(5).toString())));
    const body = Buffer.from(JSON.stringify({ ticket: path.ticket, index: 1 }));
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt32BE(1 + body.length, 0);
    frame[4] = 1;
    body.copy(frame, 5);
    stolen.send(frame);
    expect(await refused).toMatch(/takes hidden states from .*, not from/);
    // A stranger cannot make a stage buffer a big frame before its route is checked: the stream is cut.
    const big = await nodes[5].host!.dialProtocol(nodes[1].peerId, '/clawmesh/stage/1');
    const cut = new Promise<boolean>((resolve) => big.addEventListener('close', () => resolve(true)));
    const header = Buffer.alloc(5);
    header.writeUInt32BE(1 << 20, 0);
    big.send(header);
    // Cut at once, long before the 10 s a stage waits for a setup (which would also end the stream).
    expect(await Promise.race([cut, new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 5000))])).toBe(true);
    await bystander.stop();
    await path.close();
  }, 60_000);

  it('kill -9 of a stage mid-generation: the head re-prefills on a spare and the request completes with the same tokens', async () => {
    const route = await hire([[1, 0, 5], [2, 5, 8]]);
    const [spare] = await hire([[4, 5, 8]]);
    const first = await client.open({ model: sha, route, nEmbd: ends.info.n_embd });
    const engine = new ChainEngine({
      ends, path: first, slots: 4, batch: 64,
      repair: async (_failed, err) => {
        expect((err as ChainBroken).hop).toBe(1);
        return await client.open({ model: sha, route: [route[0], spare], nEmbd: ends.info.n_embd });
      },
    });
    let killed = false;
    const res = await engine.generate({
      prompt, maxTokens: N, sampling: greedy,
      onToken: () => {
        if (killed) return;
        killed = true;
        void servers[1].processFor(route[1].contract).then((p) => p?.child.kill('SIGKILL'));
      },
    });
    expect(res.repairs).toBe(1);
    expect(res.tokens).toEqual(ref);
    await engine.close();
    // The contract ends: the worker's stage process goes, and a new chain under it is refused.
    await nodes[1].store.db.run("UPDATE contracts SET status = 'ended' WHERE id = ?", [route[0].contract]);
    expect(await servers[0].sweep()).toContain(route[0].contract);
    expect(await servers[0].processFor(route[0].contract)).toBeUndefined();
    await expect(client.open({ model: sha, route: [route[0], spare], nEmbd: ends.info.n_embd })).rejects.toThrow(/is ended, not active/);
  }, 120_000);
});
