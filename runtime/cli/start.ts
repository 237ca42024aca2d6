import { access, rm } from 'node:fs/promises'
import { join } from 'node:path'
import { InviteError, parseInvite, redemptionId, type Invite, type Presence } from '../../protocols/index.ts'
import { readConfigFile, writeConfigFile, type ConfigInput } from '../config.ts'
import { MeshNode } from '../node/node.ts'
import { createHost } from '../node/host.ts'
import { requestRedemption, type RedeemResult } from '../node/invites.ts'
import { recordAdmission } from '../node/admission.ts'
import { startBoardIfEnabled } from '../board/index.ts'
import { initHome, startCommand } from './home.ts'
import type { CliExtension } from './extension.ts'
import type { Out } from './commands.ts'
import { bytes, printJson } from './format.ts'

async function exists (path: string): Promise<boolean> {
  try { await access(path); return true } catch { return false }
}

/** Runs a node in the foreground until SIGINT or SIGTERM, then leaves the mesh cleanly. */
export async function cmdStart (home: string, overrides: Partial<ConfigInput>, extensions: CliExtension[] = [], afterStart?: (node: MeshNode) => Promise<void>): Promise<void> {
  const node = await MeshNode.open({ home, overrides })
  try {
    await node.start()
  } catch (err) {
    await node.stop().catch(() => {})
    throw explainListenError(err, node.config.listen)
  }
  if (afterStart !== undefined) {
    try {
      await afterStart(node)
    } catch (err) {
      await node.stop()
      throw err
    }
  }
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
  // Last, so that a join that fails (or an extension) never leaves a board behind.
  const board = await startBoardIfEnabled(node)
  console.log(`clawmesh ${node.config.name} is up: ${node.peerId.toString()}`)
  for (const addr of node.multiaddrs()) console.log(`  listening on ${addr}`)
  if (board !== undefined) console.log(`  board on ${board.url} (clawmesh board prints the owner token)`)
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
        await board?.stop().catch((err: unknown) => node.log.warn('board shutdown failed', { error: (err as Error).message }))
        await node.stop()
      }
      shutdown().then(resolve, (err) => { console.error(`shutdown failed: ${(err as Error).message}`); process.exit(1) })
    }
    process.on('SIGINT', () => stop('SIGINT'))
    process.on('SIGTERM', () => stop('SIGTERM'))
  })
}

/**
 * libp2p reports a taken port as "Some configured addresses failed to be listened on … set
 * transportManager.faultTolerance …" with a stack trace per address: advice about its own internals.
 * The owner needs to hear which port is taken and which setting moves it.
 */
export function explainListenError (err: unknown, listen: readonly string[]): Error {
  const message = (err as Error)?.message ?? String(err)
  if (!/EADDRINUSE/.test(message)) return err as Error
  const taken = listen.filter((addr) => message.includes(addr)).map((addr) => /\/tcp\/(\d+)/.exec(addr)?.[1]).filter((p): p is string => p !== undefined)
  const ports = taken.length > 0 ? [...new Set(taken)] : [/:(\d+)\b/.exec(message.slice(message.indexOf('EADDRINUSE')))?.[1] ?? '?']
  return new Error(`port ${ports.join(', ')} ${ports.length > 1 ? 'are' : 'is'} in use (another clawmesh node?) — set listen in config.json or --port`)
}

/** What this machine will offer the mesh, as the owner should see it on joining. */
function printOffer (presence: Presence, config: MeshNode['config']): void {
  const hw = presence.hardware
  console.log('This agent will offer:')
  console.log(`  compute  ${hw.cpu.cores} CPU cores (${hw.cpu.model})${hw.backend === false ? ', no usable GPU' : `, ${hw.backend}: ` + hw.gpus.map((g) => `${g.name} ${bytes(g.vramFree)} free`).join(', ')}`)
  console.log(`  memory   ${bytes(hw.memory.free)} free of ${bytes(hw.memory.total)}`)
  console.log(`  models   ${presence.models.length === 0 ? `none yet (put GGUF files in ${config.modelsDir ?? 'the home\'s models/ folder'})` : presence.models.map((m) => `${m.name} (${m.layers} layers, ${bytes(m.sizeBytes)})`).join(', ')}`)
  console.log(`  floor    ${presence.priceFloor} credits per million layer-tokens (priceFloor in config.json)`)
}

