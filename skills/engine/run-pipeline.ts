// run_pipeline: the head side of the engine as an agent tool. Given a model reference, it finds the
// contracts this node holds as head for that model, builds the pipeline over them (tunnels,
// llama-server, OpenAI API on loopback) and reports where to send requests, or why it could not.
import { tool } from '@langchain/core/tools';
import { z } from 'zod';
import type { MeshNode } from '../../runtime/node/node.ts';
import { ensureLlamaBuild } from '../../runtime/engine/build.ts';
import { ContractBook, type Contract } from '../../runtime/engine/contracts.ts';
import { PipelineHead, type Assignment, type Pipeline } from '../../runtime/engine/head.ts';
import { resolveModel, type ResolveOptions } from '../../runtime/engine/model-source.ts';

export const RunPipelineInput = z.object({
  action: z.enum(['start', 'stop', 'status']).default('start')
    .describe('start: build the pipeline (replaces a running one); stop: tear it down; status: state, last failure, traffic'),
  model: z.string().max(500).optional()
    .describe('required for start: a GGUF path, ollama:<name>[:tag], hf:<user>/<repo>/<file>.gguf, or an https URL to a GGUF'),
  contractIds: z.array(z.string().max(100)).max(64).optional()
    .describe('contracts to use (default: every active contract this node holds as head for the model); their layer ranges must tile the model, '
      + 'except that layers before the first range run on this machine'),
});
export type RunPipelineInput = z.infer<typeof RunPipelineInput>;

export interface RunPipelineDeps {
  node: MeshNode;
  /** Default: ensureLlamaBuild().llamaServer. */
  llamaServerBin?: string;
  threads?: number;
  ctxSize?: number;
  resolve?: ResolveOptions;
}

const short = (id: string) => `${id.slice(0, 8)}…${id.slice(-6)}`;

/** Turns contracts into assignments; layers below the first contracted one stay on the head. */
export function assignmentsFromContracts(contracts: Contract[]): { assignments: Assignment[]; headLayers: number } {
  const sorted = [...contracts].sort((a, b) => a.layerStart - b.layerStart);
  return {
    assignments: sorted.map((c) => ({ worker: c.worker, start: c.layerStart, end: c.layerEnd, contractId: c.id })),
    headLayers: sorted.length > 0 ? sorted[0].layerStart : 0,
  };
}

export class RunPipeline {
  readonly head = new PipelineHead();
  private modelName = '';
  readonly tool;

  constructor(private readonly deps: RunPipelineDeps) {
    this.tool = tool(async (input: RunPipelineInput) => await this.call(input), {
      name: 'run_pipeline',
      description:
        'Run a model split by layers across the workers this agent has contracts with, and serve it as an OpenAI-compatible API on 127.0.0.1. ' +
        'If a worker dies or stalls the pipeline stops with a failure naming it; start again (with new contracts) to rebuild.',
      schema: RunPipelineInput,
    });
  }

  get pipeline(): Pipeline | undefined {
    return this.head.pipeline;
  }

  async call(input: RunPipelineInput): Promise<string> {
    const action = input.action ?? 'start';
    try {
      if (action === 'stop') {
        const was = this.head.state;
        await this.head.stop();
        return was === 'running' ? 'pipeline stopped' : 'no pipeline was running';
      }
      if (action === 'status') return this.describe();
      if (input.model === undefined) return 'run_pipeline start needs a model reference';
      const model = await resolveModel(input.model, { store: this.deps.node.store, ...this.deps.resolve });
      let contracts = await new ContractBook(this.deps.node.store).activeFor({ head: this.deps.node.peerId.toString(), modelSha256: model.sha256 });
      if (input.contractIds !== undefined) {
        const want = new Set(input.contractIds);
        const missing = input.contractIds.filter((id) => !contracts.some((c) => c.id === id));
        if (missing.length > 0) return `cannot start: no active contract ${missing.join(', ')} for model ${model.sha256.slice(0, 12)} with this node as head`;
        contracts = contracts.filter((c) => want.has(c.id));
      }
      if (contracts.length === 0) return `cannot start: no active contracts for model ${model.sha256.slice(0, 12)} (${input.model}); negotiate workers first`;
      const { assignments, headLayers } = assignmentsFromContracts(contracts);
      const p = await this.head.start({
        node: this.deps.node,
        model: { path: model.path, sha256: model.sha256, nLayer: model.nLayer },
        assignments,
        headLayers,
        llamaServerBin: this.deps.llamaServerBin ?? (await ensureLlamaBuild()).llamaServer,
        threads: this.deps.threads,
        ctxSize: this.deps.ctxSize,
      });
      this.modelName = input.model;
      return `pipeline running for ${input.model} (${model.nLayer} layers${headLayers > 0 ? `, [0,${headLayers}) on this machine` : ''}): ` +
        `OpenAI API at ${p.baseUrl}; workers ${assignments.map((a) => `${short(a.worker)} [${a.start},${a.end})`).join(', ')}`;
    } catch (err) {
      return `run_pipeline ${action} failed: ${(err as Error).message.split('\n')[0]}`;
    }
  }

  private describe(): string {
    const last = this.head.lastFailure;
    const failure = last === undefined ? '' : `; last failure ${new Date(last.at).toISOString()}: ${last.worker !== undefined ? `worker ${short(last.worker)} ` : ''}${last.reason}`;
    const p = this.head.pipeline;
    if (p === undefined) return `no pipeline running (state ${this.head.state}, ready to build)${failure}`;
    const links = p.links().map((l) => `${short(l.worker)} sent ${l.bytesToWorker} B, received ${l.bytesFromWorker} B`).join('; ');
    return `pipeline running for ${this.modelName} at ${p.baseUrl}; ${links}${failure}`;
  }
}
