import { z } from 'zod'
import { peerIdFromPrivateKey, peerIdFromString } from '@libp2p/peer-id'
import type { PrivateKey } from '@libp2p/interface'
import { canonicalBytes, concatBytes, fromBase64Url, toBase64Url, utf8 } from './encoding.ts'
import { defineKind } from './envelope.ts'

/**
 * Ledger checkpoints: a node's statement "my ledger's entry `seq` hashes to `hash`", signed by the node,
 * kept by its peers, and countersigned by each peer that keeps it (the witness). A ledger is append-only
 * and hash-chained, so every checkpoint a node ever signed stays checkable for good: its chain must
 * still hold that hash at that seq. Whoever rewrites the database file (drops the append-only triggers,
 * edits a row, re-hashes the chain after it) changes the hash at every later seq, and the first
 * checkpoint a peer hands back shows it. The chain is thereby anchored outside the file.
 */
export const CHECKPOINT_DOMAIN = 'clawmesh/ledger-checkpoint/v1\n'
export const WITNESS_DOMAIN = 'clawmesh/ledger-witness/v1\n'

const peerIdString = z.string().min(40).max(80)
const signature = z.string().regex(/^[A-Za-z0-9_-]{80,100}$/)

export const CheckpointSchema = z.object({
  /** Whose ledger. */
  node: peerIdString,
  /** Entry count: the entry with this seq is the chain's head (0: the empty chain). */
  seq: z.number().int().nonnegative(),
  /** That entry's hash (GENESIS_HASH for the empty chain). */
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  ts: z.number().int().nonnegative()
}).strict()
export type Checkpoint = z.infer<typeof CheckpointSchema>

export const SignedCheckpointSchema = z.object({ checkpoint: CheckpointSchema, sig: signature }).strict()
export type SignedCheckpoint = z.infer<typeof SignedCheckpointSchema>

/** A peer's countersignature: "I hold this checkpoint of yours" (it will hand it back when asked). */
export const WitnessedCheckpointSchema = z.object({ checkpoint: CheckpointSchema, sig: signature, witness: peerIdString, witnessSig: signature }).strict()
export type WitnessedCheckpoint = z.infer<typeof WitnessedCheckpointSchema>

export class CheckpointInvalid extends Error {
  constructor (detail: string) {
    super(`invalid ledger checkpoint: ${detail}`)
    this.name = 'CheckpointInvalid'
  }
}

const checkpointBytes = (c: Checkpoint): Uint8Array => concatBytes(utf8(CHECKPOINT_DOMAIN), canonicalBytes(c))
const witnessBytes = (s: SignedCheckpoint): Uint8Array => concatBytes(utf8(WITNESS_DOMAIN), canonicalBytes({ checkpoint: s.checkpoint, sig: s.sig }))

async function verifyBy (peer: string, bytes: Uint8Array, sig: string): Promise<boolean> {
  try {
    const key = peerIdFromString(peer).publicKey
    return key !== undefined && await key.verify(bytes, fromBase64Url(sig))
  } catch {
    return false
  }
}

export async function signCheckpoint (key: PrivateKey, c: Checkpoint): Promise<SignedCheckpoint> {
  const checkpoint = CheckpointSchema.parse(c)
  if (peerIdFromPrivateKey(key).toString() !== checkpoint.node) throw new CheckpointInvalid(`this key is not ${checkpoint.node}`)
  return { checkpoint, sig: toBase64Url(await key.sign(checkpointBytes(checkpoint))) }
}

/** Parses untrusted input and checks the node's own signature. */
export async function verifyCheckpoint (input: unknown): Promise<SignedCheckpoint> {
  const parsed = SignedCheckpointSchema.safeParse(input)
  if (!parsed.success) throw new CheckpointInvalid(z.prettifyError(parsed.error))
  if (!await verifyBy(parsed.data.checkpoint.node, checkpointBytes(parsed.data.checkpoint), parsed.data.sig)) {
    throw new CheckpointInvalid(`signature does not verify for ${parsed.data.checkpoint.node}`)
  }
  return parsed.data
}

export async function witnessCheckpoint (key: PrivateKey, s: SignedCheckpoint): Promise<WitnessedCheckpoint> {
  const checked = await verifyCheckpoint(s)
  return { ...checked, witness: peerIdFromPrivateKey(key).toString(), witnessSig: toBase64Url(await key.sign(witnessBytes(checked))) }
}

/** Checks both signatures: the node's and its witness's. */
export async function verifyWitnessed (input: unknown): Promise<WitnessedCheckpoint> {
  const parsed = WitnessedCheckpointSchema.safeParse(input)
  if (!parsed.success) throw new CheckpointInvalid(z.prettifyError(parsed.error))
  const w = parsed.data
  await verifyCheckpoint({ checkpoint: w.checkpoint, sig: w.sig })
  if (w.witness === w.checkpoint.node) throw new CheckpointInvalid('a node cannot witness its own checkpoint')
  if (!await verifyBy(w.witness, witnessBytes(w), w.witnessSig)) throw new CheckpointInvalid(`witness signature does not verify for ${w.witness}`)
  return w
}

/** A node → everyone: its newest checkpoint, for peers to keep and countersign. */
export const LedgerCheckpointKind = defineKind('ledger-checkpoint', SignedCheckpointSchema, 10 * 60_000)
/** A peer → the node (and anyone): the countersigned checkpoint it now keeps. */
export const LedgerWitnessKind = defineKind('ledger-witness', WitnessedCheckpointSchema, 10 * 60_000)

/** Stream protocol on which a node asks a peer for the newest checkpoint of its own that the peer keeps. */
export function ledgerAnchorProtocolFor (networkId: string): string {
  return `/clawmesh/${networkId}/ledger-anchor/1`
}
