/**
 * The runtime `contracts` table as the layers above read it. The market writes signed agreements there;
 * the engine asks whether a head may use a worker, the ledger prices and settles under them, the board
 * draws the shard map. One row shape and one mapping for all of them.
 */
export interface ContractTerms {
  id: string
  modelSha256: string
  /** PeerId of the head (the pipeline's coordinator, who pays). */
  head: string
  /** PeerId of the worker, who serves layers [layerStart, layerEnd). */
  worker: string
  layerStart: number
  layerEnd: number
  /** Credits per million layer-tokens. */
  price: number
  /** Unix ms. */
  expiresAt: number
  /** 'active' is the only status that grants access or bills; the market owns the vocabulary. */
  status: string
}

export interface ContractRecord extends ContractTerms {
  /** The signed document as the market stored it. */
  document: string
  createdAt: number
}

export function contractFromRow (r: Record<string, unknown>): ContractRecord {
  return {
    id: r.id as string,
    modelSha256: r.model_sha256 as string,
    head: r.head as string,
    worker: r.worker as string,
    layerStart: r.layer_start as number,
    layerEnd: r.layer_end as number,
    price: r.price as number,
    expiresAt: r.expires_at as number,
    status: r.status as string,
    document: r.document as string,
    createdAt: r.created_at as number
  }
}
