import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { readFileSync } from 'node:fs'
import { writeFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse as parseYaml } from 'yaml'
import { readLiveStatus } from '../../runtime/node/status-file.ts'
import { DEFAULT_GATEWAY_PORT } from '../../runtime/config.ts'
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

  describe('using the mesh from OpenClaw: the provider snippet and the key it needs', () => {
    const section = skill.slice(skill.indexOf('## Use the mesh as a model provider'), skill.indexOf('## Heartbeat'))
    const blocks = [...section.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1])

    it('has one JSON snippet that adds clawmesh as an OpenAI-compatible provider of OpenClaw', () => {
      expect(section.length).toBeGreaterThan(100)
      expect(blocks).toHaveLength(1)
      const config = JSON.parse(blocks[0]) as {
        models: { mode: string, providers: Record<string, { baseUrl: string, apiKey: string, api: string, models: Array<{ id: string, name?: string, input?: string[], contextWindow?: number, maxTokens?: number }> }> }
        agents: { defaults: { model: { primary?: string, fallbacks?: string[] } } }
      }
      expect(config.models.mode).toBe('merge')
      expect(Object.keys(config.models.providers)).toEqual(['clawmesh'])
      const p = config.models.providers.clawmesh
      // The gateway's own defaults (config.json "gateway": host 127.0.0.1, port 4013), OpenAI's /v1 prefix.
      expect(p.baseUrl).toBe(`http://127.0.0.1:${DEFAULT_GATEWAY_PORT}/v1`)
      expect(p.api).toBe('openai-completions')
      // The key comes from the environment, and the text says where to put it.
      const env = /^\$\{([A-Z_][A-Z0-9_]*)\}$/.exec(p.apiKey)
      expect(env, `apiKey ${p.apiKey} should be an env reference`).not.toBeNull()
      expect(section).toContain(`${env![1]}=cm_`)
      expect(p.models).toHaveLength(1)
      const m = p.models[0]
      expect(m.id).toBe('MODEL_ID')
      expect(section).toContain('replace `MODEL_ID`')
      for (const n of [m.contextWindow, m.maxTokens]) expect(Number.isInteger(n) && n! > 0).toBe(true)
      expect(m.maxTokens!).toBeLessThanOrEqual(m.contextWindow!)
      // Every model OpenClaw is pointed at is one this provider declares.
      const refs = [config.agents.defaults.model.primary, ...(config.agents.defaults.model.fallbacks ?? [])].filter((r) => r !== undefined)
      expect(refs.length).toBeGreaterThan(0)
      for (const r of refs) expect(r).toBe(`clawmesh/${m.id}`)
    })

    it('documents the fields that `keys create --json` really prints', async () => {
      const dir = await tempDir()
      try {
        const env = cliEnv(dir.path)
        expect((await runCli(['init', '--name', 'payer', '--listen', '/ip4/127.0.0.1/tcp/0', '--json'], env)).code).toBe(0)
        const line = mentionedCommands(section).find((c) => c.startsWith('clawmesh keys create'))
        expect(line).toBeDefined()
        const args = line!.replace(/^clawmesh /, '').split(/\s+/).map((a) => a === 'NAME' ? 'payer' : a)
        const r = await runCli(args, env)
        expect(r.code, r.stderr).toBe(0)
        const out = JSON.parse(r.stdout) as Record<string, unknown>
        const documented = /Fields: ([^.]*)\./.exec(section)![1].match(/`(\w+)`/g)!.map((f) => f.slice(1, -1))
        expect(Object.keys(out).sort()).toEqual([...documented].sort())
        expect(out.secret).toMatch(/^cm_/)
        expect(out.balance).toBe(1000)
      } finally {
        await dir.cleanup()
      }
    }, 60_000)
  })

  describe('every command it mentions works against a live 2-node mesh', () => {
    let dir: Awaited<ReturnType<typeof tempDir>>
    let env: NodeJS.ProcessEnv
    const procs: CliProcess[] = []
    let invite = ''
    let inviteFile = ''

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
      inviteFile = join(dir.path, 'invite.txt')
      await writeFile(inviteFile, invite + '\n', { mode: 0o600 })
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
        const args = line.replace(/^clawmesh /, '').replace('"clawmesh-invite:..."', invite).split(/\s+/).map((a) => a === 'NAME' ? 'guest' : a === 'INVITE_FILE' ? inviteFile : a)
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
