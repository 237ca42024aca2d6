import type { ModelRef, SignedContract } from '../../protocols/index.ts'

/** What went wrong with a pipeline, naming the contract (and its worker) when one is at fault. */
export interface PipelineFault {
  reason: string
  worker?: string
  contractId?: string
  /**
   * 'gone': the worker cannot be reached at all; 'refused': it answered that the contract does not hold
   * (ended, broken, unknown, expired) — both mean that contract cannot serve again. 'other': anything
   * else (a slow start, a crash of the head's own server), worth retrying as it is.
   */
  kind: 'gone' | 'refused' | 'other'
}

/** A model assembled from contracted workers, ready to answer. */
export interface Pipeline {
  complete (prompt: string, opts?: { maxTokens?: number }): Promise<string>
  stop (): Promise<void>
  /** Root URL (without /v1) of the pipeline's OpenAI-compatible server on 127.0.0.1, when it has one: the paid gateway fronts it. */
  url?: string
  /** Called once if the running pipeline fails (a worker died, hung or left); it is torn down by then. */
  onFailure?: (listener: (fault: PipelineFault) => void) => void
}

/** A pipeline that could not start, with the fault when one contract is to blame. */
export class PipelineStartError extends Error {
  constructor (message: string, readonly fault?: PipelineFault) {
    super(message)
    this.name = 'PipelineStartError'
  }
}

/**
 * What a head's agent calls once its contracts cover every layer of a model. The engine (layer-split
 * llama.cpp over libp2p tunnels) implements it; the agent layer only needs this much, so that it can
 * be tested with a double and the engine can change underneath.
 */
export interface PipelineRunner {
  /** Starts the pipeline over these contracts (sorted by layer, covering [0, nLayer) exactly). */
  run (contracts: SignedContract[], model: ModelRef & { path?: string }): Promise<Pipeline>
}
