// The chain engine behind skills/assembly's PipelineRunner: contracts in, an OpenAI-compatible server
// out (runtime/engine/chain-server.ts), computed by the contracted workers as a chain of stages.
//
// A stage that fails is replaced without the agent: first by a spare (another active contract of this
// head for exactly that range), else by opening the same route again (a stage process that crashed on a
// worker that is still there restarts on the next setup); requests in flight are filled again and
// complete. Only when neither works is the fault reported, and the agent renegotiates as with the star.
import { join } from 'node:path';
import { existsSync, mkdirSync } from 'node:fs';
import { peerIdFromString } from '@libp2p/peer-id';
import type { ModelRef, SignedContract } from '../../protocols/index.ts';
import { contractId, type ChainHop } from '../../protocols/index.ts';
import type { MeshNode } from '../../runtime/node/node.ts';
import { ContractBook } from '../../runtime/engine/contracts.ts';
import { ChainEngine, type ChainPath } from '../../runtime/engine/chain.ts';
import { ChainBroken, ChainClient } from '../../runtime/engine/chain-net.ts';
import { ChainServer } from '../../runtime/engine/chain-server.ts';
import { StageProcess } from '../../runtime/engine/stage-proc.ts';
import { ensureStageBinary } from '../../runtime/engine/stage-build.ts';
import { writeEndsGguf } from '../../runtime/engine/stage-gguf.ts';
import { StageFiles, StageWeightsServer } from '../../runtime/engine/stage-weights.ts';
import { PipelineStartError, type Pipeline, type PipelineFault, type PipelineRunner } from '../assembly/pipeline.ts';

/** Refusals that mean the contract itself no longer holds on the worker's side. */
const FINAL_REFUSAL = /no contract [0-9a-f]+|is (broken|ended|lapsed)[^,]*, not active|not active|expired at|covers layers/;

export interface ChainRunnerOptions {
  threads?: number;
  slots?: number;
  ctx?: number;
  batch?: number;
  lanes?: number;
}

/** Where this node keeps a model's file, from its catalog (scanModels / resolveModel). */
async function modelPathOf(node: MeshNode, sha256: string): Promise<string | undefined> {
  return (await node.store.db.get<{ path: string }>('SELECT path FROM model_files WHERE sha256 = ?', [sha256]))?.path;
}

export class ChainPipelineRunner implements PipelineRunner {
  private client: Promise<ChainClient> | undefined;
  private weights: Promise<StageWeightsServer> | undefined;
  private readonly files: StageFiles;
  private readonly known = new Map<string, string>();

  constructor(private readonly node: MeshNode, private readonly opts: ChainRunnerOptions = {}) {
    this.files = new StageFiles(join(node.home, 'stages'));
  }

  /** The fault to report for a broken chain: the hop it names, gone if we lost the worker. */
  fault(route: ChainHop[], err: Error): PipelineFault {
    const hop = err instanceof ChainBroken && err.hop !== undefined ? route[err.hop] : undefined;
    const peer = hop?.peer ?? (err instanceof ChainBroken ? err.peer : undefined);
    const base = { reason: err.message, ...(peer !== undefined ? { worker: peer } : {}), ...(hop !== undefined ? { contractId: hop.contract } : {}) };
    if (peer === undefined) return { ...base, kind: 'other' };
    if (FINAL_REFUSAL.test(err.message)) return { ...base, kind: 'refused' };
    let connected = true;
    try { connected = (this.node.host?.getConnections(peerIdFromString(peer)).length ?? 0) > 0; } catch { connected = false; }
    return { ...base, kind: connected ? 'other' : 'gone' };
  }