/**
 * Sets the agent up from an invite and starts it (or, with start false, only configures it and prints
 * how to start it). An invite that must be redeemed (single-use, or any invite of a private mesh) is
 * redeemed with the inviting node first, over a bare libp2p connection (no gossip, no presence, nothing
 * listening), before any node runs; if it refuses, everything this join wrote is undone and the reason
 * is shown. A private-mesh joiner then admits its inviter: the first member it lets in and learns the
 * rest of the mesh from.
 */
export async function cmdJoin (home: string, line: string, opts: Out & { start: boolean, name?: string, port?: number, listen?: string[] }, extensions: CliExtension[] = []): Promise<Invite> {
  const invite = await parseInvite(line)
  const redeemId = redemptionId(invite)
  if (invite.psk !== undefined && redeemId === undefined) {
    throw new InviteError('this private-mesh invite predates admission control: its members would not let this agent in; ask the inviter for a new invite')
  }
  const fresh = !await exists(join(home, 'identity.key'))
  const previous = fresh ? undefined : await readConfigFile(home)
  const result = await initHome(home, {
    name: opts.name,
    port: opts.port,
    listen: opts.listen,
    networkId: invite.net,
    bootstrap: invite.boot,
    ...(invite.psk !== undefined ? { meshKey: invite.psk } : {})
  })
  const undo = async (): Promise<void> => {
    if (fresh) await rm(home, { recursive: true, force: true })
    else await writeConfigFile(home, previous ?? {})
  }
  const redeem = async (ask: () => Promise<RedeemResult>): Promise<void> => {
    const reply = await ask().catch((err: unknown) => {
      // A private mesh node refuses a peer it has not admitted unless it has an invite left to redeem.
      const hint = invite.psk !== undefined ? ' (a private mesh node lets in a peer it has not admitted only while it holds an unused, unexpired invite: this one may be used up or expired, or the inviting node is down)' : ''
      throw new InviteError(`could not reach the inviting agent ${invite.by} to redeem the invite: ${(err as Error).message}${hint}`)
    })
    if (!reply.ok) throw new InviteError(`the inviting agent refused the invite: ${reply.reason ?? 'no reason given'}`)
  }
  const welcome = async (node: MeshNode): Promise<void> => {
    if (opts.json) return
    console.log(`Joined network ${invite.net}${invite.psk !== undefined ? ' (private mesh)' : ''} as ${result.config.name} (${result.peerId})`)
    console.log(`  home ${result.home}; bootstrap ${invite.boot.length} address(es) from ${invite.by}`)
    printOffer(await node.describe(), node.config)
  }
  try {
    // Not node.stop() below: that clears status.json, which belongs to a node that may run from this home.
    const node = await MeshNode.open({ home })
    try {
      if (redeemId !== undefined) {
        // The inviter's head must not see a worker that is about to vanish, and a private mesh lets in
        // no node before its redemption: a bare host makes this one call and goes.
        const host = await createHost(node.key, { ...node.config, listen: [], announce: [], bootstrap: [], mdns: false, dht: false, nat: { ...node.config.nat, relayClient: false, relays: [], relayServer: false, autonat: false, dcutr: false } })
        try {
          await redeem(async () => await requestRedemption(host, invite.by, invite.boot, redeemId))
        } finally {
          await host.stop()
        }
      }
      if (invite.psk !== undefined) await recordAdmission(node.store, invite.by, 'invite', invite.by, redeemId)
      if (!opts.start) await welcome(node)
    } finally {
      await node.store.close()
    }
    if (opts.start) {
      await cmdStart(home, {}, extensions, welcome)
    } else {
      const start = startCommand(home, opts.name)
      if (opts.json) printJson({ home: result.home, peerId: result.peerId, networkId: invite.net, bootstrap: invite.boot, privateMesh: invite.psk !== undefined, start })
      else console.log(`Start it with: ${start}`)
    }
  } catch (err) {
    await undo()
    throw err
  }
  return invite
}
