// The chain engine's stages on one machine: a model cut into 2, 3 and 4 stage files must give
// exactly one process's greedy tokens, for several requests at once, and a stage killed mid-way
// must not change a single token of a request that the head then repairs.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_MODEL_PRESETS, generateTestModel } from '../../runtime/engine/test-model.js';
import { writeEndsGguf, writeStageGguf } from '../../runtime/engine/stage-gguf.js';
import { StageProcess } from '../../runtime/engine/stage-proc.js';
import { ChainEngine, LocalPath } from '../../runtime/engine/chain.js';
import { ChainServer } from '../../runtime/engine/chain-server.js';
import { ensureStageBinary } from '../../runtime/engine/stage-build.js';
import { nodeGreedy, nodeLlama, looksVaried } from './helpers.js';

const N = 16;
const PROMPTS = ['Once upon a time', 'The mesh of home machines', 'In the beginning'];
const preset = TEST_MODEL_PRESETS.small; // 8 layers
const dir = mkdtempSync(join(tmpdir(), 'clawmesh-chain-'));
const modelPath = join(dir, 'small.gguf');
let bin = '';
let ends: StageProcess;
const ref = new Map<string, number[]>();
const prompts = new Map<string, Int32Array>();
const procs: StageProcess[] = [];
/** A prompt that repeats itself, so that prompt lookup has something to draft from. */
const REPEAT = 'one two three four five, one two three four five, one two three four five, one two three';
let refRepeat: number[] = [];

async function stages(cuts: number[]): Promise<StageProcess[]> {
  const out: StageProcess[] = [];
  for (let i = 0; i + 1 < cuts.length; i++) {
    const file = join(dir, `stage-${cuts[i]}-${cuts[i + 1]}.gguf`);
    writeStageGguf(modelPath, file, { start: cuts[i], end: cuts[i + 1] });
    const p = await StageProcess.start({ bin, model: file, role: 'stage', seqs: 4, batch: 64, ctx: 512, threads: 1 });
    procs.push(p);
    out.push(p);
  }
  return out;
}

beforeAll(async () => {
  await generateTestModel({ path: modelPath, seed: 4321, ...preset });
  bin = await ensureStageBinary();
  const endsPath = join(dir, 'ends.gguf');
  writeEndsGguf(modelPath, endsPath);
  ends = await StageProcess.start({ bin, model: endsPath, role: 'ends', seqs: 4, batch: 64, threads: 1 });
  procs.push(ends);
  const llama = await nodeLlama();
  const model = await llama.loadModel({ modelPath });
  for (const p of PROMPTS) {
    ref.set(p, (await nodeGreedy(model, p, N)).tokens.map(Number));
    prompts.set(p, await ends.tokenize(p, true, false));
  }
  refRepeat = (await nodeGreedy(model, REPEAT, 48)).tokens.map(Number);
  await model.dispose();
}, 45 * 60_000);

afterAll(async () => {
  await Promise.allSettled(procs.map((p) => p.stop()));
  rmSync(dir, { recursive: true, force: true });
});

const greedy = { temperature: 0 };

describe('chain stages (one machine)', () => {
  it('the stage files hold only their layers; the ends file only the vocabulary side', () => {
    const whole = statSync(modelPath).size;
    writeStageGguf(modelPath, join(dir, 'probe.gguf'), { start: 0, end: 2 });
    expect(statSync(join(dir, 'probe.gguf')).size).toBeLessThan(whole * 0.3);
    expect(() => writeStageGguf(modelPath, join(dir, 'x.gguf'), { start: 6, end: 9 })).toThrow(/not inside \[0, 8\)/);
    expect(looksVaried(ref.get(PROMPTS[0])!)).toBe(true);
  });

  for (const cuts of [[0, 4, 8], [0, 3, 5, 8], [0, 2, 4, 6, 8]]) {
    it(`${cuts.length - 1} stages give one process's greedy tokens, three requests at once`, async () => {
      const engine = new ChainEngine({ ends, path: new LocalPath(await stages(cuts)), slots: 4, batch: 64, lanes: 2 });
      const results = await Promise.all(PROMPTS.map((p) => engine.generate({ prompt: prompts.get(p)!, maxTokens: N, sampling: greedy })));
      results.forEach((r, i) => expect(r.tokens, PROMPTS[i]).toEqual(ref.get(PROMPTS[i])));
    }, 120_000);
  }

  it('a stage killed mid-generation: the head re-prefills on a replacement and the tokens do not change', async () => {
    const [a, b] = await stages([0, 5, 8]);
    let killed = false;
    const engine = new ChainEngine({
      ends,
      path: new LocalPath([a, b]),
      slots: 4,
      batch: 64,
      repair: async () => new LocalPath([a, ...(await stages([5, 8]))]),
    });
    const res = await engine.generate({
      prompt: prompts.get(PROMPTS[1])!,
      maxTokens: N,
      sampling: greedy,
      onToken: () => {
        if (!killed) { killed = true; b.child.kill('SIGKILL'); }
      },
    });
    expect(res.repairs).toBe(1);
    expect(res.tokens).toEqual(ref.get(PROMPTS[1]));
  }, 120_000);

  it('speculative decoding (prompt lookup, verified in the same pass) gives plain greedy tokens; rejected drafts leave every stage', async () => {
    const path = new LocalPath(await stages([0, 3, 8]));
    const prompt = await ends.tokenize(REPEAT, true, false);
    const plain = new ChainEngine({ ends, path, slots: 4, batch: 64 });
    expect((await plain.generate({ prompt, maxTokens: 48, sampling: greedy })).tokens).toEqual(refRepeat);
    const spec = new ChainEngine({ ends, path, slots: 4, batch: 64, draft: { k: 4 } });
    // Twice at once: drafts of one sequence must not disturb the other's cache.
    const [a, b] = await Promise.all([0, 1].map(async () => await spec.generate({ prompt, maxTokens: 48, sampling: greedy })));
    expect(a.tokens).toEqual(refRepeat);
    expect(b.tokens).toEqual(refRepeat);
    expect(spec.stats.drafted).toBeGreaterThan(0);
    // A text that repeats (here forced by a logit bias, as a model with meaningful weights repeats
    // names and code): drafts are accepted and a trip brings several tokens.
    const biased = { temperature: 0, logitBias: [[refRepeat[0], 100]] as Array<[number, number]> };
    const want = (await plain.generate({ prompt, maxTokens: 48, sampling: biased })).tokens;
    const before = { steps: spec.stats.steps, accepted: spec.stats.accepted };
    const plainSteps = plain.stats.steps;
    expect((await spec.generate({ prompt, maxTokens: 48, sampling: biased })).tokens).toEqual(want);
    expect(spec.stats.accepted - before.accepted).toBeGreaterThan(20);
    expect(spec.stats.steps - before.steps).toBeLessThan(24);
    console.log(`speculation on a repeating text: 48 tokens in ${spec.stats.steps - before.steps} passes (plain: ${plainSteps / 2}); ${spec.stats.accepted} of ${spec.stats.drafted} drafts accepted in all`);
  }, 120_000);

  it('refuses rows beyond its batch, sequences beyond its slots and positions beyond its context, and keeps serving', async () => {
    const [s] = await stages([0, 8]);
    const n = s.info.n_embd;
    await expect(s.eval(new Int32Array(65), new Int32Array(65), new Float32Array(65 * n))).rejects.toThrow(/65 rows, allowed 1..64/);
    await expect(s.eval(Int32Array.of(9), Int32Array.of(0), new Float32Array(n))).rejects.toThrow(/sequence 9 outside/);
    await expect(s.eval(Int32Array.of(0), Int32Array.of(100_000), new Float32Array(n))).rejects.toThrow(/position 100000 outside/);
    expect((await s.eval(Int32Array.of(0), Int32Array.of(0), new Float32Array(n).fill(0.1))).length).toBe(n);
  });
});

