import { readFile, stat } from 'node:fs/promises'

/**
 * Where `clawmesh join` reads its invite. An invite line carries the private-mesh key (and the id of a
 * single-use invite): as a command-line argument it is readable by every local user for as long as the
 * command runs (/proc/<pid>/cmdline, ps), and by the shell that started it. So the line comes from a
 * file or from stdin; the argument form still works, with a warning, for public invites and old scripts.
 */
export const INVITE_PREFIX_TEXT = 'clawmesh-invite:'

export const ARGUMENT_WARNING = 'warning: the invite was given as a command-line argument, where other users of this machine can read it (ps, /proc) while the command runs, and it stays in your shell history. It carries the private-mesh key: pass it with --invite-file FILE, or on stdin (--invite-file -).'

export interface InviteSource {
  /** The positional argument: the line itself, or "-" for stdin. */
  argument?: string
  /** --invite-file: a path, or "-" for stdin. */
  file?: string
}

async function readStdin (stdin: NodeJS.ReadableStream): Promise<string> {
  let text = ''
  for await (const chunk of stdin) text += chunk.toString()
  return text
}

/** The first line that looks like an invite (files may carry a trailing newline or a comment). */
function firstInviteLine (text: string, where: string): string {
  const line = text.split(/\r?\n/).map((l) => l.trim()).find((l) => l.startsWith(INVITE_PREFIX_TEXT))
  if (line === undefined) throw new Error(`no invite line (starting with "${INVITE_PREFIX_TEXT}") in ${where}`)
  return line
}

export async function readInviteLine (source: InviteSource, warn: (message: string) => void, stdin: NodeJS.ReadableStream = process.stdin): Promise<string> {
  if (source.argument !== undefined && source.file !== undefined) throw new Error('give the invite either as an argument or with --invite-file, not both')
  const path = source.file ?? (source.argument === '-' ? '-' : undefined)
  if (path === '-') return firstInviteLine(await readStdin(stdin), 'stdin')
  if (path !== undefined) {
    const info = await stat(path).catch((err: unknown) => { throw new Error(`cannot read the invite file ${path}: ${(err as Error).message}`) })
    // Not refused: the owner may have reasons; but the key in it is as good as the mesh's.
    if ((info.mode & 0o077) !== 0) warn(`warning: the invite file ${path} is readable by other users (mode ${(info.mode & 0o777).toString(8)}); it carries the private-mesh key`)
    return firstInviteLine(await readFile(path, 'utf8'), path)
  }
  if (source.argument === undefined) throw new Error('no invite: pass it with --invite-file FILE, or on stdin with --invite-file -')
  warn(ARGUMENT_WARNING)
  return source.argument
}

/**
 * Overwrites this process's command line as other users see it (Linux /proc/<pid>/cmdline; libuv writes
 * the title over the argv memory), when an argument carries an invite. It cannot reach a parent (npx, a
 * shell) that had the line, nor the moment before it runs: hence the warning and --invite-file.
 */
export function scrubInviteFromArguments (argv: readonly string[] = process.argv): boolean {
  if (!argv.some((a) => a.includes(INVITE_PREFIX_TEXT))) return false
  process.title = 'clawmesh join'
  return true
}
