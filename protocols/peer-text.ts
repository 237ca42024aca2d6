/**
 * Strings chosen by peers (presence names, model names in a call, negotiation text, reasons) reach an
 * LLM's prompt, a transcript and a terminal. One set of rules for all of them, so that no path forgets:
 *
 * - control characters (C0, DEL, C1: terminal escape sequences, carriage returns that overwrite a
 *   line), Unicode direction overrides and isolates (text that reads differently than it is stored),
 *   zero-width characters and line/paragraph separators become a plain space;
 * - `<` and `>` become ‹ and › so that no peer string can open or close a tag in a prompt (the
 *   `<untrusted>` wrapper, a fake `<system>`);
 * - the result is cut to a bounded length.
 */
// eslint-disable-next-line no-control-regex
const INVISIBLE = /[\u0000-\u001f\u007f-\u009f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]/g

/** Peer text made inert for prompts, transcripts and terminals. */
export function peerText (s: unknown, max = 1000): string {
  return String(s ?? '').slice(0, max).replace(INVISIBLE, ' ').replace(/[<>]/g, (c) => (c === '<' ? '‹' : '›'))
}

/** A peer-chosen name (presence name, model name): peerText, short, never empty. */
export function peerName (s: unknown, fallback = '?'): string {
  const clean = peerText(s, 64).trim()
  return clean === '' ? fallback : clean
}
