/**
 * What the head's pipelines are doing, per model, as the agent last reported it: the board and the
 * status file read it, so that "healthy" means a running pipeline and not only signed contracts.
 */
export interface PipelineState {
  state: 'starting' | 'running' | 'rebuilding' | 'stopped'
  /** Why it is not running (the failure that took it down, or why a start failed). */
  reason?: string
  since: number
}

export class PipelineStates {
  private readonly states = new Map<string, PipelineState>()

  set (modelSha256: string, state: PipelineState['state'], reason?: string, now = Date.now()): void {
    const prev = this.states.get(modelSha256)
    if (prev?.state === state && prev.reason === reason) return
    this.states.set(modelSha256, { state, ...(reason !== undefined ? { reason } : {}), since: prev?.state === state ? prev.since : now })
  }

  get (modelSha256: string): PipelineState | undefined {
    const s = this.states.get(modelSha256)
    return s === undefined ? undefined : { ...s }
  }

  all (): Record<string, PipelineState> {
    return Object.fromEntries([...this.states].map(([k, v]) => [k, { ...v }]))
  }
}
