import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, realpathSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'

/**
 * Runs LLM-written code (the project's tests on an agent's change) where it cannot hurt the owner:
 * Linux namespaces (util-linux `unshare`) give it a network with nothing but its own loopback, a pid
 * namespace that dies with it, and a new root that holds only the system directories read-only, a few
 * harmless files of /etc, the Node installation, an empty /tmp and HOME, and the clone, the one
 * writable place. The agent's home (its identity key, its database), the owner's files and the rest
 * of the machine are not mounted at all. Inside it runs as uid 0 of its namespace with every
 * capability dropped and no_new_privs, so it cannot remount its way out.
 *
 * Where namespaces are unavailable (macOS, a kernel or container that forbids them) `sandboxMode()`
 * says why, and callers refuse to run generated code unless the owner opted in.
 */

export type SandboxMode = { unshare: string[] } | { unavailable: string }

/** System directories a test runner needs, bound read-only (the ones missing here are skipped). */
const SYSTEM_DIRS = ['/usr', '/bin', '/sbin', '/lib', '/lib32', '/lib64', '/libx32']
/** Of /etc, only what programs read to start: no shadow, no host keys, no owner configuration. */
const ETC_FILES = ['passwd', 'group', 'hosts', 'nsswitch.conf', 'ld.so.cache', 'ld.so.conf', 'ld.so.conf.d', 'localtime', 'alternatives', 'ssl', 'ca-certificates', 'mime.types', 'os-release']

/**
 * Builds the new root and runs $3 in it. Arguments: new root (an empty directory), clone, command,
 * then extra read-only paths. Runs as root of fresh mount, net and pid namespaces.
 */
const SETUP = String.raw`
set -e
root=$1; clone=$2; cmd=$3; shift 3
mount -t tmpfs -o mode=755 sandbox "$root"
bindro() {
  if [ -L "$1" ]; then mkdir -p "$root$(dirname "$1")"; ln -s "$(readlink "$1")" "$root$1"; return; fi
  if [ -d "$1" ]; then mkdir -p "$root$1"; else mkdir -p "$root$(dirname "$1")"; : > "$root$1"; fi
  mount --rbind "$1" "$root$1"
  mount -o remount,bind,ro "$root$1"
}
for d in ${SYSTEM_DIRS.join(' ')} "$@"; do [ -e "$d" ] && bindro "$d"; done
for f in ${ETC_FILES.join(' ')}; do [ -e "/etc/$f" ] && bindro "/etc/$f"; done
mkdir -p "$root/dev" "$root/proc" "$root/tmp"
mount -t tmpfs -o mode=755 dev "$root/dev"
for n in null zero full random urandom tty; do [ -e "/dev/$n" ] && { : > "$root/dev/$n"; mount --bind "/dev/$n" "$root/dev/$n"; }; done
ln -s /proc/self/fd "$root/dev/fd"; ln -s /proc/self/fd/0 "$root/dev/stdin"; ln -s /proc/self/fd/1 "$root/dev/stdout"; ln -s /proc/self/fd/2 "$root/dev/stderr"
mkdir -p "$root/dev/shm"; mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777 tmp "$root/tmp"
mkdir -p "$root/tmp/home" "$root$clone"
mount --bind "$clone" "$root$clone"
ip link set lo up 2>/dev/null || true
cd "$root"; mkdir .old; pivot_root . .old; cd /; umount -l /.old; rmdir /.old
cd "$clone"
exec setpriv --no-new-privs --bounding-set -all --inh-caps -all -- sh -c "$cmd"
`

let probed: SandboxMode | undefined

/** Whether this machine can run the sandbox; probes once by running `true` inside it. */
export function sandboxMode (): SandboxMode {
  if (probed !== undefined) return probed
  if (process.platform !== 'linux') return (probed = { unavailable: `the sandbox uses Linux namespaces (this is ${process.platform})` })
  const tries = process.getuid?.() === 0 ? [[], ['-r']] : [['-r']]
  const errors: string[] = []
  const clone = mkdtempSync(join(tmpdir(), 'clawmesh-sandbox-probe-'))
  const newRoot = mkdtempSync(join(tmpdir(), 'clawmesh-sandbox-'))
  try {
    for (const t of tries) {
      const mode = { unshare: t }
      const r = spawnSync('unshare', sandboxArgs(mode, clone, 'true', newRoot), { encoding: 'utf8', timeout: 15_000 })
      if (r.status === 0) return (probed = mode)
      errors.push(`unshare ${t.join(' ')}: ${(r.error?.message ?? r.stderr ?? '').trim().split('\n').slice(-2).join(' ') || `exit ${r.status}`}`)
    }
  } finally {
    for (const d of [clone, newRoot]) rmSync(d, { recursive: true, force: true })
  }
  return (probed = { unavailable: errors.join('; ') })
}

/** The argument vector for `unshare` that runs `command` in the sandbox around `clone`. */
function sandboxArgs (mode: { unshare: string[] }, clone: string, command: string, newRoot: string): string[] {
  return [...mode.unshare, '--mount', '--net', '--pid', '--fork', '--kill-child', '--propagation', 'private',
    'sh', '-c', SETUP, 'sandbox', newRoot, realpathSync(clone), command, ...runtimePaths()]
}

/** The Node installation running us, when it lives outside the system directories (nvm, a tarball). */
function runtimePaths (): string[] {
  const prefix = dirname(dirname(realpathSync(process.execPath)))
  return SYSTEM_DIRS.some((d) => prefix === d || prefix.startsWith(d + '/')) ? [] : [prefix].filter(existsSync)
}

/**
 * Spawns `command` in the sandbox with `env`; the caller reads its output and waits for 'close'.
 * `detached` gives it a process group the caller can kill whole.
 */
export function spawnSandboxed (mode: { unshare: string[] }, clone: string, command: string, env: NodeJS.ProcessEnv): ChildProcess {
  const newRoot = mkdtempSync(join(tmpdir(), 'clawmesh-sandbox-'))
  const child = spawn('unshare', sandboxArgs(mode, clone, command, newRoot), { env: { ...env, HOME: '/tmp/home', TMPDIR: '/tmp' }, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  // The mount point was only ever mounted on inside the sandbox's own mount namespace.
  child.once('close', () => rmSync(newRoot, { recursive: true, force: true }))
  return child
}
