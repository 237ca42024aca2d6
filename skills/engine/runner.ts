// The engine behind skills/assembly's PipelineRunner: the agent layer hands over signed contracts and
// a model reference, and gets back something that completes prompts.
import type { ModelRef, SignedContract } from '../../protocols/index.ts';
import { contractId } from '../../protocols/index.ts';
import type { MeshNode } from '../../runtime/node/node.ts';
import { ensureLlamaBuild } from '../../runtime/engine/build.ts';
import { startPipeline } from '../../runtime/engine/head.ts';
import type { Pipeline, PipelineRunner } from '../assembly/pipeline.ts';

export class EnginePipelineRunner implements PipelineRunner {
  constructor(private readonly node: MeshNode, private readonly opts: { llamaServerBin?: string; threads?: number; ctxSize?: number } = {}) {}

  async run(contracts: SignedContract[], model: ModelRef & { path?: string }): Promise<Pipeline> {
    // Without a path, the model must be one this node has catalogued (scanModels / resolveModel).
    const path = model.path ?? (await this.node.store.db.get<{ path: string }>('SELECT path FROM model_files WHERE sha256 = ?', [model.sha256]))?.path;
    if (path === undefined) throw new Error(`model ${model.name} (${model.sha256.slice(0, 12)}) is not on this machine; the head needs the GGUF file`);
    const sorted = [...contracts].sort((a, b) => a.doc.start - b.doc.start);
    const p = await startPipeline({
      node: this.node,
      model: { path, sha256: model.sha256, nLayer: model.nLayer },
      assignments: sorted.map((c) => ({ worker: c.doc.worker, start: c.doc.start, end: c.doc.end, contractId: contractId(c.doc) })),
      headLayers: sorted[0]?.doc.start ?? 0,
      llamaServerBin: this.opts.llamaServerBin ?? (await ensureLlamaBuild()).llamaServer,
      // config.json engine.threads: the owner sizes llama-server to the machine.
      threads: this.opts.threads ?? this.node.config.engine?.threads,
      ctxSize: this.opts.ctxSize,
    });
    return {
      async complete(prompt, o = {}) {
        const r = await fetch(`${p.baseUrl}/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ prompt, max_tokens: o.maxTokens ?? 128, temperature: 0 }),
        });
        const body = (await r.json()) as { choices?: Array<{ text: string }>; error?: { message: string } };
        if (!r.ok || body.choices === undefined) throw new Error(`pipeline completion failed (HTTP ${r.status}): ${body.error?.message ?? JSON.stringify(body).slice(0, 300)}`);
        return body.choices[0].text;
      },
      stop: async () => await p.stop(),
      url: p.url,
    };
  }
}
