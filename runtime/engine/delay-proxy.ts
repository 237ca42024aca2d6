// A loopback TCP proxy that counts bytes and can hold every chunk D ms each way and cap each
// direction's bandwidth: home-link emulation for direct-TCP runs (this kernel has no netem qdisc).
import { connect, createServer, type Server } from 'node:net';
import { socketEndpoint, splice, type LinkShape, type Splice } from './splice.js';

export interface DelayProxyOptions {
  /** One-way delay, each way. */
  delayMs?: number;
  /** Cap per direction in Mbit/s (each connection paced on its own, as each RPC link is its own path). */
  bandwidthMbit?: number;
}

export interface DelayProxy {
  /** host:port to give clients instead of the target. */
  endpoint: string;
  bytesToTarget: number;
  bytesFromTarget: number;
  /** Reshapes the link for open and future connections (bytes in flight keep their order). */
  setShape(shape: DelayProxyOptions): void;
  close(): Promise<void>;
}

export async function startDelayProxy(target: string, shape: number | DelayProxyOptions = {}): Promise<DelayProxy> {
  let current: LinkShape = typeof shape === 'number' ? { delayMs: shape } : { ...shape };
  const [th, tp] = target.split(':');
  const splices = new Set<Splice>();
  const proxy = {
    endpoint: '', bytesToTarget: 0, bytesFromTarget: 0, close: async () => {},
    setShape: (next) => {
      current = { ...next };
      for (const s of splices) s.setShape(current);
    },
  } as DelayProxy;
  const server: Server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
    client.setNoDelay(true);
    const up = connect({ host: th, port: Number(tp), allowHalfOpen: true });
    up.setNoDelay(true);
    up.once('error', () => client.destroy());
    up.once('connect', () => {
      const s = splice(socketEndpoint(client, 'client'), socketEndpoint(up, `target ${target}`), {
        ...current,
        onAtoB: (n) => { proxy.bytesToTarget += n; },
        onBtoA: (n) => { proxy.bytesFromTarget += n; },
      });
      splices.add(s);
      void s.done.then(() => splices.delete(s));
      client.resume();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve(); });
  });
  const addr = server.address();
  if (addr === null || typeof addr !== 'object') throw new Error('delay proxy has no address');
  proxy.endpoint = `127.0.0.1:${addr.port}`;
  proxy.close = async () => {
    for (const s of splices) s.abort(new Error('proxy closed'));
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return proxy;
}
