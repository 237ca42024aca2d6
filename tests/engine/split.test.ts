import { describe, expect, it } from 'vitest';
import { computeTensorSplit, simulateLlamaPlacement, validateLayerRanges, LayerSplitError, HEAD_PINNED_TENSORS, PIN_TO_HEAD_ARGS } from '../../runtime/engine/split.js';

describe('computeTensorSplit', () => {
  it('maps two contiguous ranges to -ngl n_layer+1 and per-device counts (output head on the last device)', () => {
    const r = computeTensorSplit([{ worker: 'b', start: 3, end: 8 }, { worker: 'a', start: 0, end: 3 }], 8);
    expect(r).toMatchObject({ ngl: 9, tensorSplit: [3, 6], devices: ['a', 'b'] });
    expect(r.args).toEqual(['-ngl', '9', '--tensor-split', '3,6']);
  });

  it('places every layer exactly where asked, under llama.cpp float32 arithmetic', () => {
    for (const nLayer of [1, 2, 7, 32, 61, 80, 126]) {
      for (let cut = 1; cut < nLayer; cut += Math.max(1, Math.floor(nLayer / 9))) {
        const cut2 = Math.min(nLayer - 1, cut + Math.floor((nLayer - cut) / 2));
        const ranges = cut2 > cut
          ? [{ worker: 'a', start: 0, end: cut }, { worker: 'b', start: cut, end: cut2 }, { worker: 'c', start: cut2, end: nLayer }]
          : [{ worker: 'a', start: 0, end: cut }, { worker: 'b', start: cut, end: nLayer }];
        const s = computeTensorSplit(ranges, nLayer);
        const placed = simulateLlamaPlacement(s.ngl, s.tensorSplit, nLayer);
        const expected = [...ranges.flatMap((r, d) => Array(r.end - r.start).fill(d)), ranges.length - 1];
        expect(placed, `nLayer ${nLayer} ranges ${JSON.stringify(ranges)}`).toEqual(expected);
      }
    }
  });

  it('keeps a cpu worker\'s leading layers on the host CPU', () => {
    const s = computeTensorSplit([{ worker: 'head', start: 0, end: 2 }, { worker: 'w1', start: 2, end: 8 }], 8, { cpuWorker: 'head' });
    expect(s).toMatchObject({ ngl: 7, tensorSplit: [7], devices: ['w1'] });
    expect(simulateLlamaPlacement(s.ngl, s.tensorSplit, 8)).toEqual([-1, -1, 0, 0, 0, 0, 0, 0, 0]);
    expect(computeTensorSplit([{ worker: 'head', start: 0, end: 4 }], 4, { cpuWorker: 'head' }).args).toEqual(['-ngl', '0']);
  });

  it('single device takes everything', () => {
    expect(computeTensorSplit([{ worker: 'x', start: 0, end: 4 }], 4)).toMatchObject({ ngl: 5, tensorSplit: [5] });
  });

  it('rejects gaps, overlaps, out-of-range, empty, duplicate and misplaced cpu ranges with clear errors', () => {
    const bad: Array<[Parameters<typeof computeTensorSplit>, RegExp]> = [
      [[[{ worker: 'a', start: 0, end: 3 }, { worker: 'b', start: 4, end: 8 }], 8], /layers \[3, 4\) are not assigned/],
      [[[{ worker: 'a', start: 0, end: 5 }, { worker: 'b', start: 4, end: 8 }], 8], /overlaps the previous range, which ends at 5/],
      [[[{ worker: 'a', start: 0, end: 9 }], 8], /outside the model's layers \[0, 8\)/],
      [[[{ worker: 'a', start: 0, end: 6 }], 8], /layers \[6, 8\) are not assigned/],
      [[[{ worker: 'a', start: 1, end: 8 }], 8], /layers \[0, 1\) are not assigned/],
      [[[{ worker: 'a', start: 3, end: 3 }, { worker: 'b', start: 0, end: 8 }], 8], /empty or reversed/],
      [[[{ worker: 'a', start: 0, end: 4 }, { worker: 'a', start: 4, end: 8 }], 8], /more than one range/],
      [[[{ worker: 'a', start: 0, end: 2.5 }], 8], /must be integers/],
      [[[], 8], /no layer ranges/],
      [[[{ worker: 'a', start: 0, end: 1 }], 0], /nLayer must be a positive integer/],
      [[[{ worker: 'a', start: 0, end: 4 }, { worker: 'h', start: 4, end: 8 }], 8, { cpuWorker: 'h' }], /must hold the first layers/],
    ];
    for (const [args, re] of bad) {
      expect(() => computeTensorSplit(...args), JSON.stringify(args)).toThrow(re);
      expect(() => computeTensorSplit(...args)).toThrow(LayerSplitError);
    }
  });

  it('validateLayerRanges returns ranges sorted by start', () => {
    const v = validateLayerRanges([{ worker: 'c', start: 6, end: 8 }, { worker: 'a', start: 0, end: 2 }, { worker: 'b', start: 2, end: 6 }], 8);
    expect(v.map((r) => r.worker)).toEqual(['a', 'b', 'c']);
  });

  it('pins exactly the output matrix and token embeddings to the head (llama.cpp uses regex_search, so the pattern must be anchored)', () => {
    // ECMAScript regex, as std::regex's default grammar.
    const re = new RegExp(HEAD_PINNED_TENSORS);
    for (const name of ['output.weight', 'token_embd.weight']) expect(re.test(name), name).toBe(true);
    for (const name of ['blk.0.attn_output.weight', 'output_norm.weight', 'blk.3.ffn_output.weight', 'token_embd_norm.weight', 'output.weight.scale', 'xoutput.weight']) expect(re.test(name), name).toBe(false);
    expect(PIN_TO_HEAD_ARGS).toEqual(['-ot', `${HEAD_PINNED_TENSORS}=CPU`]);
  });
});
