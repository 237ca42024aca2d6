// Pre-builds llama.cpp (e.g. in CI: `npx tsx runtime/engine/build-cli.ts`) and prints the binary paths.
import { ensureLlamaBuild } from './build.js';
import { ensureStageBinary } from './stage-build.js';

try {
  const b = await ensureLlamaBuild();
  const stage = await ensureStageBinary();
  process.stdout.write(
    [
      `version      ${b.version}`,
      `backend      ${b.backend}`,
      `binDir       ${b.binDir}`,
      `rpcServer    ${b.rpcServer}`,
      `llamaServer  ${b.llamaServer}`,
      `completion   ${b.completion}`,
      `stage        ${stage}`,
    ].join('\n') + '\n',
  );
} catch (err) {
  process.stderr.write(`llama.cpp build failed: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
