import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { execFileSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { Octokit } from 'octokit'
import { OctokitForge } from '../../governance/octokit-forge.ts'
import { GitHubStandIn } from '../helpers/github/stand-in.ts'
import { tempDir } from '../helpers/mesh.ts'

describe('the GitHub stand-in', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>
  let gh: GitHubStandIn
  let forge: OctokitForge
  let head: string

  beforeAll(async () => {
    dir = await tempDir('clawmesh-gh-')
    const git = (...args: string[]): string => execFileSync('git', args, { cwd: dir.path, env: { ...process.env, GIT_AUTHOR_NAME: 'T', GIT_AUTHOR_EMAIL: 't@example.org', GIT_COMMITTER_NAME: 'T', GIT_COMMITTER_EMAIL: 't@example.org' } }).toString().trim()
    git('init', '-q', '-b', 'main')
    writeFileSync(join(dir.path, 'a.txt'), 'hello\n')
    git('add', '.')
    git('commit', '-q', '-m', 'first')
    gh = await new GitHubStandIn({ owner: 'mesh', repo: 'code', users: { 'tok-agent': { login: 'clawbot-alice' } } }).start()
    gh.importRepository(dir.path)
    forge = new OctokitForge({ owner: 'mesh', repo: 'code', token: 'tok-agent', baseUrl: gh.baseUrl })
    head = git('rev-parse', 'HEAD')
  })
  afterAll(async () => {
    await gh.stop()
    await dir.cleanup()
  })

  it('keeps git ids: an imported commit and a commit rebuilt through the Git Data API hash like git', async () => {
    expect(await forge.branchSha('main')).toBe(head)
    const tree = await forge.commitTree(head)
    const blob = await forge.createBlob(new TextEncoder().encode('hello\n'))
    expect(blob).toBe(execFileSync('git', ['hash-object', '--stdin'], { input: 'hello\n' }).toString().trim())
    expect(await forge.createTree(tree, [{ path: 'a.txt', mode: '100644', sha: blob }])).toBe(tree)
    expect(await forge.whoami()).toBe('clawbot-alice')
    expect(gh.violations).toEqual([])
  })

  it('records what real GitHub would reject: unknown routes, bad bodies, bad parameters, unknown tokens', async () => {
    const octokit = new Octokit({ auth: 'tok-agent', baseUrl: gh.baseUrl, retry: { enabled: false }, throttle: { enabled: false } })
    await expect(octokit.request('POST /repos/{owner}/{repo}/git/blobs', { owner: 'mesh', repo: 'code', encoding: 'utf-8' } as never)).rejects.toMatchObject({ status: 422 })
    await expect(octokit.request('GET /repos/{owner}/{repo}/pulls/{pull_number}', { owner: 'mesh', repo: 'code', pull_number: 'seven' } as never)).rejects.toMatchObject({ status: 422 })
    await expect(octokit.request('GET /repos/{owner}/{repo}/issues', { owner: 'mesh', repo: 'code', state: 'opened' } as never)).rejects.toMatchObject({ status: 422 })
    await expect(octokit.request('GET /repos/{owner}/{repo}/frobnicate', { owner: 'mesh', repo: 'code' })).rejects.toMatchObject({ status: 404 })
    await expect(new Octokit({ auth: 'nobody', baseUrl: gh.baseUrl, throttle: { enabled: false } }).rest.users.getAuthenticated()).rejects.toMatchObject({ status: 401 })
    const v = gh.takeViolations()
    expect(v).toHaveLength(5)
    expect(v[0]).toMatch(/content/)
    expect(v[1]).toMatch(/pull_number/)
    expect(v[2]).toMatch(/state/)
  })
})
