import type { ServerResponse } from 'node:http'

/** An error answered in OpenAI's format, so that OpenAI clients raise their usual exception classes. */
export class ApiError extends Error {
  constructor (
    readonly status: number,
    message: string,
    readonly type: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {}
  ) {
    super(message)
    this.name = 'ApiError'
  }
}

export const invalidKey = (detail: string): ApiError => new ApiError(401, detail, 'invalid_request_error', 'invalid_api_key')
export const insufficientCredit = (detail: string): ApiError => new ApiError(402, detail, 'insufficient_quota', 'insufficient_quota')
export const rateLimited = (retryAfterMs: number): ApiError => new ApiError(429, `rate limit reached for this key; retry in ${Math.ceil(retryAfterMs / 1000)} s`,
  'requests', 'rate_limit_exceeded', null, { 'retry-after': String(Math.max(1, Math.ceil(retryAfterMs / 1000))) })
export const badRequest = (detail: string, param: string | null = null): ApiError => new ApiError(400, detail, 'invalid_request_error', null, param)
export const notFound = (detail: string): ApiError => new ApiError(404, detail, 'invalid_request_error', 'not_found')
export const modelNotFound = (detail: string): ApiError => new ApiError(404, detail, 'invalid_request_error', 'model_not_found', 'model')
/** 503 with Retry-After: the model is being (re-)assembled; clients that honour the header come back then. */
export const unavailable = (detail: string, retryAfterS = 2): ApiError => new ApiError(503, detail, 'server_error', 'model_unavailable', null, { 'retry-after': String(retryAfterS) })
export const upstreamFailed = (detail: string): ApiError => new ApiError(502, detail, 'server_error', 'upstream_error')

export function errorBody (e: ApiError): { error: { message: string, type: string, param: string | null, code: string | null } } {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } }
}

export function sendError (res: ServerResponse, e: ApiError): void {
  if (res.headersSent) {
    // Mid-stream: the status is gone, so the error travels as an SSE event and the stream ends.
    if (!res.writableEnded) res.end(`data: ${JSON.stringify(errorBody(e))}\n\n`)
    return
  }
  const body = JSON.stringify(errorBody(e))
  res.writeHead(e.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...e.headers })
  res.end(body)
}
