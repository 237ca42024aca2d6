import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readFileSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse as parseYaml } from 'yaml'
import { readLiveStatus } from '../../runtime/node/status-file.ts'
import { CliProcess, cliEnv, runCli } from '../helpers/cli.ts'
import { tempDir, waitFor } from '../helpers/mesh.ts'

const SKILL_DIR = fileURLToPath(new URL('../../skills/openclaw/clawmesh/', import.meta.url))
const PKG = JSON.parse(readFileSync(fileURLToPath(new URL('../../package.json', import.meta.url)), 'utf8')) as { version: string, bin: Record<string, string> }

function frontmatter (text: string): { data: Record<string, unknown>, body: string } {
  const m = /^---\n([\s\S]*?)\n---\n([\s\S]*)$/.exec(text)
  if (m === null) throw new Error('SKILL.md must start with YAML frontmatter between --- lines')
  return { data: parseYaml(m[1]) as Record<string, unknown>, body: m[2] }
}

/** The AgentSkills rules (agentskills.io specification) plus OpenClaw's metadata.openclaw rules. */
function validateSkill (dir: string, data: Record<string, unknown>): string[] {
  const errors: string[] = []
  const allowed = new Set(['name', 'description', 'license', 'compatibility', 'metadata', 'allowed-tools'])
  for (const key of Object.keys(data)) if (!allowed.has(key)) errors.push(`unknown frontmatter field ${key}`)
  const name = data.name
  if (typeof name !== 'string' || name.length < 1 || name.length > 64) errors.push('name must be 1-64 characters')
  else {
    if (!/^[a-z0-9]+(-[a-z0-9]+)*$/.test(name)) errors.push('name: lowercase letters, digits and single hyphens, not at the ends')
    if (name !== basename(dir)) errors.push(`name ${name} must match the folder ${basename(dir)}`)
  }
  const description = data.description
  if (typeof description !== 'string' || description.trim().length === 0 || description.length > 1024) errors.push('description must be 1-1024 characters')
  if (data.compatibility !== undefined && (typeof data.compatibility !== 'string' || data.compatibility.length > 500)) errors.push('compatibility must be at most 500 characters')
  const metadata = data.metadata as Record<string, unknown> | undefined
  if (metadata !== undefined && (typeof metadata !== 'object' || metadata === null)) errors.push('metadata must be a mapping')
  const oc = metadata?.openclaw as Record<string, unknown> | undefined
  if (oc === undefined) errors.push('metadata.openclaw is required for an OpenClaw skill')
  else {
    const requires = oc.requires as Record<string, unknown> | undefined
    for (const key of Object.keys(requires ?? {})) if (!['bins', 'anyBins', 'env', 'config'].includes(key)) errors.push(`requires.${key} is not an OpenClaw requirement`)
    for (const os of (oc.os as string[] | undefined) ?? []) if (!['darwin', 'linux', 'win32'].includes(os)) errors.push(`os ${os} unknown`)
    for (const spec of (oc.install as Array<Record<string, unknown>> | undefined) ?? []) {
      const need: Record<string, string> = { brew: 'formula', node: 'package', go: 'module', uv: 'package', download: 'url' }
      const kind = String(spec.kind)
      if (need[kind] === undefined) errors.push(`install kind ${kind} unknown`)
      else if (spec[need[kind]] === undefined) errors.push(`install kind ${kind} needs ${need[kind]}`)
    }
  }
  return errors
}

