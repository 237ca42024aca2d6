// A head's gateway for the crash tests, run as `node --import tsx gateway-child.ts <db> <head home> <model sha>`
// and SIGKILLed by the test while requests are in flight. It bills against the database at <db>,
// with an instant upstream in-process, and prints "listening <url>" once it serves.
import '../../runtime/polyfill.ts'
import { Store } from '../../runtime/store/store.ts'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { loadOrCreateIdentity } from '../../runtime/node/identity.ts'
import { HeadBook } from '../../runtime/ledger/head-book.ts'
import { Gateway } from '../../runtime/gateway/server.ts'
import { startInstantUpstream } from '../../sims/lib/instant-upstream.ts'

const [dbPath, home, modelSha256] = process.argv.slice(2)
const store = await Store.open(dbPath)
const { key } = await loadOrCreateIdentity(home)
// As many tokens as each request's max_tokens: the test tells its requests apart by their completion tokens.
const upstream = await startInstantUpstream({ tokens: 1_000_000 })
const gateway = new Gateway({ db: store.db, head: peerIdFromPrivateKey(key).toString(), book: new HeadBook(store.db, key), upstream: upstream.url, modelSha256, modelName: 'm', networkFeePerMTok: 100_000 })
await gateway.start()
process.stdout.write(`listening ${gateway.url}\n`)
