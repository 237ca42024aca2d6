// Turns the mesh's agreed layer ranges into llama-server / llama-completion placement flags.
//
// How llama.cpp (this release, src/llama-model.cpp) places layers with -ngl N and -ts a,b,...:
//  - devices are ordered: RPC servers first, in --rpc order, then local GPUs; each RPC server
//    exposes one device per backend device it serves (a CPU-only rpc-server exposes one);
//  - the output head counts as layer n_layer, so there are n_layer + 1 placeable layers; layers
//    below n_layer + 1 - N stay on the local CPU; token embeddings always stay on the local CPU;
//  - placed layer il goes to the first device d whose cumulative normalised split exceeds
//    il / (placed layers). With integer splits summing exactly to the placed-layer count, the float
//    boundaries are exact, so every range lands precisely where we asked (verified against the
//    "layer N assigned to device" debug log in tests/engine).

/**
 * Keeps the output matrix and the token embeddings on the head's own CPU, whatever the split says:
 * then the last worker sends back its hidden state (n_embd floats) instead of the logits (n_vocab
 * floats: 128 KiB a token for a 32k vocabulary, about 0.6 MB for Qwen 2.5), and the first device gets
 * embeddings, not token ids looked up remotely. Greedy tokens stay identical (tests/engine). Anchored:
 * llama.cpp matches override patterns with std::regex_search, so a bare "output" would also catch
 * e.g. "blk.N.attn_output.weight". An override to "CPU" picks the plain CPU buffer (plus the CPU's
 * repacked layouts where the weight type has one), never an RPC device.
 * Side effect measured in llama.cpp's source (src/llama-context.cpp): any tensor override turns
 * off the scheduler's pipeline parallelism (micro-batch overlap across devices for long prompts).
 */
export const HEAD_PINNED_TENSORS = '^(output|token_embd)\\.weight$';
export const PIN_TO_HEAD_ARGS: readonly string[] = ['-ot', `${HEAD_PINNED_TENSORS}=CPU`];

export interface LayerRange {
  /** Stable id of the device's owner; must be unique (one contiguous range per device). */
  worker: string;
  /** First layer, inclusive. */
  start: number;
  /** One past the last layer (half-open). */
  end: number;
}

export interface TensorSplit {
  /** Value for -ngl (a.k.a. --n-gpu-layers). */
  ngl: number;
  /** Proportions for --tensor-split, one per device in device order. */
  tensorSplit: number[];
  /** Worker per tensorSplit entry: the order to list RPC endpoints in --rpc (local GPU devices go last). */
  devices: string[];
  /** Worker whose layers stay on the head's own CPU, if any. */
  cpuWorker?: string;
  /** Ready-made argv fragment: ['-ngl', '9', '--tensor-split', '4,5']. */
  args: string[];
}

export interface SplitOptions {
  /**
   * Worker whose range is computed on the head process's CPU instead of a device. llama.cpp can
   * only keep the *first* layers on the CPU, so this worker's range must start at layer 0.
   */
  cpuWorker?: string;
}

export class LayerSplitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'LayerSplitError';
  }
}

function describe(r: LayerRange): string {
  return `${r.worker} [${r.start}, ${r.end})`;
}

/** Checks that ranges tile [0, nLayer) exactly and returns them sorted by start. */
export function validateLayerRanges(ranges: readonly LayerRange[], nLayer: number): LayerRange[] {
  if (!Number.isInteger(nLayer) || nLayer <= 0) throw new LayerSplitError(`nLayer must be a positive integer, got ${nLayer}`);
  if (ranges.length === 0) throw new LayerSplitError('no layer ranges given');
  const seen = new Set<string>();
  for (const r of ranges) {
    if (!r.worker) throw new LayerSplitError(`range [${r.start}, ${r.end}) has no worker id`);
    if (seen.has(r.worker)) throw new LayerSplitError(`worker ${r.worker} has more than one range; each device takes one contiguous block`);
    seen.add(r.worker);
    if (!Number.isInteger(r.start) || !Number.isInteger(r.end)) throw new LayerSplitError(`range ${describe(r)}: bounds must be integers`);
    if (r.start < 0 || r.end > nLayer) throw new LayerSplitError(`range ${describe(r)} is outside the model's layers [0, ${nLayer})`);
    if (r.end <= r.start) throw new LayerSplitError(`range ${describe(r)} is empty or reversed (end is exclusive)`);
  }
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  let next = 0;
  for (const r of sorted) {
    if (r.start > next) throw new LayerSplitError(`layers [${next}, ${r.start}) are not assigned to any worker (gap before ${describe(r)})`);
    if (r.start < next) throw new LayerSplitError(`range ${describe(r)} overlaps the previous range, which ends at ${next}`);
    next = r.end;
  }
  if (next !== nLayer) throw new LayerSplitError(`layers [${next}, ${nLayer}) are not assigned to any worker`);
  return sorted;
}

export function computeTensorSplit(ranges: readonly LayerRange[], nLayer: number, opts: SplitOptions = {}): TensorSplit {
  const sorted = validateLayerRanges(ranges, nLayer);
  let onCpu = 0;
  let deviceRanges = sorted;
  if (opts.cpuWorker !== undefined) {
    const first = sorted[0];
    if (first.worker !== opts.cpuWorker) {
      const r = sorted.find((x) => x.worker === opts.cpuWorker);
      throw new LayerSplitError(
        r
          ? `cpu worker ${describe(r)} must hold the first layers: llama.cpp keeps only layers 0..k-1 on the host CPU`
          : `cpu worker ${opts.cpuWorker} has no range`,
      );
    }
    onCpu = first.end - first.start;
    deviceRanges = sorted.slice(1);
  }
  if (deviceRanges.length === 0) {
    // Everything on the head CPU: -ngl 0 disables offload; an empty split means "no devices".
    return { ngl: 0, tensorSplit: [], devices: [], cpuWorker: opts.cpuWorker, args: ['-ngl', '0'] };
  }
  const placed = nLayer + 1 - onCpu; // + the output head, which rides with the last device
  const tensorSplit = deviceRanges.map((r, i) => r.end - r.start + (i === deviceRanges.length - 1 ? 1 : 0));
  return {
    ngl: placed,
    tensorSplit,
    devices: deviceRanges.map((r) => r.worker),
    cpuWorker: opts.cpuWorker,
    args: ['-ngl', String(placed), '--tensor-split', tensorSplit.join(',')],
  };
}

/** Inverse of computeTensorSplit, mirroring llama.cpp's float arithmetic: device index (or -1 for CPU) per layer 0..nLayer (last = output head). */
export function simulateLlamaPlacement(ngl: number, tensorSplit: readonly number[], nLayer: number): number[] {
  const f = Math.fround;
  const cum: number[] = [];
  let sum = f(0);
  for (const s of tensorSplit) {
    sum = f(sum + f(s));
    cum.push(sum);
  }
  const splits = cum.map((c) => f(c / sum));
  const iStart = Math.max(nLayer + 1 - ngl, 0);
  const act = tensorSplit.length === 0 ? 0 : Math.min(ngl, nLayer + 1);
  const out: number[] = [];
  for (let il = 0; il <= nLayer; il++) {
    if (il < iStart || il - iStart >= act) {
      out.push(-1);
      continue;
    }
    const x = f((il - iStart) / act);
    let d = splits.findIndex((s) => s > x); // std::upper_bound
    if (d < 0) d = splits.length; // llama.cpp would index past the end: never happens with valid splits
    out.push(d);
  }
  return out;
}
