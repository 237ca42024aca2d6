// CLI: compare greedy generation speed and output of one process vs layers split over K local
// rpc-server workers (loopback).   npx tsx runtime/engine/bench-split.ts --model M.gguf [--workers 2] [--n 64]
import { parseArgs } from 'node:util';
import { ensureLlamaBuild } from './build.js';
import { readGgufHeader } from './gguf-reader.js';
import { freePort, runCompletion, startRpcServer, type RpcServerHandle } from './llama-procs.js';
import { computeTensorSplit, PIN_TO_HEAD_ARGS } from './split.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      workers: { type: 'string', default: '2' },
      n: { type: 'string', default: '64' },
      prompt: { type: 'string', default: 'Once upon a time' },
      threads: { type: 'string', default: '1' },
    },
  });
  if (!values.model) throw new Error('--model is required');
  const k = Number(values.workers);
  const n = Number(values.n);
  const threads = Number(values.threads);
  const build = await ensureLlamaBuild();
  const nLayerV = readGgufHeader(values.model).metadata.get('llama.block_count');
  if (!nLayerV || typeof nLayerV.value !== 'number') throw new Error(`${values.model}: no llama.block_count`);
  const nLayer = nLayerV.value;

  const base = { bin: build.completion, model: values.model, prompt: values.prompt!, nPredict: n };
  const one = await runCompletion({ ...base, threads, extraArgs: ['-ngl', '0'] });
  console.log(`one process (${threads} thread${threads > 1 ? 's' : ''}): ${one.evalTokensPerSecond} tok/s`);

  const servers: RpcServerHandle[] = [];
  try {
    for (let i = 0; i < k; i++) servers.push(await startRpcServer({ bin: build.rpcServer, port: await freePort(), threads }));
    const per = Math.ceil(nLayer / k);
    const ranges = servers.map((s, i) => ({ worker: s.endpoint, start: i * per, end: Math.min(nLayer, (i + 1) * per) })).filter((r) => r.start < r.end);
    const split = computeTensorSplit(ranges, nLayer);
    const extra = ['--rpc', split.devices.join(','), ...PIN_TO_HEAD_ARGS, ...split.args, '--fit', 'off']; // as the head runs it
    const res = await runCompletion({ ...base, threads, extraArgs: extra });
    console.log(`${k} rpc workers (${threads} thread${threads > 1 ? 's' : ''} each), ${extra.join(' ')}: ${res.evalTokensPerSecond} tok/s`);
    console.log(`identical output: ${res.text === one.text}`);
    if (res.text !== one.text) console.log(`one:   ${JSON.stringify(one.text)}\nsplit: ${JSON.stringify(res.text)}`);
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
}

main().catch((err) => {
  console.error(`bench-split: ${(err as Error).message}`);
  process.exitCode = 1;
});
