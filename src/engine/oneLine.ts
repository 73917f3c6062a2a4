/**
 * The one escaping for text we did not write (names read from a server or from settings, error
 * texts) wherever it lands on a line of ours: a `--` or block comment of a generated SQL document,
 * a line of CLI output, a log line. A line break would end the comment (the rest becomes a
 * statement) or forge another line; so line breaks, every other control character, the Unicode
 * line and paragraph separators and the bidirectional overrides (which reorder what a reader sees)
 * are written as escapes, and a star followed by a slash cannot close a block comment.
 */
const ESCAPES: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

const UNSAFE = /[\p{Cc}\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]|\*\//gu;

export function oneLine(text: string): string {
  return text.replace(UNSAFE, (c) => (c === '*/' ? '*\\/' : ESCAPES[c] ?? `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`));
}
