// The head's public face on loopback: a thin reverse proxy in front of llama-server. It exists for
// two reasons llama-server cannot serve: the stall detector must know whether a request is in
// flight (idle RPC links are silent by design), and when a worker dies the client must get an error
// that names it instead of a hung or reset connection.
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

export interface FrontProxy {
  url: string;
  /** Requests being served right now. */
  inFlight(): number;
  /** Start time of the oldest request still in flight (undefined when idle). */
  busySince(): number | undefined;
  /** Ends every in-flight request with this error (502 JSON, or an SSE error event if streaming). */
  failAll(error: { message: string; type: string; worker?: string }): void;
  close(): Promise<void>;
}

export async function startFrontProxy(upstream: string, onRequestStart?: () => void): Promise<FrontProxy> {
  const target = new URL(upstream);
  const live = new Map<ServerResponse, { started: number; sse: boolean; abort: () => void }>();

  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    onRequestStart?.();
    let upRes: IncomingMessage | undefined;
    const up = request(
      { host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers },
      (r) => {
        upRes = r;
        const entry = live.get(res);
        if (entry !== undefined) entry.sse = String(r.headers['content-type'] ?? '').includes('text/event-stream');
        res.writeHead(r.statusCode ?? 502, r.headers);
        r.pipe(res);
        r.on('error', () => { if (live.has(res)) res.destroy(); }); // after failAll, res is already ended with the error
      },
    );
    live.set(res, { started: Date.now(), sse: false, abort: () => { upRes?.unpipe(res); up.destroy(); } });
    res.on('close', () => { live.delete(res); up.destroy(); });
    up.on('error', (err) => {
      if (!live.has(res)) return;
      live.delete(res);
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: `llama-server unreachable: ${err.message}`, type: 'upstream_error' } }));
      } else res.destroy();
    });
    req.pipe(up);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => { server.off('error', reject); resolve(); });
  });
  const addr = server.address();
  if (addr === null || typeof addr !== 'object') throw new Error('front proxy has no address');
  return {
    url: `http://127.0.0.1:${addr.port}`,
    inFlight: () => live.size,
    busySince: () => (live.size === 0 ? undefined : Math.min(...[...live.values()].map((l) => l.started))),
    failAll(error) {
      for (const [res, l] of live) {
        live.delete(res);
        l.abort();
        if (!res.headersSent) {
          res.writeHead(502, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ error }));
        } else if (l.sse) {
          res.end(`data: ${JSON.stringify({ error })}\n\n`);
        } else {
          res.destroy(new Error(error.message));
        }
      }
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
