import { createHash } from 'node:crypto'
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { Ajv, _, type ValidateFunction } from 'ajv'
import addFormatsModule from 'ajv-formats'
import standaloneModule from 'ajv/dist/standalone/index.js'

/**
 * GitHub's published OpenAPI description (the dereferenced one from @octokit/openapi), reduced to the
 * operations the stand-in serves. The full file is 70 MB and takes seconds to parse, so the reduced
 * set is cached on disk keyed by the package version and the operation list, and validators are
 * compiled once per process and operation.
 */

type Schema = Record<string, unknown>
interface Parameter { name: string, in: 'path' | 'query' | 'header', required?: boolean, schema: Schema }
export interface Operation {
  id: string
  method: string
  path: string
  regex: RegExp
  pathParams: string[]
  parameters: Parameter[]
  requestBody?: { required: boolean, schema: Schema }
  responses: Record<string, Schema | null>
}

const require = createRequire(import.meta.url)
const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv
const standaloneCode = (standaloneModule as unknown as { default: (ajv: Ajv, v: ValidateFunction) => string }).default
let cacheDir: string | undefined

export function loadOperations (ids: readonly string[]): Map<string, Operation> {
  const pkgPath = require.resolve('@octokit/openapi/package.json')
  const version = (JSON.parse(readFileSync(pkgPath, 'utf8')) as { version: string }).version
  const key = createHash('sha256').update(JSON.stringify([version, [...ids].sort(), 'json-schema-v1'])).digest('hex').slice(0, 16)
  cacheDir = join(dirname(dirname(dirname(pkgPath))), '.cache', 'clawmesh')
  const cacheFile = join(cacheDir, `github-openapi-${key}.json`)
  let reduced: Array<Omit<Operation, 'regex'>>
  try {
    reduced = JSON.parse(readFileSync(cacheFile, 'utf8')) as typeof reduced
  } catch {
    reduced = extract(join(dirname(pkgPath), 'generated', 'api.github.com.deref.json'), ids)
    mkdirSync(dirname(cacheFile), { recursive: true })
    const tmp = `${cacheFile}.${process.pid}.tmp`
    writeFileSync(tmp, JSON.stringify(reduced))
    renameSync(tmp, cacheFile)
  }
  return new Map(reduced.map((op) => [op.id, { ...op, regex: pathRegex(op.path) }]))
}

function extract (file: string, ids: readonly string[]): Array<Omit<Operation, 'regex'>> {
  const spec = JSON.parse(readFileSync(file, 'utf8')) as { paths: Record<string, Record<string, Schema>> }
  const out: Array<Omit<Operation, 'regex'>> = []
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      if (typeof op !== 'object' || op === null || !ids.includes(op.operationId as string)) continue
      const body = op.requestBody as { required?: boolean, content?: Record<string, { schema: Schema }> } | undefined
      const responses: Record<string, Schema | null> = {}
      for (const [status, r] of Object.entries(op.responses as Record<string, { content?: Record<string, { schema: Schema }> }>)) {
        responses[status] = r.content?.['application/json']?.schema ?? null
      }
      out.push({
        id: op.operationId as string,
        method: method.toUpperCase(),
        path,
        pathParams: [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]),
        parameters: ((op.parameters ?? []) as Parameter[]).map((p) => ({ name: p.name, in: p.in, required: p.required, schema: p.schema })),
        requestBody: body?.content?.['application/json'] !== undefined ? { required: body.required === true, schema: body.content['application/json'].schema } : undefined,
        responses
      })
    }
  }
  for (const op of out) {
    for (const p of op.parameters) p.schema = toJsonSchema(p.schema)
    if (op.requestBody !== undefined) op.requestBody.schema = toJsonSchema(op.requestBody.schema)
    for (const status of Object.keys(op.responses)) op.responses[status] = op.responses[status] === null ? null : toJsonSchema(op.responses[status])
  }
  const missing = ids.filter((id) => !out.some((o) => o.id === id))
  if (missing.length > 0) throw new Error(`GitHub's OpenAPI description has no operations ${missing.join(', ')}`)
  return out
}

/**
 * OpenAPI 3.0's `nullable: true` as plain JSON Schema, which Ajv validates without special cases
 * (GitHub uses nullable beside anyOf/allOf too, where Ajv's own nullable support refuses to compile).
 */
