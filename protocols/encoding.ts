import canonicalizeModule from 'canonicalize'

// canonicalize ships CommonJS typed as an ES default export; under NodeNext the default is the module.
const canonicalize = canonicalizeModule as unknown as (input: unknown) => string | undefined

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** RFC 8785 canonical JSON: the bytes a signature covers must not depend on key order. */
export function canonicalBytes (value: unknown): Uint8Array {
  const text = canonicalize(value)
  if (text === undefined) throw new TypeError('value cannot be canonicalized to JSON')
  return encoder.encode(text)
}

export function utf8 (text: string): Uint8Array {
  return encoder.encode(text)
}

/** Strict UTF-8 decoding: invalid byte sequences are malformed input, not replacement characters. */
export function fromUtf8 (bytes: Uint8Array): string {
  return decoder.decode(bytes)
}

export function toBase64Url (bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url')
}

export function fromBase64Url (text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, 'base64url'))
}

export function concatBytes (...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let offset = 0
  for (const p of parts) { out.set(p, offset); offset += p.byteLength }
  return out
}
