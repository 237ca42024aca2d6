// Chooses which ggml GPU backend to compile in. A toolkit alone is not enough: CI images and dev
// boxes often carry nvcc without any GPU, and a CUDA build there costs an hour of compiling for
// binaries that would fall back to CPU anyway. CLAWMESH_LLAMA_BACKEND overrides the guess.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { probe } from './proc.js';

export type LlamaBackend = 'cpu' | 'cuda' | 'vulkan' | 'metal';
const BACKENDS: LlamaBackend[] = ['cpu', 'cuda', 'vulkan', 'metal'];

export interface BackendChoice {
  backend: LlamaBackend;
  /** Why this backend was chosen, for progress output. */
  reason: string;
  cmakeFlags: string[];
}

function onPath(cmd: string): boolean {
  return probe(process.platform === 'win32' ? 'where' : 'which', [cmd]) !== undefined;
}

function hasNvcc(): boolean {
  if (onPath('nvcc')) return true;
  const roots = [process.env.CUDA_PATH, process.env.CUDA_HOME, '/usr/local/cuda'].filter(Boolean) as string[];
  return roots.some((r) => existsSync(join(r, 'bin', 'nvcc')));
}

function hasNvidiaGpu(): boolean {
  const out = probe('nvidia-smi', ['-L']);
  return !!out && /GPU \d+:/.test(out);
}

function hasVulkan(): boolean {
  // ggml-vulkan needs the loader/headers (found via pkg-config or the SDK) and glslc to compile shaders.
  const sdk = !!process.env.VULKAN_SDK || probe('pkg-config', ['--exists', 'vulkan']) !== undefined;
  const device = probe('vulkaninfo', ['--summary']);
  return sdk && onPath('glslc') && !!device && /deviceType\s*=\s*PHYSICAL_DEVICE_TYPE_(DISCRETE|INTEGRATED)_GPU/.test(device);
}

export function flagsFor(backend: LlamaBackend): string[] {
  switch (backend) {
    case 'cuda': return ['-DGGML_CUDA=ON'];
    case 'vulkan': return ['-DGGML_VULKAN=ON'];
    case 'metal': return ['-DGGML_METAL=ON'];
    case 'cpu': return process.platform === 'darwin' ? ['-DGGML_METAL=OFF'] : [];
  }
}

export function detectBackend(env: NodeJS.ProcessEnv = process.env): BackendChoice {
  const forced = env.CLAWMESH_LLAMA_BACKEND?.trim().toLowerCase();
  if (forced) {
    if (!BACKENDS.includes(forced as LlamaBackend)) {
      throw new Error(`CLAWMESH_LLAMA_BACKEND=${forced} is not one of ${BACKENDS.join(', ')}`);
    }
    return { backend: forced as LlamaBackend, reason: 'set by CLAWMESH_LLAMA_BACKEND', cmakeFlags: flagsFor(forced as LlamaBackend) };
  }
  if (process.platform === 'darwin' && process.arch === 'arm64') {
    return { backend: 'metal', reason: 'Apple Silicon', cmakeFlags: flagsFor('metal') };
  }
  const nvcc = hasNvcc();
  if (nvcc && hasNvidiaGpu()) return { backend: 'cuda', reason: 'nvcc and an NVIDIA GPU found', cmakeFlags: flagsFor('cuda') };
  if (hasVulkan()) return { backend: 'vulkan', reason: 'Vulkan SDK, glslc and a GPU found', cmakeFlags: flagsFor('vulkan') };
  const reason = nvcc ? 'nvcc found but nvidia-smi lists no GPU, so CPU' : 'no GPU toolkit found';
  return { backend: 'cpu', reason, cmakeFlags: flagsFor('cpu') };
}
