import { parseInvite, type Invite } from '../../protocols/index.ts'
import type { ConfigInput } from '../config.ts'
import { MeshNode } from '../node/node.ts'
import { initHome } from './home.ts'
import type { CliExtension } from './extension.ts'
import type { Out } from './commands.ts'
import { printJson } from './format.ts'

/** Runs a node in the foreground until SIGINT or SIGTERM, then leaves the mesh cleanly. */
export async function cmdStart (home: string, overrides: Partial<ConfigInput>, extensions: CliExtension[] = []): Promise<void> {
  const node = await MeshNode.open({ home, overrides })
  await node.start()
  const beforeStop: Array<() => Promise<void>> = []
  for (const ext of extensions) {
    try {
      const undo = await ext.onStart?.(node)
      if (typeof undo === 'function') beforeStop.unshift(undo)
    } catch (err) {
      await node.stop()
      throw new Error(`${ext.name} failed to start: ${(err as Error).message}`)
    }
  }
  console.log(`clawmesh ${node.config.name} is up: ${node.peerId.toString()}`)
  for (const addr of node.multiaddrs()) console.log(`  listening on ${addr}`)
  console.log('Press Ctrl-C to stop.')
  await new Promise<void>((resolve) => {
    let stopping = false
    const stop = (signal: string): void => {
      if (stopping) {
        console.error(`${signal} again: exiting without a clean shutdown`)
        process.exit(130)
      }
      stopping = true
      node.log.info(`received ${signal}, shutting down`)
      const shutdown = async (): Promise<void> => {
        for (const undo of beforeStop) {
          await undo().catch((err: unknown) => node.log.warn('extension shutdown failed', { error: (err as Error).message }))
        }
        await node.stop()
      }
      shutdown().then(resolve, (err) => { console.error(`shutdown failed: ${(err as Error).message}`); process.exit(1) })
    }
    process.on('SIGINT', () => stop('SIGINT'))
    process.on('SIGTERM', () => stop('SIGTERM'))
  })
}

export async function cmdJoin (home: string, line: string, opts: Out & { start: boolean, name?: string, port?: number, listen?: string[] }, extensions: CliExtension[] = []): Promise<Invite> {
  const invite = await parseInvite(line)
  const result = await initHome(home, {
    name: opts.name,
    port: opts.port,
    listen: opts.listen,
    networkId: invite.net,
    bootstrap: invite.boot,
    ...(invite.psk !== undefined ? { meshKey: invite.psk } : {})
  })
  if (opts.json && !opts.start) {
    printJson({ home: result.home, peerId: result.peerId, networkId: invite.net, bootstrap: invite.boot, privateMesh: invite.psk !== undefined })
    return invite
  }
  console.log(`Joined network ${invite.net}${invite.psk !== undefined ? ' (private mesh)' : ''} as ${result.config.name} (${result.peerId})`)
  console.log(`  home ${result.home}; bootstrap ${invite.boot.length} address(es) from ${invite.by}`)
  if (opts.start) await cmdStart(home, {}, extensions)
  return invite
}
