import type { MeshNode } from '../runtime/node/node.ts'
import type { PipelineRunner } from '../skills/assembly/pipeline.ts'
import { EnginePipelineRunner } from '../skills/engine/runner.ts'
import { ChainPipelineRunner } from '../skills/engine/chain-runner.ts'
import { ServeSlice } from '../skills/engine/serve-slice.ts'
import { ensureLlamaBuild } from '../runtime/engine/build.ts'

export interface EngineHookup {
  /** What a head calls once contracts cover a model. */
  runner: PipelineRunner
  /** Lets contracted heads use this machine's compute; returns how to stop. Undefined without an engine. */
  serve?: () => Promise<() => Promise<void>>
  /** Once serving: the worker's own count of what it computed per contract, and how to stop serving one. */
  meter?: () => ServingMeter | undefined
}

export interface ServingMeter {
  counted: (contract: string) => { rows: number, lastAt: number } | undefined
  suspend: (contract: string, reason: string) => void
}

/**
 * The engine's side of an agent: EnginePipelineRunner for heads, ServeSlice for workers. (This used
 * to look the engine up at run time, hidden from static analysis, for when skills/engine was not
 * there yet; it always is now, and the layering check needs to see the import.)
 */
export async function engineFor (node: MeshNode): Promise<EngineHookup> {
  // The chain is the default (issue #14); config engine.mode 'star' keeps llama.cpp's RPC.
  const mode = node.config.engine?.mode ?? 'chain'
  let serving: ServeSlice | undefined
  return {
    runner: mode === 'star' ? new EnginePipelineRunner(node) : new ChainPipelineRunner(node),
    meter: () => serving?.running,
    serve: async () => {
      const slice = new ServeSlice({ node })
      serving = slice
      const status = await slice.call({ action: 'start' })
      if (status.includes('failed')) throw new Error(status)
      return async () => { await slice.call({ action: 'stop' }) }
    }
  }
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
 * Builds llama.cpp now when its build is missing, so that callers can time (and tell the owner about)
 * the one-time build apart from everything else.
 */
export async function ensureEngineBuilt (onProgress?: (line: string) => void): Promise<EngineBuild | undefined> {
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
