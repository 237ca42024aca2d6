// Pre-builds llama.cpp (e.g. in CI: `npx tsx runtime/engine/build-cli.ts`) and prints the binary paths.
import { ensureLlamaBuild } from './build.js';

try {
  const b = await ensureLlamaBuild();
  process.stdout.write(
    [
      `version      ${b.version}`,
      `backend      ${b.backend}`,
      `binDir       ${b.binDir}`,
      `rpcServer    ${b.rpcServer}`,
      `llamaServer  ${b.llamaServer}`,
      `completion   ${b.completion}`,
    ].join('\n') + '\n',
  );
} catch (err) {
  process.stderr.write(`llama.cpp build failed: ${(err as Error).message}\n`);
  process.exitCode = 1;
}
