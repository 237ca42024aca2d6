// The engine behind skills/assembly's PipelineRunner: the agent layer hands over signed contracts and
// a model reference, and gets back something that completes prompts.
import { peerIdFromString } from '@libp2p/peer-id';
import type { ModelRef, SignedContract } from '../../protocols/index.ts';
import { contractId } from '../../protocols/index.ts';
import type { MeshNode } from '../../runtime/node/node.ts';
import { ensureLlamaBuild } from '../../runtime/engine/build.ts';
import { PipelineError, startPipeline, type PipelineFailure } from '../../runtime/engine/head.ts';
import { PipelineStartError, type Pipeline, type PipelineFault, type PipelineRunner } from '../assembly/pipeline.ts';

/** Refusals that mean the contract itself no longer holds on the worker's side (see engine/contracts.ts). */
const FINAL_REFUSAL = /is (broken|ended)[^,]*, not active|no contract [0-9a-f]+|expired at/;

/**
 * How the agent should take an engine failure: a worker we are no longer connected to is gone, a
 * worker that says the contract does not hold has refused it; anything else may pass on a retry.
 */
export function classifyFailure(node: MeshNode, f: PipelineFailure): PipelineFault {
  const base = { reason: f.reason, ...(f.worker !== undefined ? { worker: f.worker } : {}), ...(f.contractId !== undefined ? { contractId: f.contractId } : {}) };
  if (f.worker === undefined) return { ...base, kind: 'other' };
  if (f.reason.startsWith('refused: ') && FINAL_REFUSAL.test(f.reason)) return { ...base, kind: 'refused' };
  let connected = true;
  try {
    connected = (node.host?.getConnections(peerIdFromString(f.worker)).length ?? 0) > 0;
  } catch {
    connected = false;
  }
  return { ...base, kind: connected ? 'other' : 'gone' };
}

export class EnginePipelineRunner implements PipelineRunner {
  constructor(private readonly node: MeshNode, private readonly opts: { llamaServerBin?: string; threads?: number; ctxSize?: number } = {}) {}

  async run(contracts: SignedContract[], model: ModelRef & { path?: string }): Promise<Pipeline> {
    // Without a path, the model must be one this node has catalogued (scanModels / resolveModel).
    const path = model.path ?? (await this.node.store.db.get<{ path: string }>('SELECT path FROM model_files WHERE sha256 = ?', [model.sha256]))?.path;
    if (path === undefined) throw new Error(`model ${model.name} (${model.sha256.slice(0, 12)}) is not on this machine; the head needs the GGUF file`);
    const sorted = [...contracts].sort((a, b) => a.doc.start - b.doc.start);
    let p;
    try {
      p = await startPipeline({
        node: this.node,
        model: { path, sha256: model.sha256, nLayer: model.nLayer },
        assignments: sorted.map((c) => ({ worker: c.doc.worker, start: c.doc.start, end: c.doc.end, contractId: contractId(c.doc) })),
        headLayers: sorted[0]?.doc.start ?? 0,
        llamaServerBin: this.opts.llamaServerBin ?? (await ensureLlamaBuild()).llamaServer,
        // config.json engine.threads: the owner sizes llama-server to the machine.
        threads: this.opts.threads ?? this.node.config.engine?.threads,
        ctxSize: this.opts.ctxSize,
      });
    } catch (err) {
      if (err instanceof PipelineError && err.failure !== undefined) throw new PipelineStartError(err.message, classifyFailure(this.node, err.failure));
      throw err;
    }
    const pipeline = p;
    const node = this.node;
    return {
      async complete(prompt, o = {}) {
        const r = await fetch(`${pipeline.baseUrl}/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ prompt, max_tokens: o.maxTokens ?? 128, temperature: 0 }),
        });
        const body = (await r.json()) as { choices?: Array<{ text: string }>; error?: { message: string } };
        if (!r.ok || body.choices === undefined) throw new Error(`pipeline completion failed (HTTP ${r.status}): ${body.error?.message ?? JSON.stringify(body).slice(0, 300)}`);
        return body.choices[0].text;
      },
      stop: async () => await pipeline.stop(),
      url: pipeline.url,
      onFailure(listener) {
        // A failure between start and this call is reported too, not lost.
        if (pipeline.state === 'failed' && pipeline.failure !== undefined) { listener(classifyFailure(node, pipeline.failure)); return; }
        pipeline.events.once('failed', (f: PipelineFailure) => listener(classifyFailure(node, f)));
      },
    };
  }
}
