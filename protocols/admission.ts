import { z } from 'zod'
import { defineKind } from './envelope.ts'

/**
 * A member's word that it admitted a peer into a private mesh (it redeemed an invite for that peer).
 * Members let in only peers some member admitted: the mesh key alone opens nothing. Receivers believe
 * the notice only when its author is itself admitted, so admission always chains back to a member.
 */
export const MeshAdmitSchema = z.object({
  peer: z.string().min(40).max(80),
  /** The redeemed invite's id, for the owners' records. */
  invite: z.string().regex(/^[A-Za-z0-9_-]{16,43}$/).optional()
}).strict()

export type MeshAdmit = z.infer<typeof MeshAdmitSchema>

export const MeshAdmitKind = defineKind('mesh-admit', MeshAdmitSchema, 10 * 60_000)
