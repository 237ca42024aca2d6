import { describe, expect, it } from 'vitest'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import {
  AcceptKind, CONTRACT_SIGNING_DOMAIN, CfpSchema, ContractDocSchema, ProposeSchema, TermsSchema,
  contractFromTerms, contractId, coverage, dealCost, openEnvelope, sealEnvelope, signContract, verifyContract,
  verifyContractSig, type Cfp, type ContractDoc, type Terms
} from '../../protocols/index.ts'

const SHA = 'ab'.repeat(32)

async function party (): Promise<{ key: Awaited<ReturnType<typeof generateKeyPair>>, id: string }> {
  const key = await generateKeyPair('Ed25519')
  return { key, id: peerIdFromPrivateKey(key).toString() }
}

const cfp: Pick<Cfp, 'cfpId' | 'model' | 'serveUntil'> = { cfpId: 'call-0001', model: SHA, serveUntil: 2_000_000_000_000 }
const terms: Terms = { start: 4, end: 8, price: 2.5, expiresAt: 1_900_000_000_000 }

describe('market wire formats', () => {
  it('accepts a well-formed call and refuses empty or inverted layer ranges', () => {
    const body = { cfpId: 'call-0001', model: SHA, modelRef: { sha256: SHA, name: 'm', nLayer: 12, layerBytes: 1000 }, want: { start: 0, end: 12 }, budget: 30, deadline: 1, serveUntil: 2, maxRounds: 3, text: 'hello' }
    expect(CfpSchema.safeParse(body).success).toBe(true)
    expect(CfpSchema.safeParse({ ...body, want: { start: 5, end: 5 } }).success).toBe(false)
    expect(TermsSchema.safeParse({ ...terms, start: 8, end: 4 }).success).toBe(false)
    expect(TermsSchema.safeParse({ ...terms, price: -1 }).success).toBe(false)
  })

  it('refuses extra fields: a peer cannot smuggle in terms the schema does not know', () => {
    const p = { cfpId: 'call-0001', model: SHA, to: 'x'.repeat(52), terms, text: 'hi' }
    expect(ProposeSchema.safeParse(p).success).toBe(true)
    expect(ProposeSchema.safeParse({ ...p, terms: { ...terms, discount: 0.5 } }).success).toBe(false)
    expect(ProposeSchema.safeParse({ ...p, binding: true }).success).toBe(false)
  })

  it('caps the text a peer may send', () => {
    const p = { cfpId: 'call-0001', model: SHA, to: 'x'.repeat(52), terms, text: 'a'.repeat(2001) }
    expect(ProposeSchema.safeParse(p).success).toBe(false)
  })
})

describe('contracts', () => {
  it('are derived from terms alone and signed by both parties', async () => {
    const head = await party()
    const worker = await party()
    const doc = contractFromTerms({ net: 'test', cfp, head: head.id, worker: worker.id, terms })
    expect(ContractDocSchema.parse(doc)).toEqual(doc)
    expect(doc).toMatchObject({ start: 4, end: 8, price: 2.5, serveUntil: cfp.serveUntil })
    const h = await signContract(head.key, doc)
    const w = await signContract(worker.key, doc)
    expect(h.role).toBe('head')
    expect(w.role).toBe('worker')
    expect(await verifyContract({ doc, headSig: h.sig, workerSig: w.sig })).toEqual({ ok: true })
    expect(contractId(doc)).toMatch(/^[0-9a-f]{32}$/)
  })

  it('fail verification when a term changes after signing, or signatures are swapped', async () => {
    const head = await party()
    const worker = await party()
    const doc = contractFromTerms({ net: 'test', cfp, head: head.id, worker: worker.id, terms })
    const h = (await signContract(head.key, doc)).sig
    const w = (await signContract(worker.key, doc)).sig
    const cheaper: ContractDoc = { ...doc, price: 0.5 }
    expect(await verifyContract({ doc: cheaper, headSig: h, workerSig: w })).toMatchObject({ ok: false, reason: 'head signature does not verify' })
    expect(await verifyContract({ doc, headSig: w, workerSig: h })).toMatchObject({ ok: false })
    expect(contractId(cheaper)).not.toBe(contractId(doc))
  })

  it('refuse a signer who is not a party', async () => {
    const head = await party()
    const worker = await party()
    const outsider = await party()
    const doc = contractFromTerms({ net: 'test', cfp, head: head.id, worker: worker.id, terms })
    await expect(signContract(outsider.key, doc)).rejects.toThrow(/not a party/)
  })

  it('use their own signing domain: an envelope signature never verifies as a contract signature', async () => {
    const head = await party()
    const worker = await party()
    const doc = contractFromTerms({ net: 'test', cfp, head: head.id, worker: worker.id, terms })
    const { sig } = await signContract(worker.key, doc)
    // The ACCEPT envelope signs its body (which includes the contract) under the envelope domain.
    const env = await sealEnvelope(worker.key, AcceptKind, { cfpId: cfp.cfpId, model: SHA, to: head.id, terms, contract: doc, sig, text: 'deal' }, { networkId: 'test' })
    expect(await verifyContractSig(doc, worker.id, env.sig)).toBe(false)
    expect(await verifyContractSig(doc, worker.id, sig)).toBe(true)
    const bytes = new TextEncoder().encode(JSON.stringify(env))
    const opened = await openEnvelope(bytes, { networkId: 'test', kinds: new Map([[AcceptKind.kind, AcceptKind]]) })
    expect(opened.from).toBe(worker.id)
    expect(CONTRACT_SIGNING_DOMAIN).toMatch(/contract/)
  })
})

describe('coverage', () => {
  it('is complete when ranges tile [0, n) exactly, in any order', () => {
    expect(coverage([{ start: 5, end: 12 }, { start: 0, end: 5 }], 12)).toEqual({ complete: true, gaps: [], overlaps: [], outside: [] })
  })

  it('reports gaps, overlaps and ranges outside the model', () => {
    const r = coverage([{ start: 0, end: 4 }, { start: 3, end: 6 }, { start: 8, end: 14 }], 12)
    expect(r.complete).toBe(false)
    expect(r.gaps).toEqual([{ start: 6, end: 8 }])
    expect(r.overlaps).toEqual([{ start: 3, end: 4 }])
    expect(r.outside).toEqual([{ start: 8, end: 14 }])
  })

  it('of nothing is one gap over the whole model', () => {
    expect(coverage([], 7).gaps).toEqual([{ start: 0, end: 7 }])
  })

  it('prices a deal as price per layer times layers', () => {
    expect(dealCost(terms)).toBe(10)
  })
})
