#!/usr/bin/env node
// Runs inside an rpc-server's private network namespace (started with nsenter by rpc-netns.ts) and
// dials that rpc-server for the worker: each {id} message from the parent is answered with a TCP
// socket connected to 127.0.0.1:<port> in this namespace, handed over the IPC channel. The socket
// keeps its namespace, so the worker talks to rpc-server directly; nothing outside the namespace
// can reach the port. Plain Node, no imports beyond node: it runs without the project's loader.
import { connect } from 'node:net';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || process.send === undefined) {
  process.stderr.write('usage: netns-dialer.mjs <port> (spawned with an IPC channel)\n');
  process.exit(2);
}
process.on('message', (m) => {
  const id = m?.id;
  const s = connect({ host: '127.0.0.1', port });
  s.once('connect', () => process.send({ id, ok: true }, s));
  s.once('error', (err) => { s.destroy(); process.send({ id, ok: false, error: err.message }); });
});
// The worker went away: nothing left to dial for.
process.on('disconnect', () => process.exit(0));
