import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { dirname, resolve } from 'node:path'
import type { Command, Option } from 'commander'
import type { MeshNode } from '../node/node.ts'

/** Helpers the core CLI lends to extensions, so that every command treats --home/--name/--json alike. */
export interface CliContext {
  /** Adds --home and --name to a command. */
  homeOptions (cmd: Command): Command
  /** A fresh --json option. */
  jsonOption (): Option
  /** The home directory that --home/--name (or the environment) select. */
  home (opts: { home?: string, name?: string }): string
}

/**
 * Layers above the runtime (agents, governance) add to the CLI without the runtime importing them:
 * package.json lists extension modules under "clawmesh.extensions", and each default-exports one of
 * these. Keep the module cheap to import; load heavy code inside actions.
 */
export interface CliExtension {
  name: string
  commands? (program: Command, ctx: CliContext): void
  /** Runs once `clawmesh start` has the node up; what it returns runs before the node stops. */
  onStart? (node: MeshNode): Promise<(() => Promise<void>) | undefined | void>
}

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..')

export async function loadExtensions (): Promise<CliExtension[]> {
  const pkg = JSON.parse(readFileSync(resolve(ROOT, 'package.json'), 'utf8')) as { clawmesh?: { extensions?: string[] } }
  const out: CliExtension[] = []
  for (const rel of pkg.clawmesh?.extensions ?? []) {
    const mod = await import(resolve(ROOT, rel)) as { default?: CliExtension }
    if (mod.default === undefined) throw new Error(`CLI extension ${rel} has no default export`)
    out.push(mod.default)
  }
  return out
}
