// serve_slice: the worker side of the engine as an agent tool. The market negotiates and records
// contracts; this tool runs (or stops, or reports on) the service that lets contracted heads use
// this machine's compute through /clawmesh/rpc/1.
import { tool } from '@langchain/core/tools';
import { z } from 'zod';
import type { MeshNode } from '../../runtime/node/node.ts';
import { ensureLlamaBuild } from '../../runtime/engine/build.ts';
import { ContractBook, type Contract } from '../../runtime/engine/contracts.ts';
import { fmtBytes, limitsForLayers, type RpcLimits } from '../../runtime/engine/rpc-guard.ts';
import { SliceWorker } from '../../runtime/engine/worker.ts';
import { StageServer } from '../../runtime/engine/chain-net.ts';
import { ensureStageBinary } from '../../runtime/engine/stage-build.ts';
import { join } from 'node:path';
import type { SignedContract } from '../../protocols/index.ts';
import { NegotiationBook } from '../market/book.ts';

export const ServeSliceInput = z.object({
  action: z.enum(['start', 'stop', 'status']).default('start')
    .describe('start: serve contracted heads (idempotent); stop: stop serving and free the rpc-servers; status: what is being served'),
  threads: z.number().int().min(1).max(256).optional()
    .describe('CPU threads per rpc-server (default: config.json engine.threads, else llama.cpp default); only used by start'),
});
export type ServeSliceInput = z.infer<typeof ServeSliceInput>;

export interface ServeSliceDeps {
  node: MeshNode;
  /** Default: ensureLlamaBuild().rpcServer (builds llama.cpp on first use). */
  rpcServerBin?: string;
  cacheDir?: string;
  /** Bytes per layer for contracts with no call for proposals on record (made by hand or in tests). */
  layerBytes?: number;
}

/**
 * What a contract may make its rpc-server hold: its layers at the call for proposals' layerBytes,
 * which is the figure this agent checked against its lendable memory before it signed.
 */
export async function marketLimits(node: MeshNode, c: Contract, fallbackLayerBytes?: number): Promise<RpcLimits | string> {
  const layers = c.layerEnd - c.layerStart;
  let cfpId: string | undefined;
  try { cfpId = (JSON.parse(c.document) as SignedContract).doc.cfpId; } catch { /* the verifier already refused it */ }
  // The market's tables exist only where the agent's migrations ran; a bare node has none.
  const n = cfpId === undefined ? undefined : await new NegotiationBook(node.store).negotiation(cfpId).catch(() => undefined);
  if (n !== undefined && n.model === c.modelSha256 && n.head === c.head) return limitsForLayers(layers, n.cfp.modelRef.layerBytes, `call for proposals ${cfpId}`);
  if (fallbackLayerBytes !== undefined) return limitsForLayers(layers, fallbackLayerBytes, "serve_slice's configured layer size");
  return `no call for proposals from its head on record (cfp ${cfpId ?? 'unknown'}), so its layer size is unknown`;
}

const short = (id: string) => `${id.slice(0, 8)}…${id.slice(-6)}`;

/** Holds this agent's one SliceWorker; `tool` is what the LangGraph agent calls. */
export class ServeSlice {
  private worker: SliceWorker | undefined;
  /** The chain engine's side: contracted heads send hidden states through /clawmesh/stage/1. */
  private stage: StageServer | undefined;
  readonly tool;

  constructor(private readonly deps: ServeSliceDeps) {
    this.tool = tool(async (input: ServeSliceInput) => await this.call(input), {
      name: 'serve_slice',
      description:
        'Serve layer slices of a model to heads that hold an active contract with this machine (the market makes the contracts). ' +
        'Runs llama.cpp rpc-servers on loopback, reachable only through contract-checked libp2p streams. Returns a one-paragraph status.',
      schema: ServeSliceInput,
    });
  }

