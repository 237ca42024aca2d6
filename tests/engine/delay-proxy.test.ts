// The link-emulation proxy's bandwidth cap: each direction is paced to the cap (token bucket), the
// bytes arrive intact, and the same transfer without a cap runs much faster on this machine, so the
// cap, not the box, is what the benchmark's "20 Mbit/s uplink" rows measure.
import { createHash, randomBytes } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDelayProxy } from '../../runtime/engine/delay-proxy.js';
import { DEFAULT_BURST_BYTES, PACE_SLICE } from '../../runtime/engine/splice.js';

const PAYLOAD = randomBytes(1 << 20);
const CAP_MBIT = 8; // 1 MB/s: about a second per direction

interface Arrivals { start: number; marks: Array<{ t: number; bytes: number }>; hash: string }

/** Where the target writes PAYLOAD back on connect and reports what it received. */
let target: Server;
let targetEnd = '';
let targetGot: Promise<Arrivals>;
let resolveTargetGot: (a: Arrivals) => void;
const downStarts: number[] = [];
let upStart = 0;

beforeAll(async () => {
  target = createServer({ allowHalfOpen: true }, (sock: Socket) => {
    const marks: Arrivals['marks'] = [];
    const h = createHash('sha256');
    let bytes = 0;
    sock.on('data', (b: Buffer) => {
      bytes += b.byteLength;
      h.update(b);
      marks.push({ t: performance.now(), bytes });
    });
    sock.on('end', () => { resolveTargetGot({ start: 0, marks, hash: h.digest('hex') }); sock.end(); });
    downStarts.push(performance.now());
    sock.write(PAYLOAD);
  });
  await new Promise<void>((resolve) => target.listen(0, '127.0.0.1', resolve));
  const a = target.address();
  targetEnd = `127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
});

afterAll(async () => {
  await new Promise<void>((resolve) => target.close(() => resolve()));
});

/** Sends PAYLOAD up through the proxy while the target sends PAYLOAD down; records both directions. */
async function transfer(endpoint: string): Promise<{ up: Arrivals; down: Arrivals }> {
  targetGot = new Promise((r) => { resolveTargetGot = r; });
  const [h, p] = endpoint.split(':');
  const sock = await new Promise<Socket>((resolve, reject) => {
    const s = connect({ host: h, port: Number(p), allowHalfOpen: true });
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
  const marks: Arrivals['marks'] = [];
  const hash = createHash('sha256');
  let bytes = 0;
  const downDone = new Promise<void>((resolve) => sock.on('end', resolve));
  sock.on('data', (b: Buffer) => {
    bytes += b.byteLength;
    hash.update(b);
    marks.push({ t: performance.now(), bytes });
  });
  upStart = performance.now();
  sock.end(PAYLOAD);
  // The client wrote everything at upStart: the earliest a byte could leave.
  const up = { ...(await targetGot), start: upStart };
  await downDone;
  sock.destroy();
  // The target wrote its payload when the proxy connected to it: the earliest a byte could leave.
  return { up, down: { start: downStarts.at(-1)!, marks, hash: hash.digest('hex') } };
}

/** Average rate over the transfer, and the fastest any prefix of it went beyond the bucket's allowance (bytes/ms). */
function rates(a: Arrivals): { avg: number; peak: number } {
  const last = a.marks.at(-1)!;
  let peak = 0;
  for (const m of a.marks) {
    const dt = m.t - a.start;
    if (dt > 0) peak = Math.max(peak, (m.bytes - DEFAULT_BURST_BYTES - PACE_SLICE) / dt);
  }
  return { avg: last.bytes / (last.t - a.start), peak };
}

describe('delay proxy bandwidth cap', () => {
  it('paces each direction to the cap (token bucket), intact, against an uncapped run of the same transfer', async () => {
    const want = createHash('sha256').update(PAYLOAD).digest('hex');
    const free = await startDelayProxy(targetEnd);
    const capped = await startDelayProxy(targetEnd, { bandwidthMbit: CAP_MBIT });
    try {
      await transfer(free.endpoint); // warm-up: a cold first run on a loaded box measured only 2.5x the cap
      const f = await transfer(free.endpoint);
      const c = await transfer(capped.endpoint);
      // Reshaping a proxy (what the benchmark does between rows) caps it the same way.
      free.setShape({ bandwidthMbit: CAP_MBIT });
      const reshaped = rates((await transfer(free.endpoint)).up);
      for (const a of [f.up, f.down, c.up, c.down]) {
        expect(a.marks.at(-1)!.bytes).toBe(PAYLOAD.byteLength);
        expect(a.hash).toBe(want);
      }
      expect(capped.bytesToTarget).toBe(PAYLOAD.byteLength);
      expect(capped.bytesFromTarget).toBe(PAYLOAD.byteLength);
      const cap = (CAP_MBIT * 1e6) / 8 / 1000; // bytes per ms
      for (const [dir, cr, fr] of [['up', rates(c.up), rates(f.up)], ['down', rates(c.down), rates(f.down)]] as const) {
        console.log(`[engine] ${dir}: capped ${(cr.avg / cap).toFixed(2)}x the cap (peak ${(cr.peak / cap).toFixed(2)}x), uncapped ${(fr.avg / cap).toFixed(1)}x`);
        // The machine moves this transfer far faster than the cap, so the cap is what binds.
        expect(fr.avg / cap, dir).toBeGreaterThan(2);
        // Never ahead of the bucket (load can only slow it down)...
        expect(cr.peak / cap, dir).toBeLessThan(1.05);
        // ...and not far behind it either: pacing, not stalling.
        expect(cr.avg / cap, dir).toBeGreaterThan(0.6);
      }
      expect(reshaped.peak / cap).toBeLessThan(1.05);
      expect(reshaped.avg / cap).toBeGreaterThan(0.6);
    } finally {
      await free.close();
      await capped.close();
    }
  }, 60_000);
});