describe('chain server (the OpenAI API the gateway fronts)', () => {
  let server: ChainServer;
  let url = '';
  let refText = '';
  const post = async (path: string, body: unknown): Promise<Response> =>
    await fetch(url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  beforeAll(async () => {
    const engine = new ChainEngine({ ends, path: new LocalPath(await stages([0, 4, 8])), slots: 4, batch: 64, ctx: 512 });
    server = new ChainServer({ engine, ends, model: 'small', ctx: 512 });
    await server.start();
    url = server.url;
    refText = Buffer.concat((await ends.pieces(Int32Array.from(ref.get(PROMPTS[0])!))).map((p) => p.bytes)).toString('utf8');
  }, 60_000);
  afterAll(async () => { await server?.stop(); });

  it('completes greedily with one process\'s text and bills the prompt and completion it computed', async () => {
    const r = await post('/v1/completions', { prompt: PROMPTS[0], max_tokens: N, temperature: 0 });
    const body = await r.json() as { choices: Array<{ text: string; finish_reason: string }>; usage: { prompt_tokens: number; completion_tokens: number } };
    expect(body.choices[0].text).toBe(refText);
    expect(body.choices[0].finish_reason).toBe('length');
    expect(body.usage).toMatchObject({ prompt_tokens: prompts.get(PROMPTS[0])!.length, completion_tokens: N });
  }, 60_000);

  it('streams the same text, ends with the usage asked for, and honours stop strings', async () => {
    const r = await post('/v1/completions', { prompt: PROMPTS[0], max_tokens: N, temperature: 0, stream: true, stream_options: { include_usage: true } });
    const events = (await r.text()).split('\n').filter((l) => l.startsWith('data: ') && l !== 'data: [DONE]').map((l) => JSON.parse(l.slice(6)));
    expect(events.map((e) => e.choices[0]?.text ?? '').join('')).toBe(refText);
    expect(events.at(-1).usage.completion_tokens).toBe(N);
    const stop = refText.slice(5, 9);
    const s = await (await post('/v1/completions', { prompt: PROMPTS[0], max_tokens: N, temperature: 0, stop })).json() as { choices: Array<{ text: string; finish_reason: string }> };
    expect(s.choices[0].text).toBe(refText.slice(0, refText.indexOf(stop)));
    expect(s.choices[0].finish_reason).toBe('stop');
  }, 60_000);

  it('answers chat, /tokenize and /apply-template, and refuses bad input with a reason', async () => {
    const chat = await post('/v1/chat/completions', { messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4, temperature: 0 });
    expect(chat.status).toBe(200);
    expect(((await chat.json()) as { usage: { completion_tokens: number } }).usage.completion_tokens).toBeGreaterThan(0);
    const tok = await (await post('/tokenize', { content: PROMPTS[0] })).json() as { tokens: number[] };
    expect(tok.tokens).toEqual([...prompts.get(PROMPTS[0])!].slice(1)); // no BOS unless add_special
    expect(((await (await post('/apply-template', { messages: [{ role: 'user', content: 'Hi' }] })).json()) as { prompt: string }).prompt).toContain('Hi');
    expect((await post('/v1/completions', { max_tokens: 4 })).status).toBe(400);
    expect((await post('/v1/completions', { prompt: 'x', max_tokens: 100_000 })).status).toBe(400);
    expect((await post('/v1/completions', { prompt: 'x', temperature: 5 })).status).toBe(400);
    expect((await post('/v1/completions', { prompt: [1, 2, 99_999_999] })).status).toBe(400);
  }, 60_000);
});