function toJsonSchema (schema: unknown): Schema {
  if (Array.isArray(schema)) return schema.map((s) => toJsonSchema(s)) as unknown as Schema
  if (typeof schema !== 'object' || schema === null) return schema as Schema
  const out: Schema = {}
  for (const [k, v] of Object.entries(schema)) {
    if (k === 'example' || k === 'examples' || k === 'description') continue
    out[k] = typeof v === 'object' && v !== null && k !== 'enum' && k !== 'required' ? toJsonSchema(v) : v
  }
  if (out.nullable !== true) { delete out.nullable; return out }
  delete out.nullable
  if (typeof out.type === 'string' && out.anyOf === undefined && out.oneOf === undefined && out.allOf === undefined) {
    out.type = [out.type, 'null']
    if (Array.isArray(out.enum) && !out.enum.includes(null)) out.enum = [...out.enum, null]
    return out
  }
  return { anyOf: [out, { type: 'null' }] }
}

function pathRegex (path: string): RegExp {
  const params = [...path.matchAll(/\{([^}]+)\}/g)]
  let source = ''
  let last = 0
  params.forEach((m, i) => {
    source += path.slice(last, m.index).replace(/[.*+?^$()|[\]\\]/g, '\\$&')
    // A git ref ("heads/main") may arrive with its slash unescaped when it ends the path.
    source += m[1] === 'ref' && i === params.length - 1 && m.index + m[0].length === path.length ? '(.+)' : '([^/]+)'
    last = m.index + m[0].length
  })
  source += path.slice(last).replace(/[.*+?^$()|[\]\\]/g, '\\$&')
  return new RegExp(`^${source}$`)
}

// Compiling GitHub's large schemas (an issue embeds a whole repository) takes seconds, so each
// validator is compiled once and its generated code kept on disk next to the reduced description;
// later processes load the code instead of compiling. Vendor extensions abound: strict mode is off.
const strictAjv = addFormats(new Ajv({ strict: false, allErrors: false, validateFormats: true, code: { source: true, formats: _`require("ajv-formats/dist/formats").fullFormats` } }))
// Path and query parameters arrive as strings; coerce them the way GitHub's router does.
const paramAjv = addFormats(new Ajv({ strict: false, allErrors: true, coerceTypes: 'array', useDefaults: false }))
const compiled = new Map<string, ValidateFunction>()

function validator (ajv: Ajv, key: string, schema: Schema): ValidateFunction {
  let v = compiled.get(key)
  if (v !== undefined) return v
  if (ajv !== strictAjv || cacheDir === undefined) {
    v = ajv.compile(schema)
  } else {
    const file = join(cacheDir, `validator-${createHash('sha256').update(key).update(JSON.stringify(schema)).digest('hex').slice(0, 24)}.cjs`)
    try {
      v = require(file) as ValidateFunction
    } catch {
      v = ajv.compile(schema)
      const tmp = `${file}.${process.pid}.tmp`
      writeFileSync(tmp, standaloneCode(ajv, v))
      renameSync(tmp, file)
    }
  }
  compiled.set(key, v)
  return v
}

function errorsOf (v: ValidateFunction): string[] {
  return (v.errors ?? []).slice(0, 5).map((e) => `${e.instancePath === '' ? '(root)' : e.instancePath} ${e.message ?? ''}${e.params !== undefined ? ' ' + JSON.stringify(e.params) : ''}`)
}

/** Checks the path and query parameters; returns the coerced values and any violations. */
export function checkParams (op: Operation, pathValues: Record<string, string>, query: URLSearchParams): { values: Record<string, unknown>, errors: string[] } {
  const errors: string[] = []
  const values: Record<string, unknown> = {}
  const known = new Set(op.parameters.map((p) => `${p.in}:${p.name}`))
  for (const name of query.keys()) if (!known.has(`query:${name}`)) errors.push(`unknown query parameter "${name}"`)
  for (const p of op.parameters) {
    if (p.in === 'header') continue
    const raw = p.in === 'path' ? pathValues[p.name] : query.get(p.name) ?? undefined
    if (raw === undefined) {
      if (p.required === true) errors.push(`missing required ${p.in} parameter "${p.name}"`)
      continue
    }
    const holder = { value: raw as unknown }
    const v = validator(paramAjv, `${op.id}:param:${p.in}:${p.name}`, { type: 'object', properties: { value: p.schema } })
    if (!v(holder)) errors.push(...errorsOf(v).map((e) => `${p.in} parameter "${p.name}" = ${JSON.stringify(raw)}: ${e.replace('/value', '')}`))
    values[p.name] = holder.value
  }
  return { values, errors }
}

