import type { MeshNode } from '../runtime/node/node.ts'
import { PendingEngineRunner, type PipelineRunner } from '../skills/assembly/pipeline.ts'

export interface EngineHookup {
  /** What a head calls once contracts cover a model. */
  runner: PipelineRunner
  /** Lets contracted heads use this machine's compute; returns how to stop. Undefined without an engine. */
  serve?: () => Promise<() => Promise<void>>
  /** Once serving: the worker's own count of what it computed per contract, and how to stop serving one. */
  meter?: () => ServingMeter | undefined
  real: boolean
}

export interface ServingMeter {
  counted: (contract: string) => { rows: number, lastAt: number } | undefined
  suspend: (contract: string, reason: string) => void
}

/**
 * The engine's side of an agent when skills/engine provides it (EnginePipelineRunner for heads,
 * ServeSlice for workers), else the pending stand-in. This is the one place that looks for the
 * engine, so the agents layer builds and tests without it.
 */
export async function engineFor (node: MeshNode): Promise<EngineHookup> {
  const mods = await engineModules()
  if (mods === undefined) return { runner: new PendingEngineRunner(), real: false }
  const { Runner, ChainRunner, Slice } = mods
  // The chain is the default (issue #14); config engine.mode 'star' keeps llama.cpp's RPC.
  const mode = node.config.engine?.mode ?? 'chain'
  let serving: InstanceType<EngineModules['Slice']> | undefined
  return {
    runner: mode === 'star' ? new Runner(node) : new ChainRunner(node),
    real: true,
    meter: () => serving?.running,
    serve: async () => {
      const slice = new Slice({ node })
      serving = slice
      const status = await slice.call({ action: 'start' })
      if (status.includes('failed')) throw new Error(status)
      return async () => { await slice.call({ action: 'stop' }) }
    }
  }
}

interface EngineModules {
  Runner: new (node: MeshNode) => PipelineRunner
  ChainRunner: new (node: MeshNode) => PipelineRunner
  Slice: new (deps: { node: MeshNode }) => { call: (i: { action: 'start' | 'stop' }) => Promise<string>, running?: ServingMeter }
}

async function engineModules (): Promise<EngineModules | undefined> {
  let runnerMod: { EnginePipelineRunner?: EngineModules['Runner'] }
  let chainMod: { ChainPipelineRunner?: EngineModules['ChainRunner'] }
  let sliceMod: { ServeSlice?: EngineModules['Slice'] }
  try {
    runnerMod = await import('../skills/engine/runner.ts' as string) as typeof runnerMod
    chainMod = await import('../skills/engine/chain-runner.ts' as string) as typeof chainMod
    sliceMod = await import('../skills/engine/serve-slice.ts' as string) as typeof sliceMod
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw err
    return undefined
  }
  const Runner = runnerMod.EnginePipelineRunner
  const ChainRunner = chainMod.ChainPipelineRunner
  const Slice = sliceMod.ServeSlice
  return Runner === undefined || ChainRunner === undefined || Slice === undefined ? undefined : { Runner, ChainRunner, Slice }
}

export interface EngineBuild {
  version: string
  /** True when this call built llama.cpp (the one-time build), false when it found the cached build. */
  builtNow: boolean
  /** How long the build took when it ran (this call or an earlier one), in seconds. */
  buildSeconds: number
  /** How long this call took: the whole build, or the cache check. */
  ms: number
  binDir: string
}

/**
 * Builds llama.cpp now when the engine is present and its build is missing, so that callers can time
 * (and tell the owner about) the one-time build apart from everything else. Undefined without the engine.
 */
export async function ensureEngineBuilt (onProgress?: (line: string) => void): Promise<EngineBuild | undefined> {
  if (await engineModules() === undefined) return undefined
  const { ensureLlamaBuild } = await import('../runtime/engine/build.ts')
  const t0 = Date.now()
  const build = await ensureLlamaBuild(onProgress !== undefined ? { onProgress } : {})
  return {
    version: build.version,
    builtNow: Date.parse(build.builtAt) >= t0,
    buildSeconds: build.buildSeconds,
    ms: Date.now() - t0,
    binDir: build.binDir
  }
}