  async run(contracts: SignedContract[], model: ModelRef & { path?: string }): Promise<Pipeline> {
    const node = this.node;
    const host = node.host;
    if (host === undefined) throw new Error('start the mesh node before running a pipeline');
    const path = model.path ?? (await modelPathOf(node, model.sha256));
    if (path === undefined) throw new Error(`model ${model.name} (${model.sha256.slice(0, 12)}) is not on this machine; the head needs the GGUF file`);
    this.known.set(model.sha256, path);
    this.client ??= ChainClient.start({ host, key: node.key, peerId: node.peerId, log: node.log.child('chain') });
    this.weights ??= StageWeightsServer.start({ host, store: node.store, peerId: node.peerId, files: this.files, modelPath: (sha) => this.known.get(sha), log: node.log.child('chain') });
    const [client] = await Promise.all([this.client, this.weights]);
    const bin = await ensureStageBinary();
    const cfg = node.config.engine;
    const slots = this.opts.slots ?? cfg?.slots ?? 8;
    const ctx = this.opts.ctx ?? cfg?.ctx ?? 4096;
    const batch = this.opts.batch ?? 256;

    const sorted = [...contracts].sort((a, b) => a.doc.start - b.doc.start);
    const hopOf = async (c: { worker: string; id: string; start: number; end: number }): Promise<ChainHop> =>
      ({ peer: c.worker, contract: c.id, start: c.start, end: c.end, weights: (await this.files.get(path, model.sha256, c.start, c.end)).sha256 });
    let route = await Promise.all(sorted.map((c) => hopOf({ worker: c.doc.worker, id: contractId(c.doc), start: c.doc.start, end: c.doc.end })));

    const endsDir = join(node.home, 'stages');
    mkdirSync(endsDir, { recursive: true });
    const endsPath = join(endsDir, `${model.sha256.slice(0, 16)}-ends.gguf`);
    if (!existsSync(endsPath)) writeEndsGguf(path, endsPath);
    const ends = await StageProcess.start({ bin, model: endsPath, role: 'ends', batch, threads: this.opts.threads ?? cfg?.threads ?? 2 });
    const open = async (r: ChainHop[]) => await client.open({ model: model.sha256, route: r, nEmbd: ends.info.n_embd });

    let first: ChainPath;
    try {
      first = await open(route);
    } catch (err) {
      await ends.stop();
      throw new PipelineStartError(`the chain over ${route.length} stage(s) did not start: ${(err as Error).message}`, this.fault(route, err as Error));
    }
    const listeners: Array<(f: PipelineFault) => void> = [];
    let failed: PipelineFault | undefined;
    const book = new ContractBook(node.store);
    const me = node.peerId.toString();
    const repair = async (_broken: ChainPath, err: Error): Promise<ChainPath> => {
      const at = err instanceof ChainBroken ? err.hop : undefined;
      if (at !== undefined) {
        // A spare: another active contract of ours for exactly that range, with someone else.
        const hop = route[at];
        const spares = (await book.activeFor({ head: me, modelSha256: model.sha256 }))
          .filter((c) => c.layerStart === hop.start && c.layerEnd === hop.end && c.worker !== hop.peer && !route.some((h) => h.contract === c.id));
        for (const s of spares) {
          const next = [...route];
          next[at] = await hopOf({ worker: s.worker, id: s.id, start: s.layerStart, end: s.layerEnd });
          try {
            const p = await open(next);
            node.log.info('chain repaired with a spare', { hop: at, was: hop.peer, now: s.worker });
            route = next;
            return p;
          } catch { /* try the next spare */ }
        }
      }
      try {
        const p = await open(route);
        node.log.info('chain reopened on the same route', { after: err.message });
        return p;
      } catch (again) {
        failed = this.fault(route, again as Error);
        for (const l of listeners.splice(0)) l(failed);
        throw again;
      }
    };
    const draft = cfg?.draft ?? 0;
    const engine = new ChainEngine({ ends, path: first, slots, batch, lanes: Math.min(slots, route.length + 1), ctx, repair, ...(draft > 0 ? { draft: { k: draft } } : {}) });
    const server = new ChainServer({ engine, ends, model: model.name, ctx });
    await server.start();
    node.log.info('chain pipeline up', { model: model.name, stages: route.map((h) => `${h.start}-${h.end - 1}@${h.peer.slice(-6)}`).join(' → '), url: server.url });
    return {
      async complete(prompt, o = {}) {
        const tokens = await ends.tokenize(prompt, true, true);
        const r = await engine.generate({ prompt: tokens, maxTokens: o.maxTokens ?? 128, sampling: { temperature: 0 } });
        return Buffer.concat((await ends.pieces(Int32Array.from(r.tokens))).map((p) => p.bytes)).toString('utf8');
      },
      stop: async () => {
        await server.stop();
        await engine.close();
        await ends.stop();
      },
      url: server.url,
      onFailure(listener) {
        if (failed !== undefined) { listener(failed); return; }
        listeners.push(listener);
      },
    };
  }
}
