import type { Metrics, MultiaddrConnection, Stream } from '@libp2p/interface'

/**
 * What the node's libp2p host opened since it started: protocol streams by protocol, connections by
 * direction. libp2p reports both to its `metrics` component; this is a metrics component that only
 * counts them (every other metric is a no-op), cheap enough to run always. A soak run reads the
 * counters from status.json and turns them into rates: a storm of DHT streams or of dials shows up as a
 * rate that grows instead of an incident nobody can explain.
 */
export interface TrafficCounts {
  /** Protocol streams opened (both directions), by protocol id. */
  streams: Record<string, number>
  /** Connections opened: outbound are our dials, inbound are theirs. */
  connections: { inbound: number, outbound: number }
}

const noopMetric = {
  update () {},
  increment () {},
  decrement () {},
  reset () {},
  observe () {},
  timer () { return () => {} }
}

export class TrafficCounter {
  private readonly streams = new Map<string, number>()
  private readonly connections = { inbound: 0, outbound: 0 }

  counts (): TrafficCounts {
    return { streams: Object.fromEntries(this.streams), connections: { ...this.connections } }
  }

  /** The factory libp2p's `metrics` option takes. */
  metrics (): (components: unknown) => Metrics {
    const streams = this.streams
    const connections = this.connections
    const metrics = {
      trackMultiaddrConnection (maConn: MultiaddrConnection) {
        connections[maConn.direction === 'outbound' ? 'outbound' : 'inbound']++
      },
      trackProtocolStream (stream: Stream) {
        const protocol = stream.protocol ?? 'unknown'
        streams.set(protocol, (streams.get(protocol) ?? 0) + 1)
      },
      registerMetric: () => noopMetric,
      registerMetricGroup: () => noopMetric,
      registerCounter: () => noopMetric,
      registerCounterGroup: () => noopMetric,
      registerHistogram: () => noopMetric,
      registerHistogramGroup: () => noopMetric,
      registerSummary: () => noopMetric,
      registerSummaryGroup: () => noopMetric,
      createTrace: () => undefined,
      traceFunction: <F>(_name: string, fn: F) => fn
    }
    return () => metrics as unknown as Metrics
  }
}
