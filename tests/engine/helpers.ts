// Shared by the engine tests: a greedy decoder on node-llama-cpp's prebuilt binary (the reference
// the mesh output must match) and access to our own llama.cpp build.
import { getLlama, LlamaLogLevel, type Llama, type LlamaModel, type Token } from 'node-llama-cpp';
import { ensureLlamaBuild, type LlamaBuild } from '../../runtime/engine/build.js';
import { probe } from '../../runtime/engine/proc.js';

let llamaP: Promise<Llama> | undefined;
export function nodeLlama(): Promise<Llama> {
  llamaP ??= getLlama({ gpu: false, logLevel: LlamaLogLevel.error, build: 'never' });
  return llamaP;
}

export interface GreedyResult {
  tokens: Token[];
  /** Text of the generated tokens as they follow the prompt (leading space of the first piece kept). */
  text: string;
  tokensPerSecond: number;
}

/** Greedy decoding with BOS + prompt, as llama-completion does for an add_bos vocab. */
export async function nodeGreedy(model: LlamaModel, prompt: string, n: number): Promise<GreedyResult> {
  const ctx = await model.createContext({ contextSize: 512, threads: 2 });
  try {
    const seq = ctx.getSequence();
    const promptTokens = [...(model.tokens.bos != null ? [model.tokens.bos] : []), ...model.tokenize(prompt)];
    const tokens: Token[] = [];
    let t0 = 0;
    for await (const tok of seq.evaluate(promptTokens, { temperature: 0, topK: 1 })) {
      if (tokens.length === 0) t0 = performance.now(); // exclude prompt processing, like llama.cpp's "eval time"
      tokens.push(tok);
      if (model.isEogToken(tok) || tokens.length >= n) break;
    }
    const secs = (performance.now() - t0) / 1000;
    const all = model.detokenize([...promptTokens, ...tokens]);
    const head = model.detokenize(promptTokens);
    return { tokens, text: all.startsWith(head) ? all.slice(head.length) : model.detokenize(tokens), tokensPerSecond: (tokens.length - 1) / secs };
  } finally {
    await ctx.dispose();
  }
}

/** True when the output is not one token repeated (or a 2-cycle) — what a degenerate random model does. */
export function looksVaried(tokens: readonly number[]): boolean {
  return new Set(tokens).size >= Math.min(tokens.length, 8);
}

export type BuildOutcome = { build: LlamaBuild } | { skip: string };

/**
 * Our llama.cpp build, building it on first use (minutes, once per machine). Only a machine that
 * cannot build at all (no cmake / C++ compiler) skips; a failing build is a test failure.
 */
export async function llamaBuildOrSkip(): Promise<BuildOutcome> {
  const missing = ['cmake', 'git'].filter((t) => !probe(t, ['--version']));
  if (!probe('c++', ['--version']) && !probe('g++', ['--version']) && !probe('clang++', ['--version'])) missing.push('a C++ compiler');
  try {
    return { build: await ensureLlamaBuild({ onProgress: (l) => process.stderr.write(l + '\n') }) };
  } catch (err) {
    if (missing.length) return { skip: `llama.cpp is not built and cannot be built here (missing ${missing.join(', ')}): ${(err as Error).message.split('\n')[0]}` };
    throw err;
  }
}
