import { z } from 'zod'
import { defineKind } from './envelope.ts'

const bytes = z.number().int().nonnegative()

export const GpuSchema = z.object({
  name: z.string().max(200),
  vramTotal: bytes,
  vramFree: bytes
}).strict()

export const HardwareSchema = z.object({
  cpu: z.object({ model: z.string().max(200), cores: z.number().int().positive() }).strict(),
  memory: z.object({ total: bytes, free: bytes }).strict(),
  /** The compute backend node-llama-cpp picked: 'cuda', 'vulkan', 'metal', or false for CPU only. */
  backend: z.union([z.enum(['cuda', 'vulkan', 'metal']), z.literal(false)]),
  gpus: z.array(GpuSchema).max(16)
}).strict()

/** A model on the node's disk. Models are identified by the SHA-256 of their GGUF file. */
export const ModelOnDiskSchema = z.object({
  name: z.string().max(200),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  sizeBytes: bytes,
  architecture: z.string().max(64),
  layers: z.number().int().nonnegative()
}).strict()

export const PresenceSchema = z.object({
  name: z.string().max(64),
  software: z.string().max(32),
  hardware: HardwareSchema,
  models: z.array(ModelOnDiskSchema).max(64),
  /** The owner's floor, in credits per million layer-tokens: the agent never sells below it. */
  priceFloor: z.number().nonnegative().finite(),
  /** Where to dial the node, so that peers met through gossip can connect directly, not via a hub. */
  addrs: z.array(z.string().startsWith('/').max(300)).max(16),
  uptimeS: z.number().int().nonnegative(),
  /** What the node is doing now, from its lifecycle (free-form until the agents define states). */
  state: z.string().max(32)
}).strict()

export type Presence = z.infer<typeof PresenceSchema>
export type Hardware = z.infer<typeof HardwareSchema>
export type ModelOnDisk = z.infer<typeof ModelOnDiskSchema>

/** A heartbeat lives a minute: peers that stop sending drop out of everyone's view soon after. */
export const PresenceKind = defineKind('presence', PresenceSchema, 60_000)
