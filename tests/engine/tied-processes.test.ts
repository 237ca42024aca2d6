// llama.cpp processes die with the node that started them, even when the node is killed with SIGKILL
// (no chance to clean up): an orphaned rpc-server would keep its port and its memory.
import { spawn } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const PARENT = fileURLToPath(new URL('./fixtures/tied-parent.ts', import.meta.url))

function alive (pid: number): boolean {
  try { process.kill(pid, 0); return true } catch { return false }
}

describe.runIf(process.platform === 'linux')('processes tied to the node', () => {
  it('a child started with spawnTied dies when its parent is killed with SIGKILL', async () => {
    const parent = spawn(process.execPath, ['--import', 'tsx', PARENT], { stdio: ['ignore', 'pipe', 'inherit'] })
    const pid = await new Promise<number>((resolve, reject) => {
      parent.stdout.once('data', (d: Buffer) => resolve(Number(d.toString().trim())))
      parent.once('exit', () => reject(new Error('parent exited early')))
    })
    expect(alive(pid)).toBe(true)
    parent.kill('SIGKILL')
    const deadline = Date.now() + 10_000
    while (alive(pid) && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50))
    // A zombie is reaped by init; `kill -0` on it still succeeds for a moment, so read its state.
    let state = 'gone'
    try { if (alive(pid)) state = readFileSync(`/proc/${pid}/stat`, 'utf8').split(' ')[2] } catch {}
    expect(state).toMatch(/gone|Z/)
  })
})
