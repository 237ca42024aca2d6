// A settling process for the crash tests, run as `node --import tsx economy-child.ts <mode> …` and
// SIGKILLed by the test mid-way. It prints one line per step so the test knows where it is:
//   settle <db> <head home> <pause ms>: settles every settleable usage, pausing inside each
//     settlement transaction after its first ledger entry ("mid <usage>", then "settled <usage>");
//   ingest <db> <self peer id> <receipts.json> <pause ms>: books settled receipts as a bystander or
//     worker would, pausing inside each ingest transaction ("mid <id>", then "<result> <id>").
import '../../runtime/polyfill.ts'
import { readFile } from 'node:fs/promises'
import { Store } from '../../runtime/store/store.ts'
import { loadOrCreateIdentity } from '../../runtime/node/identity.ts'
import { HeadBook } from '../../runtime/ledger/head-book.ts'
import { ingestReceipt } from '../../runtime/ledger/mirror.ts'

const [mode, dbPath, arg, ...rest] = process.argv.slice(2)
const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))
const say = (line: string): void => { process.stdout.write(line + '\n') }
const store = await Store.open(dbPath)

if (mode === 'settle') {
  const pause = Number(rest[0])
  const { key } = await loadOrCreateIdentity(arg)
  const book = new HeadBook(store.db, key, { midSettlement: async (usageId) => { say(`mid ${usageId}`); await sleep(pause) } })
  for (const id of await book.settleable(Date.now())) {
    const s = await book.settleUsage(id)
    say(`settled ${id} ${s?.charged ?? 0}`)
  }
} else if (mode === 'ingest') {
  const [file, pause] = rest
  const receipts = JSON.parse(await readFile(file, 'utf8')) as unknown[]
  for (const r of receipts) {
    const result = await ingestReceipt(store.db, arg, r, { midIngest: async (id) => { say(`mid ${id}`); await sleep(Number(pause)) } })
    say(result)
  }
} else {
  throw new Error(`unknown mode ${mode}`)
}
await store.close()
say('done')
