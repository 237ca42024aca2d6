// The engine's read-only view of the `contracts` table. The market layer negotiates and signs
// contracts and writes them there; the engine only asks "may this head use this worker for this
// model right now?" (worker side, on every tunnel stream) and "which workers did I hire?" (head side).
import { randomUUID } from 'node:crypto';
import type { PrivateKey } from '@libp2p/interface';
import { peerIdFromPrivateKey } from '@libp2p/peer-id';
import { contractId as marketContractId, signContract, verifyContract, type ContractDoc, type SignedContract } from '../../protocols/index.ts';
import type { Store } from '../store/store.ts';
import { contractFromRow, type ContractRecord } from '../store/contracts.ts';

export type Contract = ContractRecord;

export type AccessDecision = { ok: true; contract: Contract } | { ok: false; reason: string };

/** Checks a contract row's document; true, or why it does not hold. */
export type ContractVerifier = (c: Contract) => Promise<true | string>;

/**
 * The market's contract (protocols/market.ts): `document` is a SignedContract whose two signatures
 * must verify and whose terms must be the row's. The market already verifies before storing; checking
 * again on every stream means a row written by anything else grants nothing.
 */
export const verifyMarketContract: ContractVerifier = async (c) => {
  let signed: SignedContract;
  try {
    signed = JSON.parse(c.document) as SignedContract;
  } catch {
    return 'document is not JSON';
  }
  const v = await verifyContract(signed);
  if (!v.ok) return v.reason;
  const d = signed.doc;
  if (marketContractId(d) !== c.id) return `id ${c.id} is not the signed document's (${marketContractId(d)})`;
  const mismatch = [
    d.model !== c.modelSha256 && 'model', d.head !== c.head && 'head', d.worker !== c.worker && 'worker',
    d.start !== c.layerStart && 'layer_start', d.end !== c.layerEnd && 'layer_end', d.serveUntil !== c.expiresAt && 'expires_at',
  ].filter(Boolean);
  return mismatch.length === 0 ? true : `row differs from the signed document in ${mismatch.join(', ')}`;
};


export class ContractBook {
  constructor(private readonly store: Store, private readonly verify?: ContractVerifier) {}

  async get(id: string): Promise<Contract | undefined> {
    const r = await this.store.db.get<Record<string, unknown>>('SELECT * FROM contracts WHERE id = ?', [id]);
    return r === undefined ? undefined : contractFromRow(r);
  }

  /** Active, unexpired contracts between these parties for this model (either side may be left out). */
  async activeFor(q: { worker?: string; head?: string; modelSha256?: string; now?: number }): Promise<Contract[]> {
    const where = ["status = 'active'", 'expires_at > ?'];
    const params: unknown[] = [q.now ?? Date.now()];
    if (q.worker !== undefined) { where.push('worker = ?'); params.push(q.worker); }
    if (q.head !== undefined) { where.push('head = ?'); params.push(q.head); }
    if (q.modelSha256 !== undefined) { where.push('model_sha256 = ?'); params.push(q.modelSha256); }
    const rows = await this.store.db.all<Record<string, unknown>>(`SELECT * FROM contracts WHERE ${where.join(' AND ')} ORDER BY layer_start`, params);
    return rows.map(contractFromRow);
  }

  /**
   * The worker-side gate: may `head` (authenticated by the libp2p connection) open an RPC tunnel under
   * `contractId` to `worker` (us) for `modelSha256`? The reason says exactly which check failed.
   */
  async checkAccess(q: { contractId: string; worker: string; head: string; modelSha256: string; now?: number }): Promise<AccessDecision> {
    const now = q.now ?? Date.now();
    const c = await this.get(q.contractId);
    if (c === undefined) return { ok: false, reason: `no contract ${q.contractId}` };
    if (c.worker !== q.worker) return { ok: false, reason: `contract ${c.id} is for worker ${c.worker}, not this node` };
    if (c.head !== q.head) return { ok: false, reason: `contract ${c.id} belongs to head ${c.head}, not to ${q.head}` };
    if (c.modelSha256 !== q.modelSha256) return { ok: false, reason: `contract ${c.id} covers model ${c.modelSha256.slice(0, 12)}…, not ${q.modelSha256.slice(0, 12)}…` };
    if (c.status !== 'active') return { ok: false, reason: `contract ${c.id} is ${c.status}, not active` };
    if (c.expiresAt <= now) return { ok: false, reason: `contract ${c.id} expired at ${new Date(c.expiresAt).toISOString()}` };
    if (this.verify !== undefined) {
      const v = await this.verify(c).catch((err: Error) => `verifier threw: ${err.message}`);
      if (v !== true) return { ok: false, reason: `contract ${c.id} fails verification: ${v}` };
    }
    return { ok: true, contract: c };
  }
}

/** Inserts a contract row as is (no signing); writeTestContract is the usual way in. */
export async function insertContractRow(store: Store, full: Contract): Promise<Contract> {
  await store.db.run(
    `INSERT INTO contracts (id, model_sha256, head, worker, layer_start, layer_end, price, expires_at, status, document, created_at)
     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    [full.id, full.modelSha256, full.head, full.worker, full.layerStart, full.layerEnd, full.price, full.expiresAt, full.status, full.document, full.createdAt],
  );
  return full;
}

export interface TestContractInput {
  headKey: PrivateKey;
  workerKey: PrivateKey;
  modelSha256: string;
  layerStart: number;
  layerEnd: number;
  expiresAt?: number;
  status?: string;
  price?: number;
  net?: string;
}

/**
 * Writes a contract signed by both parties, exactly as the market stores one after a negotiation
 * (document = SignedContract, id = its contract id), without negotiating. For tests, benchmarks and
 * manual setups where one owner holds both keys.
 */
export async function writeTestContract(store: Store, c: TestContractInput): Promise<Contract> {
  const doc: ContractDoc = {
    v: 1,
    net: c.net ?? 'test',
    cfpId: `test-${randomUUID().slice(0, 8)}`,
    model: c.modelSha256,
    head: peerIdFromPrivateKey(c.headKey).toString(),
    worker: peerIdFromPrivateKey(c.workerKey).toString(),
    start: c.layerStart,
    end: c.layerEnd,
    price: c.price ?? 0,
    serveUntil: c.expiresAt ?? Date.now() + 3600_000,
  };
  const signed: SignedContract = { doc, headSig: (await signContract(c.headKey, doc)).sig, workerSig: (await signContract(c.workerKey, doc)).sig };
  return await insertContractRow(store, {
    id: marketContractId(doc), modelSha256: doc.model, head: doc.head, worker: doc.worker, layerStart: doc.start, layerEnd: doc.end,
    price: doc.price, expiresAt: doc.serveUntil, status: c.status ?? 'active', document: JSON.stringify(signed), createdAt: Date.now(),
  });
}
