import type { IncomingMessage, ServerResponse } from 'node:http'

/** An error with the HTTP status the board answers with. */
export class HttpError extends Error {
  constructor (readonly status: number, message: string) {
    super(message)
  }
}

const SECURITY_HEADERS = {
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'x-frame-options': 'DENY',
  // Everything comes from the board itself and no script runs inline, so injected markup cannot run code
  // (inline style attributes are allowed: the shard map positions its bars with them).
  'content-security-policy': "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'"
}

export function sendJson (res: ServerResponse, status: number, value: unknown): void {
  const body = JSON.stringify(value)
  res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' })
  res.end(body)
}

export function sendText (res: ServerResponse, status: number, contentType: string, body: string | Buffer): void {
  res.writeHead(status, { ...SECURITY_HEADERS, 'content-type': contentType, 'cache-control': 'no-store' })
  res.end(body)
}

export function sendError (res: ServerResponse, err: unknown): void {
  const status = err instanceof HttpError ? err.status : 500
  if (!res.headersSent) sendJson(res, status, { error: (err as Error).message })
  else res.end()
}

const MAX_BODY = 64 * 1024

export async function readJsonBody (req: IncomingMessage): Promise<unknown> {
  // JSON only: a cross-site form post cannot set this content type without a preflight we never grant.
  if (!/^application\/json\b/i.test(req.headers['content-type'] ?? '')) throw new HttpError(415, 'send application/json')
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > MAX_BODY) throw new HttpError(413, `body over ${MAX_BODY} bytes`)
    chunks.push(chunk as Buffer)
  }
  if (size === 0) return {}
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'))
  } catch (err) {
    throw new HttpError(400, `body is not JSON: ${(err as Error).message}`)
  }
}
