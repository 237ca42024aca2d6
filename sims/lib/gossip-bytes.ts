import type { MetricsRegister } from '@libp2p/gossipsub/metrics'

/**
 * libp2p v3 no longer counts bytes per protocol, but gossipsub keeps RPC byte totals when handed a
 * metrics register. This register ignores every metric except those two; every other method call on a
 * metric is a no-op that returns another no-op (histogram timers call what they get back).
 */
export function byteCountingRegister (): { register: MetricsRegister, snapshot: () => { sent: number, recv: number } } {
  const totals = { sent: 0, recv: 0 }
  const noop: (...args: unknown[]) => unknown = () => noop
  const inert = new Proxy({}, { get: () => noop })
  const counting = (field: 'sent' | 'recv'): unknown => new Proxy({}, {
    get: (_t, prop) => prop === 'inc'
      ? (a?: unknown, b?: unknown) => { totals[field] += typeof a === 'number' ? a : typeof b === 'number' ? b : 1 }
      : noop
  })
  const metric = (config: { name: string }): unknown => {
    if (config.name === 'gossipsub_rpc_sent_bytes_total') return counting('sent')
    if (config.name === 'gossipsub_rpc_recv_bytes_total') return counting('recv')
    return inert
  }
  const register = { gauge: metric, histogram: metric, avgMinMax: metric } as unknown as MetricsRegister
  return { register, snapshot: () => ({ ...totals }) }
}