  /** What this machine computed per contract, star and chain together (the receipt audit asks), and how to cut a contract off. */
  get running(): { counted: (contract: string) => { rows: number; lastAt: number } | undefined; suspend: (contract: string, reason: string) => void } | undefined {
    const worker = this.worker;
    const stage = this.stage;
    if (worker === undefined && stage === undefined) return undefined;
    return {
      counted: (contract) => {
        const a = worker?.counted(contract);
        const b = stage?.counted(contract);
        if (a === undefined) return b;
        if (b === undefined) return a;
        return { rows: a.rows + b.rows, lastAt: Math.max(a.lastAt, b.lastAt) };
      },
      suspend: (contract, reason) => { worker?.suspend(contract, reason); stage?.suspend(contract, reason); },
    };
  }

  async call(input: ServeSliceInput): Promise<string> {
    const action = input.action ?? 'start';
    try {
      if (action === 'stop') {
        if (this.worker === undefined) return 'not serving slices';
        await this.worker.stop();
        this.worker = undefined;
        await this.stage?.stop();
        this.stage = undefined;
        return 'stopped serving slices; rpc-servers shut down';
      }
      if (action === 'start' && this.worker === undefined) {
        const bin = this.deps.rpcServerBin ?? (await ensureLlamaBuild()).rpcServer;
        this.worker = await SliceWorker.start({ node: this.deps.node, rpcServerBin: bin, threads: input.threads ?? this.deps.node.config.engine?.threads, cacheDir: this.deps.cacheDir,
          limits: (c) => marketLimits(this.deps.node, c, this.deps.layerBytes),
        });
      }
      if (action === 'start' && this.stage === undefined) {
        const node = this.deps.node;
        const cfg = node.config.engine;
        this.stage = await StageServer.start({
          host: node.host!, store: node.store, peerId: node.peerId, bin: await ensureStageBinary(),
          // A worker that holds the whole GGUF cuts its own layers; otherwise the head sends them.
          modelFile: async (sha) => (await node.store.db.get<{ path: string }>('SELECT path FROM model_files WHERE sha256 = ?', [sha]))?.path,
          cacheDir: this.deps.cacheDir !== undefined ? join(this.deps.cacheDir, 'stages') : join(node.home, 'stages'),
          threads: input.threads ?? cfg?.threads, seqs: cfg?.slots ?? 8, ctx: cfg?.ctx ?? 4096, batch: 256,
          log: node.log.child('stage'),
        });
      }
      return await this.describe();
    } catch (err) {
      return `serve_slice ${action} failed: ${(err as Error).message.split('\n')[0]}`;
    }
  }

  private async describe(): Promise<string> {
    const me = this.deps.node.peerId.toString();
    const contracts = await new ContractBook(this.deps.node.store).activeFor({ worker: me });
    const list = contracts.map((c) => `model ${c.modelSha256.slice(0, 12)} layers [${c.layerStart},${c.layerEnd}) for head ${short(c.head)} until ${new Date(c.expiresAt).toISOString()}`);
    if (this.worker === undefined) return `not serving slices; ${contracts.length} active contract(s) as worker${list.length ? `: ${list.join('; ')}` : ''}`;
    const s = this.worker.status();
    const stageLine = this.stage === undefined ? '' : `; chain stages: ${this.stage.meter().map((m) => `contract ${short(m.contract)} computed ${m.tokens} token(s)`).join(', ') || 'none running'}`;
    return `serving slices as ${short(me)} on ${s.protocol}: ${contracts.length} active contract(s)${list.length ? ` (${list.join('; ')})` : ''}; ` +
      `${s.rpcServers.length} rpc-server(s) running, ${s.streams} open stream(s), ${s.refusals} refused attempt(s)` +
      s.meters.map((m) => `; contract ${short(m.contractId)} holds ${fmtBytes(m.allocated)} of its ${fmtBytes(m.capBytes)} cap`).join('') +
      (this.worker.refusals.length ? `; last refusal: ${this.worker.refusals.at(-1)!.reason}` : '') + stageLine;
  }
}
