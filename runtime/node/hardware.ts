import { cpus, freemem, totalmem } from 'node:os'
import type { Hardware } from '../../protocols/index.ts'

interface GpuProbe {
  backend: Hardware['backend']
  names: string[]
  vram (): Promise<{ total: number, free: number }>
}

let gpuProbe: Promise<GpuProbe | undefined> | undefined

/**
 * node-llama-cpp knows which GPU backend this machine can use and how much VRAM is free. Loading its
 * native binary costs about a second, so it happens once per process, and never triggers a build or a
 * download: a machine without a usable prebuilt binary is reported as CPU-only.
 */
async function probeGpu (): Promise<GpuProbe | undefined> {
  gpuProbe ??= (async () => {
    try {
      const { getLlama, LlamaLogLevel } = await import('node-llama-cpp')
      const llama = await getLlama({ gpu: 'auto', build: 'never', skipDownload: true, logLevel: LlamaLogLevel.error, progressLogs: false })
      const names = llama.gpu === false ? [] : await llama.getGpuDeviceNames()
      return {
        backend: llama.gpu === false ? false : llama.gpu,
        names,
        vram: async () => {
          if (llama.gpu === false) return { total: 0, free: 0 }
          const state = await llama.getVramState()
          return { total: state.total, free: state.free }
        }
      }
    } catch {
      return undefined
    }
  })()
  return await gpuProbe
}

export async function probeHardware (opts: { gpu: boolean }): Promise<Hardware> {
  const cpuList = cpus()
  const hardware: Hardware = {
    cpu: { model: (cpuList[0]?.model ?? 'unknown').trim().slice(0, 200), cores: Math.max(1, cpuList.length) },
    memory: { total: totalmem(), free: freemem() },
    backend: false,
    gpus: []
  }
  if (!opts.gpu) return hardware
  const gpu = await probeGpu()
  if (gpu === undefined || gpu.backend === false) return hardware
  const vram = await gpu.vram()
  // llama.cpp reports VRAM summed over devices; split it evenly for the per-device view.
  const n = Math.max(1, gpu.names.length)
  hardware.backend = gpu.backend
  hardware.gpus = (gpu.names.length > 0 ? gpu.names : ['gpu']).map((name) => ({
    name: name.slice(0, 200), vramTotal: Math.floor(vram.total / n), vramFree: Math.floor(vram.free / n)
  }))
  return hardware
}
