import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'

/**
 * A tiny git object database with git's own hashing, so that commits the stand-in creates through the
 * Git Data API have the ids real git would give them, and a repository imported from a local clone
 * keeps its commit ids: the agent's temporary clone and the stand-in then agree on every sha.
 */

export interface TreeItem { mode: string, name: string, sha: string }
export type GitObject =
  | { type: 'blob', content: Buffer }
  | { type: 'tree', entries: TreeItem[] }
  | { type: 'commit', tree: string, parents: string[], author: string, committer: string, message: string }

export interface Signature { name: string, email: string, date: string }

export class GitStore {
  readonly objects = new Map<string, GitObject>()

  put (obj: GitObject): string {
    const body = serialize(obj)
    const sha = createHash('sha1').update(`${obj.type} ${body.length}\0`).update(body).digest('hex')
    this.objects.set(sha, obj)
    return sha
  }

  get<T extends GitObject['type']> (sha: string, type: T): Extract<GitObject, { type: T }> | undefined {
    const obj = this.objects.get(sha)
    return obj?.type === type ? obj as Extract<GitObject, { type: T }> : undefined
  }

  /** Every object of a local repository (all refs), verified by re-hashing. Returns the ref heads. */
  importRepository (dir: string): Map<string, string> {
    const raw = execFileSync('git', ['cat-file', '--batch-all-objects', '--batch'], { cwd: dir, maxBuffer: 256 * 1024 * 1024 })
    let at = 0
    while (at < raw.length) {
      const eol = raw.indexOf(10, at)
      const [sha, type, size] = raw.subarray(at, eol).toString().split(' ')
      const body = raw.subarray(eol + 1, eol + 1 + Number(size))
      at = eol + 1 + Number(size) + 1
      const obj = parse(type, body)
      if (obj === undefined) continue // tags: not needed here
      const got = this.put(obj)
      if (got !== sha) throw new Error(`git object ${sha} re-hashed to ${got}: the stand-in's serialization is wrong`)
    }
    const heads = new Map<string, string>()
    const refs = execFileSync('git', ['for-each-ref', '--format=%(refname) %(objectname)', 'refs/heads'], { cwd: dir }).toString().trim()
    for (const line of refs.split('\n').filter((l) => l !== '')) {
      const [ref, sha] = line.split(' ')
      heads.set(ref.replace(/^refs\/heads\//, ''), sha)
    }
    return heads
  }

  /** Writes every object a local repository lacks into it and points its branches at `heads`. */
  exportTo (dir: string, heads: Map<string, string>): void {
    const known = new Set(execFileSync('git', ['cat-file', '--batch-all-objects', '--batch-check=%(objectname)'], { cwd: dir }).toString().split('\n'))
    for (const [sha, obj] of this.objects) {
      if (known.has(sha)) continue
      const written = execFileSync('git', ['hash-object', '-w', '--stdin', '-t', obj.type], { cwd: dir, input: serialize(obj) }).toString().trim()
      if (written !== sha) throw new Error(`git wrote ${obj.type} ${sha} as ${written}`)
    }
    for (const [branch, sha] of heads) execFileSync('git', ['update-ref', `refs/heads/${branch}`, sha], { cwd: dir })
  }

  /** A new tree: the base tree with entries set (sha) or removed (null) at nested paths. */
  editTree (baseTree: string | undefined, edits: Array<{ path: string, mode: string, sha: string | null }>): string {
    const entries = baseTree === undefined ? [] : [...(this.get(baseTree, 'tree')?.entries ?? [])]
    const direct = edits.filter((e) => !e.path.includes('/'))
    const nested = new Map<string, Array<{ path: string, mode: string, sha: string | null }>>()
    for (const e of edits.filter((x) => x.path.includes('/'))) {
      const [dir, ...rest] = e.path.split('/')
      nested.set(dir, [...(nested.get(dir) ?? []), { ...e, path: rest.join('/') }])
    }
    const byName = new Map(entries.map((e) => [e.name, e]))
    for (const e of direct) {
      if (e.sha === null) byName.delete(e.path)
      else byName.set(e.path, { mode: e.mode, name: e.path, sha: e.sha })
    }
    for (const [dir, sub] of nested) {
      const existing = byName.get(dir)
      const subtree = this.editTree(existing?.mode === '40000' ? existing.sha : undefined, sub)
      if (this.get(subtree, 'tree')!.entries.length === 0) byName.delete(dir)
      else byName.set(dir, { mode: '40000', name: dir, sha: subtree })
    }
    return this.put({ type: 'tree', entries: [...byName.values()] })
  }

  /** path → blob sha of every file under a tree. */
  files (tree: string, prefix = ''): Map<string, { sha: string, mode: string }> {
    const out = new Map<string, { sha: string, mode: string }>()
    for (const e of this.get(tree, 'tree')?.entries ?? []) {
      if (e.mode === '40000') for (const [p, v] of this.files(e.sha, `${prefix}${e.name}/`)) out.set(p, v)
      else out.set(prefix + e.name, { sha: e.sha, mode: e.mode })
    }
    return out
  }

  isAncestor (ancestor: string, of: string): boolean {
    const seen = new Set<string>()
    const queue = [of]
    while (queue.length > 0) {
      const sha = queue.pop()!
      if (sha === ancestor) return true
      if (seen.has(sha)) continue
      seen.add(sha)
      queue.push(...(this.get(sha, 'commit')?.parents ?? []))
    }
    return false
  }
}

export function signatureLine (sig: Signature): string {
  const seconds = Math.floor(Date.parse(sig.date) / 1000)
  return `${sig.name} <${sig.email}> ${seconds} +0000`
}

export function parseSignature (line: string): Signature {
  const m = /^(.*) <(.*)> (\d+) ([+-]\d{4})$/.exec(line)
  if (m === null) return { name: line, email: '', date: new Date(0).toISOString() }
  return { name: m[1], email: m[2], date: new Date(Number(m[3]) * 1000).toISOString().replace('.000Z', 'Z') }
}

function sortKey (e: TreeItem): string {
  return e.mode === '40000' ? e.name + '/' : e.name
}

function serialize (obj: GitObject): Buffer {
  switch (obj.type) {
    case 'blob': return obj.content
    case 'tree': {
      const sorted = [...obj.entries].sort((a, b) => Buffer.compare(Buffer.from(sortKey(a)), Buffer.from(sortKey(b))))
      return Buffer.concat(sorted.flatMap((e) => [Buffer.from(`${e.mode} ${e.name}\0`), Buffer.from(e.sha, 'hex')]))
    }
    case 'commit': {
      const head = [`tree ${obj.tree}`, ...obj.parents.map((p) => `parent ${p}`), `author ${obj.author}`, `committer ${obj.committer}`].join('\n')
      return Buffer.from(`${head}\n\n${obj.message}`)
    }
  }
}

function parse (type: string, body: Buffer): GitObject | undefined {
  if (type === 'blob') return { type: 'blob', content: Buffer.from(body) }
  if (type === 'tree') {
    const entries: TreeItem[] = []
    let at = 0
    while (at < body.length) {
      const space = body.indexOf(32, at)
      const nul = body.indexOf(0, space)
      entries.push({ mode: body.subarray(at, space).toString(), name: body.subarray(space + 1, nul).toString(), sha: body.subarray(nul + 1, nul + 21).toString('hex') })
      at = nul + 21
    }
    return { type: 'tree', entries }
  }
  if (type === 'commit') {
    const text = body.toString()
    const split = text.indexOf('\n\n')
    const headers = text.slice(0, split).split('\n')
    const value = (k: string): string[] => headers.filter((h) => h.startsWith(k + ' ')).map((h) => h.slice(k.length + 1))
    return { type: 'commit', tree: value('tree')[0], parents: value('parent'), author: value('author')[0], committer: value('committer')[0], message: text.slice(split + 2) }
  }
  return undefined
}
