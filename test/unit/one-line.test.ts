/** The one escaping for names in comments, documents and log lines (engine/oneLine). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { oneLine } from '../../src/engine/oneLine';
import { formatColumns } from '../../src/engine/units';
import { slotsDocument, slotsReport, type SyncSlot } from '../../src/engine/guardrails';
import { note } from '../../src/engine/sqlgen';
import { splitStatements, statementSummary } from '../../src/extension/sqlSplit';

/** The statements a document holds, without the comments before them. */
const statements = (sql: string) => splitStatements(sql).map((s) => statementSummary(s, Infinity));

const EVIL = 'x\n; DROP TABLE accounts; --';

describe('oneLine', () => {
  it('escapes line feeds, carriage returns, tabs and every other control character', () => {
    assert.equal(oneLine('a\nb\r\nc\td'), 'a\\nb\\r\\nc\\td');
    assert.equal(oneLine('\u0000\u0007\u000b\u000c\u001b\u007f\u0085'), '\\u0000\\u0007\\u000b\\u000c\\u001b\\u007f\\u0085');
  });

  it('escapes the Unicode line and paragraph separators and the bidirectional controls', () => {
    assert.equal(oneLine('a\u2028b\u2029c'), 'a\\u2028b\\u2029c');
    assert.equal(oneLine('\u202eevil\u202c \u2066x\u2069 \u200f\u061c'), '\\u202eevil\\u202c \\u2066x\\u2069 \\u200f\\u061c');
  });

  it('cannot close a block comment', () => {
    assert.equal(oneLine('a */ DROP TABLE t; /* b'), 'a *\\/ DROP TABLE t; /* b');
    assert.deepEqual(splitStatements(`/* ${oneLine('x */ DROP TABLE t; /*')} */`), []);
  });

  it('leaves ordinary names alone, Unicode included, and is idempotent', () => {
    for (const s of ['public.orders', '"weird ""name"""', 'Datenbank ü 🐘', 'a/b*c', 'back\\slash']) assert.equal(oneLine(s), s);
    const once = oneLine(`${EVIL}\u2028*/\u0007`);
    assert.equal(oneLine(once), once);
  });

  it('a name put through it stays one line: no line of the result is a statement', () => {
    for (const brk of ['\n', '\r', '\r\n', '\u2028', '\u2029', '\u0085', '\u000b', '\u000c']) {
      const text = note(`slot owned by x${brk}DROP TABLE accounts; --`);
      assert.equal(text.split(/\r\n|[\n\r\u2028\u2029\u0085\u000b\u000c]/).length, 1, JSON.stringify(brk));
      assert.deepEqual(splitStatements(text), [], JSON.stringify(brk));
    }
  });

  it('formatColumns keeps one row on one line', () => {
    const lines = formatColumns([['NAME', 'OWNER'], [EVIL, 'a\u2028b']]);
    assert.equal(lines.length, 2);
    assert.equal(lines.join('\n').split('\n').length, 2);
  });
});

describe('List Sync Slots document and slots listing', () => {
  const slot = (name: string, owner: string | null, active = false): SyncSlot => ({
    name, active, walStatus: 'reserved', retainedBytes: 1024, owner, dropSql: owner === null && !active ? `SELECT pg_drop_replication_slot('${name}');` : null,
  });
  const found = [slot('pg_live_sync_a', `subscription ${EVIL} on t (h:5432/db)`), slot(`pg_live_sync_${EVIL}`, null, true), slot('pg_live_sync_ghost', null)];

  it('holds only the intended drop statements, whatever the names hold', () => {
    const doc = slotsDocument(`conn${EVIL}`, found, `the targets of this window's syncs (t${EVIL})`);
    assert.deepEqual(statements(doc), [`SELECT pg_drop_replication_slot('pg_live_sync_ghost')`], doc);
    assert.ok(doc.split('\n').every((l) => l === '' || l.startsWith('-- ') || l === `SELECT pg_drop_replication_slot('pg_live_sync_ghost');`), doc);
    assert.match(doc, /subscription x\\n; DROP TABLE accounts; -- on t/);
  });

  it('the CLI listing has one line per slot', () => {
    const { listing, orphans } = slotsReport(found, `any target${EVIL}`);
    assert.equal(listing.length, 1 + found.length);
    assert.equal([...listing, ...orphans].join('\n').split('\n').length, listing.length + orphans.length);
  });
});