export function checkBody (op: Operation, body: unknown): string[] {
  if (op.requestBody === undefined) return body === undefined ? [] : ['this operation takes no request body']
  if (body === undefined) return op.requestBody.required ? ['missing required request body'] : []
  const v = validator(strictAjv, `${op.id}:body`, op.requestBody.schema)
  return v(body) ? [] : errorsOf(v).map((e) => `request body ${e}`)
}

export function checkResponse (op: Operation, status: number, body: unknown): string[] {
  if (!(String(status) in op.responses)) return [`status ${status} is not a documented response of ${op.id}`]
  const schema = op.responses[String(status)]
  if (schema === null) return body === undefined ? [] : [`status ${status} of ${op.id} has no body, but one was sent`]
  let v: ValidateFunction
  try {
    v = validator(strictAjv, `${op.id}:response:${status}`, schema)
  } catch (err) {
    return [`the response schema of ${op.id} ${status} does not compile: ${(err as Error).message}`]
  }
  return v(body) ? [] : errorsOf(v).map((e) => `response ${status} body ${e}`)
}

/**
 * A minimal instance of a response schema: every required property filled with a valid placeholder.
 * The stand-in sets the fields clawmesh reads and lets this fill the rest of GitHub's large objects;
 * the result is then validated like any other response, so a placeholder cannot hide a wrong type in
 * a field that was set explicitly.
 */
export function skeleton (schema: Schema | undefined): unknown {
  if (schema === undefined) return null
  if (Array.isArray(schema.allOf)) return Object.assign({}, ...(schema.allOf as Schema[]).map((s) => skeleton(s)))
  for (const key of ['oneOf', 'anyOf'] as const) {
    const branches = schema[key] as Schema[] | undefined
    if (Array.isArray(branches)) return branches.some((b) => b.type === 'null') ? null : skeleton(branches[0])
  }
  if (schema.nullable === true) return null
  if (Array.isArray(schema.type) && (schema.type as string[]).includes('null')) return null
  if (Array.isArray(schema.enum)) return (schema.enum as unknown[])[0]
  const type = Array.isArray(schema.type) ? (schema.type as string[]).find((t) => t !== 'null') : schema.type as string | undefined
  switch (type) {
    case 'object': {
      const out: Record<string, unknown> = {}
      const props = (schema.properties ?? {}) as Record<string, Schema>
      for (const name of (schema.required ?? []) as string[]) out[name] = skeleton(props[name])
      return out
    }
    case 'array': return []
    case 'integer': case 'number': return typeof schema.minimum === 'number' ? schema.minimum : 1
    case 'boolean': return false
    case 'string': {
      switch (schema.format) {
        case 'date-time': return '2026-01-01T00:00:00Z'
        case 'uri': case 'url': return 'https://github.com/'
        case 'email': return 'noreply@github.com'
        default: return ''
      }
    }
    default: return null
  }
}

/**
 * Builds a response from explicit values, filling every required property they leave out with a
 * placeholder from the schema (recursively, through arrays, allOf and the matching oneOf branch).
 */
export function build (schema: Schema | undefined, explicit: unknown): unknown {
  if (explicit === undefined) return skeleton(schema)
  if (schema === undefined || explicit === null) return explicit
  if (Array.isArray(schema.allOf)) {
    const parts = schema.allOf as Schema[]
    const merged: Schema = { type: 'object', properties: Object.assign({}, ...parts.map((p) => p.properties ?? {})), required: parts.flatMap((p) => (p.required ?? []) as string[]) }
    return build(merged, explicit)
  }
  for (const key of ['oneOf', 'anyOf'] as const) {
    if (Array.isArray(schema[key])) {
      const branches = schema[key] as Schema[]
      const kind = Array.isArray(explicit) ? 'array' : typeof explicit === 'object' ? 'object' : typeof explicit === 'number' ? 'number' : typeof explicit
      const branch = branches.find((b) => b.type === kind || (kind === 'number' && b.type === 'integer') || (kind === 'object' && b.type === undefined && b.properties !== undefined)) ?? branches[0]
      return build(branch, explicit)
    }
  }
  if (Array.isArray(explicit)) return explicit.map((e) => build(schema.items as Schema | undefined, e))
  if (isObject(explicit)) {
    const base = skeleton({ ...schema, nullable: false, type: 'object' }) as Record<string, unknown>
    const props = (schema.properties ?? {}) as Record<string, Schema>
    for (const [k, v] of Object.entries(explicit)) base[k] = build(props[k], v)
    return base
  }
  return explicit
}

function isObject (v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}
