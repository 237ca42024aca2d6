import { execFileSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { AIMessage } from '@langchain/core/messages'

/** A tiny project whose own test command (`node --test`) runs in a fraction of a second; returns its commit. */
export function makeUpstream (dir: string): string {
  const env = { ...process.env, GIT_AUTHOR_NAME: 'Maintainer', GIT_AUTHOR_EMAIL: 'm@example.org', GIT_COMMITTER_NAME: 'Maintainer', GIT_COMMITTER_EMAIL: 'm@example.org' }
  const git = (...args: string[]): string => execFileSync('git', args, { cwd: dir, env }).toString().trim()
  mkdirSync(join(dir, 'test'), { recursive: true })
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'shared', type: 'module', scripts: { test: 'node --test' } }, null, 2) + '\n')
  writeFileSync(join(dir, 'sum.mjs'), 'export function sum (...xs) {\n  return xs.reduce((a, b) => a + b, 0)\n}\n')
  writeFileSync(join(dir, 'test', 'sum.test.mjs'), "import test from 'node:test'\nimport assert from 'node:assert'\nimport { sum } from '../sum.mjs'\n\ntest('sum', () => {\n  assert.strictEqual(sum(1, 2, 3), 6)\n})\n")
  git('init', '-q', '-b', 'main')
  git('add', '.')
  git('commit', '-q', '-m', 'initial')
  return git('rev-parse', 'HEAD')
}

/** What a tool-calling model answers the change author with: one submit_change call. */
export function change (title: string, edits: Array<{ path: string, content: string | null }>, id: string): AIMessage {
  return new AIMessage({ content: '', id, tool_calls: [{ name: 'submit_change', args: { title, rationale: `Resolves the issue: ${title}.`, edits }, id: `call-${id}`, type: 'tool_call' }] })
}