/** Every `clawmesh …` command line in the skill's shell and markdown code blocks and inline code. */
function mentionedCommands (text: string): string[] {
  const found = new Set<string>()
  for (const m of text.matchAll(/`(clawmesh [^`\n]+)`/g)) found.add(m[1].trim())
  for (const block of text.matchAll(/```(?:sh|bash)?\n([\s\S]*?)```/g)) {
    for (const line of block[1].split('\n')) if (line.trim().startsWith('clawmesh ')) found.add(line.trim())
  }
  return [...found]
}

describe('the OpenClaw skill package', () => {
  const skill = readFileSync(join(SKILL_DIR, 'SKILL.md'), 'utf8')
  const heartbeat = readFileSync(join(SKILL_DIR, 'HEARTBEAT.md'), 'utf8')
  const { data } = frontmatter(skill)

  it('has frontmatter that follows the AgentSkills and OpenClaw rules', () => {
    expect(validateSkill(dirname(join(SKILL_DIR, 'SKILL.md')), data)).toEqual([])
    const oc = (data.metadata as { openclaw: { requires: { bins: string[] }, install: Array<{ bins: string[] }> }, version: string })
    expect(Object.keys(PKG.bin)).toEqual(expect.arrayContaining(oc.openclaw.requires.bins))
    expect(oc.openclaw.install[0].bins).toEqual(oc.openclaw.requires.bins)
    expect(oc.version).toBe(PKG.version)
  })

  it('the validator catches what the rules forbid (it can fail)', () => {
    expect(validateSkill('/x/clawmesh', { ...data, name: 'Claw--Mesh' })).not.toEqual([])
    expect(validateSkill('/x/other', data)).toContain('name clawmesh must match the folder other')
    expect(validateSkill('/x/clawmesh', { ...data, description: 'x'.repeat(1025) })).not.toEqual([])
    expect(validateSkill('/x/clawmesh', { ...data, metadata: { openclaw: { install: [{ kind: 'node' }] } } })).toContain('install kind node needs package')
  })

  describe('every command it mentions works against a live 2-node mesh', () => {
    let dir: Awaited<ReturnType<typeof tempDir>>
    let env: NodeJS.ProcessEnv
    const procs: CliProcess[] = []
    let invite = ''

    beforeAll(async () => {
      dir = await tempDir()
      env = cliEnv(dir.path)
      const init = await runCli(['init', '--name', 'host', '--listen', '/ip4/127.0.0.1/tcp/0', '--json'], env)
      expect(init.code, init.stderr).toBe(0)
      const host = new CliProcess(['start', '--name', 'host'], env)
      procs.push(host)
      await host.waitForOutput(/is up/)
      await waitFor('host status', async () => (await readLiveStatus(join(dir.path, 'host'))) !== undefined, 20_000, 100)
      const inv = await runCli(['invite', '--name', 'host', '--json'], env)
      invite = (JSON.parse(inv.stdout) as { invite: string }).invite
    }, 120_000)
    afterAll(async () => {
      await Promise.all(procs.map(async (p) => await p.stop('SIGKILL')))
      await dir.cleanup()
    })

    it('runs each one', async () => {
      const commands = [...new Set([...mentionedCommands(skill), ...mentionedCommands(heartbeat)])]
      expect(commands.length).toBeGreaterThan(5)
      // The joining agent is NAME and the host already runs: join, then start NAME, then the rest, and stop last.
      const first = (c: string): number => c.startsWith('clawmesh join') ? 0 : c.startsWith('clawmesh start') ? 1 : c.startsWith('clawmesh stop') ? 3 : 2
      const ordered = [...commands].sort((a, b) => first(a) - first(b))
      const seen: string[] = []
      for (const line of ordered) {
        const args = line.replace(/^clawmesh /, '').replace('"clawmesh-invite:..."', invite).split(/\s+/).map((a) => a === 'NAME' ? 'guest' : a)
        // `init` in the skill creates a new mesh; give it a home of its own.
        if (args[0] === 'init') args[args.indexOf('guest')] = 'founder'
        if (args[0] === 'start' || (args[0] === 'join' && !args.includes('--no-start'))) {
          const proc = new CliProcess([...args, '--listen', '/ip4/127.0.0.1/tcp/0'].filter((a, i, all) => !(a === '--listen' && all.indexOf('--listen') !== i)), env)
          procs.push(proc)
          await proc.waitForOutput(/is up/, 60_000)
          seen.push(args[0])
          continue
        }
        if (args[0] === 'join' || args[0] === 'init') args.push('--listen', '/ip4/127.0.0.1/tcp/0')
        const r = await runCli(args, env, 60_000)
        expect(r.code, `${line}\n${r.stderr}`).toBe(0)
        if (args.includes('--json')) expect(() => JSON.parse(r.stdout), line).not.toThrow()
        seen.push(args[0])
      }
      expect(seen).toEqual(expect.arrayContaining(['join', 'start', 'invite', 'status', 'peers', 'init', 'stop']))
    }, 240_000)
  })
})
