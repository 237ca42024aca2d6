import type { MeshNode } from '../runtime/node/node.ts'
import { PendingEngineRunner, type PipelineRunner } from '../skills/assembly/pipeline.ts'

export interface EngineHookup {
  /** What a head calls once contracts cover a model. */
  runner: PipelineRunner
  /** Lets contracted heads use this machine's compute; returns how to stop. Undefined without an engine. */
  serve?: () => Promise<() => Promise<void>>
  real: boolean
}

/**
 * The engine's side of an agent when skills/engine provides it (EnginePipelineRunner for heads,
 * ServeSlice for workers), else the pending stand-in. This is the one place that looks for the
 * engine, so the agents layer builds and tests without it.
 */
export async function engineFor (node: MeshNode): Promise<EngineHookup> {
  let runnerMod: { EnginePipelineRunner?: new (node: MeshNode) => PipelineRunner }
  let sliceMod: { ServeSlice?: new (deps: { node: MeshNode }) => { call: (i: { action: 'start' | 'stop' }) => Promise<string> } }
  try {
    runnerMod = await import('../skills/engine/runner.ts' as string) as typeof runnerMod
    sliceMod = await import('../skills/engine/serve-slice.ts' as string) as typeof sliceMod
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err
    return { runner: new PendingEngineRunner(), real: false }
  }
  const Runner = runnerMod.EnginePipelineRunner
  const Slice = sliceMod.ServeSlice
  if (Runner === undefined || Slice === undefined) return { runner: new PendingEngineRunner(), real: false }
  return {
    runner: new Runner(node),
    real: true,
    serve: async () => {
      const slice = new Slice({ node })
      const status = await slice.call({ action: 'start' })
      if (status.includes('failed')) throw new Error(status)
      return async () => { await slice.call({ action: 'stop' }) }
    }
  }
}
