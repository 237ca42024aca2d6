import type { MeshNode } from '../node/node.ts'
import { startBoard, type BoardHandle } from './server.ts'

export { startBoard, BOARD_FILE, type BoardHandle, type BoardOptions } from './server.ts'
export { ensureToken, TOKEN_FILE } from './token.ts'

/**
 * For `clawmesh start`: the board when the config enables it. A board that cannot start is reported and
 * skipped, never fatal: the node serving the mesh matters more than the owner's view of it.
 */
export async function startBoardIfEnabled (node: MeshNode): Promise<BoardHandle | undefined> {
  if (!node.config.board.enabled) return undefined
  try {
    return await startBoard(node)
  } catch (err) {
    node.log.warn('the board did not start; the node runs without it', { error: (err as Error).message })
    return undefined
  }
}
