import { oneLine } from '../engine/oneLine';
import { counted } from '../engine/units';

/**
 * Splits a script into statements the way psql does for the cases generated and hand-written
 * SQL use: semicolons outside quotes, quoted identifiers, dollar quotes and comments. No `vscode`.
 */
export function splitStatements(sql: string): string[] {
  const out: string[] = [];
  let start = 0;
  let i = 0;
  let meaningful = false;
  const push = (end: number) => {
    const text = sql.slice(start, end).trim();
    if (meaningful && text) out.push(text);
    meaningful = false;
  };
  while (i < sql.length) {
    const c = sql[i];
    const next = sql[i + 1];
    if (c === '-' && next === '-') {
      const nl = sql.indexOf('\n', i);
      i = nl === -1 ? sql.length : nl + 1;
      continue;
    }
    if (c === '/' && next === '*') {
      // Block comments nest in PostgreSQL.
      let depth = 1;
      i += 2;
      while (i < sql.length && depth > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') { depth++; i += 2; } else if (sql[i] === '*' && sql[i + 1] === '/') { depth--; i += 2; } else i++;
      }
      continue;
    }
    if (c === "'" || c === '"') {
      meaningful = true;
      // In E'...' strings a backslash escapes the next character, a quote included.
      const escapes = c === "'" && /[eE]/.test(sql[i - 1] ?? '') && !/[A-Za-z0-9_$]/.test(sql[i - 2] ?? '');
      i++;
      while (i < sql.length) {
        if (escapes && sql[i] === '\\') { i += 2; continue; }
        if (sql[i] === c) {
          if (sql[i + 1] === c) { i += 2; continue; }
          break;
        }
        i++;
      }
      i++;
      continue;
    }
    if (c === '$') {
      const m = /^\$([A-Za-z_][A-Za-z0-9_]*)?\$/.exec(sql.slice(i));
      if (m && !/[A-Za-z0-9_]/.test(sql[i - 1] ?? '')) {
        meaningful = true;
        const close = sql.indexOf(m[0], i + m[0].length);
        i = close === -1 ? sql.length : close + m[0].length;
        continue;
      }
    }
    if (c === ';') {
      push(i);
      start = i + 1;
      i++;
      continue;
    }
    if (!/\s/.test(c)) meaningful = true;
    i++;
  }
  push(sql.length);
  return out;
}

/** The statement without its leading comments, for one-line summaries. */
export function statementSummary(statement: string, max = 90): string {
  const body = statement.replace(/^(\s*--[^\n]*\n)+/g, '').replace(/\s+/g, ' ').trim();
  return body.length > max ? `${body.slice(0, max - 1)}…` : body;
}

/**
 * What Run SQL asks before it runs anything: the exact number of statements and every one of
 * them, numbered and in full, so nothing runs that the user was not shown.
 */
export function runConfirmation(statements: string[], where: string, what: string | null): { message: string; detail: string } {
  const count = counted(statements.length, 'statement');
  return {
    message: what ? `${what} on ${where}? (${count})` : `Run ${count} on ${where}?`,
    detail: statements.map((s, i) => `${i + 1}. ${oneLine(statementSummary(s, Infinity))}`).join('\n'),
  };
}
