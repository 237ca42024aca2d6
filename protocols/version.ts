// Wire-level constants. Bump PROTOCOL_VERSION when an envelope field changes meaning;
// peers reject envelopes of another version instead of guessing.
export const PROTOCOL_VERSION = 1

/** Largest envelope accepted from gossip, in bytes of its JSON encoding. */
export const MAX_ENVELOPE_BYTES = 64 * 1024

/** How far a sender's clock may run ahead of ours before its messages count as forged. */
export const MAX_CLOCK_SKEW_MS = 60_000

/** Longest lifetime a message may claim; it also bounds the replay guard's memory. */
export const MAX_TTL_MS = 15 * 60_000

/** Domain separation: a clawmesh envelope signature can never be replayed as another signed object. */
export const ENVELOPE_SIGNING_DOMAIN = 'clawmesh/envelope/v1\n'
