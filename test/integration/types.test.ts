/**
 * Data types end to end: edge values of every common type must arrive byte-for-byte (as text) on
 * the target, through the initial copy (binary COPY for built-in types, text COPY as soon as a
 * column has a user-defined type) and through streaming (pgoutput text into INSERT/UPDATE params).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freshDatabases, sameContents, startCli, startPair, waitAllReady, waitCaughtUp, type Pair } from '../harness/sync';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

/** Column name, type, and SQL expressions for its edge values; row k takes value (k - 1) mod n. */
type Col = [name: string, type: string, values: string[]];

const BUILTIN: Col[] = [
  ['txt', 'text', [
    String.raw`E'quote '' dq " backslash \\ tab \t nl \n cr \r end'`,
    String.raw`'😀👍🏽 漢字かな 한국어 ' || U&'e\0301 n\0303 \+01F469\200D\+01F4BB'`,
    String.raw`'\N'`,
    String.raw`E'\\.\nsecond line\r\n'`,
    `''`,
    `repeat('long ✓ ', 3000)`,
  ]],
  ['n', 'numeric', [
    `'NaN'`,
    `'1234567890123456789012345678901234567890.123456789012345678901234567890'`,
    `'-1234567890123456789012345678901234567890.000000000000000000000000000001'`,
    `'-0.000000000000000000000000000001'`, `'Infinity'`, `'-Infinity'`, `'0.00'`,
  ]],
  ['f4', 'real', [`'NaN'`, `'Infinity'`, `'-Infinity'`, `'-0'`, `'1.17549435e-38'`, `'3.4028235e38'`, `'1.4e-45'`, `'0.1'`]],
  ['f8', 'double precision', [`'NaN'`, `'Infinity'`, `'-Infinity'`, `'-0'`, `'1e-308'`, `'4.9e-324'`, `'1.7976931348623157e308'`, `'0.1'`]],
  ['ts', 'timestamp', [`'2024-02-29 23:59:59.999999'`, `'infinity'`, `'-infinity'`, `'4713-01-01 00:00:00.000001 BC'`, `'294276-12-31 23:59:59.999999'`]],
  ['tstz', 'timestamptz', [`'2024-02-29 23:59:59.123456+05:30'`, `'infinity'`, `'-infinity'`, `'1900-01-01 00:00:00.000001+00'`, `'0044-03-15 12:00:00.5+00 BC'`]],
  ['d', 'date', [`'infinity'`, `'-infinity'`, `'2000-02-29'`, `'0001-01-01 BC'`, `'5874897-12-31'`]],
  ['bl', 'boolean', ['true', 'false']],
  ['ch', 'char(5)', [`'ab'`, `''`, `'12345'`]],
  ['i2', 'smallint', ['-32768', '32767', '0']],
  ['i4', 'integer', ['-2147483648', '2147483647', '0']],
  ['i8', 'bigint', ['-9223372036854775808', '9223372036854775807', '0']],
  ['j', 'json', [
    String.raw`'{"big": 12345678901234567890, "nested": {"emoji": "😀", "cjk": "漢字", "esc": "a\"b\\c\u00e9\u0000"}, "arr": [1.0, 1e400, null]}'`,
    `'{"a":1,  "a" : 2,"b":[ ]}'`, `'null'`,
  ]],
  ['jb', 'jsonb', [
    String.raw`'{"big": 12345678901234567890, "neg": -0.000000000000000000001, "u": "😀 漢字 \u00e9 \"q\" \\", "deep": {"a": [[1, {"b": null}]]}}'`,
    `'[]'`, `'"just a string"'`, `'null'`,
  ]],
  ['u', 'uuid', [`'00000000-0000-0000-0000-000000000000'`, `'ffffffff-ffff-ffff-ffff-ffffffffffff'`, `'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'`]],
  ['b', 'bytea', [`(SELECT decode(string_agg(lpad(to_hex(g), 2, '0'), '' ORDER BY g), 'hex') FROM generate_series(0, 255) g)`, String.raw`'\x'`, String.raw`'\x00'`]],
  ['bt', 'bit(8)', [`B'00000000'`, `B'11111111'`, `B'10100101'`]],
  ['vb', 'bit varying', [`B''`, `B'1'`, `B'1010101010101010101010101'`]],
  ['ai', 'integer[]', [`'{1,NULL,-2147483648}'`, `'{}'`, `'{NULL}'`, `'[0:2]={1,2,3}'`]],
  ['at', 'text[]', [String.raw`ARRAY['a,b', '{braces}', 'quote "dq" and ''sq''', 'back\slash', NULL, 'NULL', '', ' spaced ', E'nl\n']`, `'{}'`]],
  ['a2', 'integer[]', [`'{{1,2},{3,NULL}}'`, `'{{{1}},{{2}}}'`, `'{{NULL,NULL}}'`]],
  ['tv', 'tsvector', [String.raw`$$'it''s':1A 'back\\slash':2 fat:2B,4C 漢字:5 '😀'$$`, `''`, `to_tsvector('simple', 'The quick brown fox, the end')`]],
  ['ip', 'inet', [`'192.168.1.5/24'`, `'::1'`, `'2001:db8::ff00:42:8329/64'`, `'255.255.255.255'`, `'::ffff:1.2.3.4'`]],
  ['cn', 'cidr', [`'10.0.0.0/8'`, `'2001:db8::/32'`, `'0.0.0.0/0'`, `'::/0'`]],
  ['iv', 'interval', [`'-1 years -2 mons +3 days -04:05:06.789012'`, `'1 mon 2 days 00:00:00.000001'`, `'-178000000 years'`, `'P1Y2M3DT4H5M6.000007S'`, `'0'`]],
  ['r4', 'int4range', [`'empty'`, `'(,)'`, `'[1,10)'`, `'(,5]'`]],
  ['rtz', 'tstzrange', [`'empty'`, `'[2024-01-01 00:00:00.000001+00,infinity)'`, `'(,)'`, `'[-infinity,2024-01-01 00:00:00+00]'`]],
  ['rn', 'numrange', [`'empty'`, `'(,)'`, `'[-1.5,1234567890123456789012345678901234567890.123)'`, `'(0,)'`]],
  ['mo', 'money', [`'-92233720368547758.08'`, `'92233720368547758.07'`, `'0'`]],
];

const USER_TYPES = `
  CREATE TYPE mood AS ENUM ('sad', 'ok', 'very "happy"', 'it''s, {x}');
  CREATE DOMAIN short_text AS text CHECK (length(VALUE) <= 40);
  CREATE TYPE pair AS (label text, n int, tags text[]);`;

const USER: Col[] = [
  ['m', 'mood', [`'very "happy"'`, `'it''s, {x}'`, `'sad'`]],
  ['ma', 'mood[]', [`ARRAY['sad', NULL, 'it''s, {x}', 'very "happy"']::mood[]`, `'{}'`]],
  ['dm', 'short_text', [String.raw`E'tab\there \\ "q" ''s'''`, `''`, `'漢字😀'`]],
  ['c', 'pair', [String.raw`ROW(E'he said "hi", it''s (x) \\ {y}\n', NULL, ARRAY['a,b', NULL])`, `ROW(NULL, -1, '{}')`, `ROW('', NULL, NULL)`]],
];

const ALL = [...BUILTIN, ...USER];
const ROWS = Math.max(...ALL.map(([, , v]) => v.length)) + 1; // row 1 is NULL in every column

function createTable(name: string, cols: Col[]): string {
  return `CREATE TABLE ${name} (id int PRIMARY KEY, ${cols.map(([n, t]) => `${n} ${t}`).join(', ')});`;
}

/** Rows firstId .. firstId + ROWS - 1: the first NULL everywhere, the others cycling edge values. */
function insertRows(table: string, cols: Col[], firstId: number): string {
  const rows = Array.from({ length: ROWS }, (_, k) =>
    `(${firstId + k}, ${cols.map(([, type, v]) => (k === 0 ? `NULL::${type}` : `(${v[(k - 1) % v.length]})::${type}`)).join(', ')})`);
  return `INSERT INTO ${table} (id, ${cols.map(([n]) => n).join(', ')}) VALUES\n${rows.join(',\n')};`;
}

/** sameContents, and on a mismatch the rows (as text) found on only one side. */
async function assertSame(db: string, table: string, when: string): Promise<void> {
  if (await sameContents(pair, db, table)) return;
  const q = `SELECT t::text AS r FROM ${table} t`;
  const [a, b] = await Promise.all([pair.source.query(db, q), pair.target.query(db, q)]);
  const sa = new Set(a.rows.map((r) => r.r as string));
  const sb = new Set(b.rows.map((r) => r.r as string));
  const clip = (r: string) => (r.length > 300 ? r.slice(0, 300) + '…' : r);
  const only = (x: Set<string>, y: Set<string>) => [...x].filter((r) => !y.has(r)).map(clip);
  assert.fail(`${table} differs ${when}:\n only on source: ${JSON.stringify(only(sa, sb), null, 1)}\n only on target: ${JSON.stringify(only(sb, sa), null, 1)}`);
}

async function rowsCopied(db: string, sub: string): Promise<Record<string, number>> {
  const r = await pair.target.query(db, `SELECT tablename, rows_copied FROM _pg_live_sync.subscription_rel WHERE subname = $1`, [sub]);
  return Object.fromEntries(r.rows.map((row) => [row.tablename, Number(row.rows_copied)]));
}

function runArgs(sourceUrl: string, targetUrl: string, sub: string): string[] {
  return ['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--publication', 'pub'];
}

describe('data types', () => {
  it('edge values of every common type survive binary copy, text copy and streaming', async () => {
    // `builtin` copies in binary; `everything` (user types too) copies in text; `everything_full`
    // has REPLICA IDENTITY FULL, so its UPDATEs and DELETEs find rows by every old value (which
    // must match whatever the type's output function printed: bool `t`, inet `::1`, char(5) `ab   `).
    const tables = [['builtin', BUILTIN], ['everything', ALL], ['everything_full', ALL]] as const;
    const schema = USER_TYPES + tables.map(([t, cols]) => createTable(t, cols)).join('\n');
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'types', schema);
    await pair.source.query(db, `ALTER TABLE everything_full REPLICA IDENTITY FULL;
      ${tables.map(([t, cols]) => insertRows(t, cols, 1)).join('\n')}
      CREATE PUBLICATION pub FOR TABLE ${tables.map(([t]) => t).join(', ')};`);
    const run = startCli(runArgs(sourceUrl, targetUrl, 'types'));
    try {
      await waitAllReady(pair.target, db, 'types', 3);
      assert.deepEqual(await rowsCopied(db, 'types'), { builtin: ROWS, everything: ROWS, everything_full: ROWS });
      assert.match(run.output(), /copied "public"\."builtin" .*, binary\)/);
      assert.match(run.output(), /copied "public"\."everything" .*, text\)/);
      for (const [t] of tables) await assertSame(db, t, 'after the initial copy');

      for (const [table, cols] of tables) {
        const names = cols.map(([n]) => n).join(', ');
        await pair.source.query(db, `
          ${insertRows(table, cols, 101)}
          UPDATE ${table} d SET (${names}) = (SELECT ${names} FROM ${table} s WHERE s.id = d.id + 1) WHERE id IN (1, 2, 102);
          UPDATE ${table} SET (${names}) = (SELECT ${names} FROM ${table} WHERE id = 101) WHERE id IN (3, 103);
          UPDATE ${table} SET txt = E'upd\\t''"\\\\', n = 'NaN', f4 = '-0', f8 = '-Infinity', jb = '{"big": 98765432109876543210}',
                 b = '\\x00ff', ts = 'infinity', ai = '{NULL,NULL}', iv = '-00:00:00.000001', bl = NOT bl WHERE id IN (4, 104);
          UPDATE ${table} SET id = id + 1000 WHERE id IN (5, 105);
          DELETE FROM ${table} WHERE id IN (6, 106);`);
      }
      await waitCaughtUp(pair, db, 'types');
      const n = await pair.target.query(db, `SELECT count(*)::int AS n FROM everything WHERE length(b) = 256 AND id > 100`);
      assert.ok(n.rows[0].n > 0, 'the 256-byte bytea was streamed');
      for (const [t] of tables) await assertSame(db, t, 'after streaming');
    } finally {
      assert.equal(await run.stop(), 0, run.output());
    }
  });

  it('array-of-enum and composite columns force the text COPY path; rows_copied counts every row', async () => {
    const schema = USER_TYPES + `CREATE TABLE moods (id int PRIMARY KEY, feelings mood[], p pair);`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'textcopy', schema);
    const rowsSql = (from: number, to: number) => String.raw`
      INSERT INTO moods SELECT g,
        CASE g % 3 WHEN 0 THEN NULL WHEN 1 THEN ARRAY['sad', NULL, 'it''s, {x}', 'very "happy"']::mood[] ELSE '{}' END,
        CASE WHEN g % 7 = 0 THEN NULL ELSE ROW(E'line\n' || g || E'\r\t"q" \\ (a,b)', CASE WHEN g % 2 = 0 THEN g END, ARRAY[g::text, NULL, ''])::pair END
      FROM generate_series(${from}, ${to}) g;`;
    await pair.source.query(db, rowsSql(1, 2500) + ` CREATE PUBLICATION pub FOR TABLE moods;`);
    const run = startCli(runArgs(sourceUrl, targetUrl, 'textcopy'));
    try {
      await waitAllReady(pair.target, db, 'textcopy', 1);
      assert.deepEqual(await rowsCopied(db, 'textcopy'), { moods: 2500 });
      assert.match(run.output(), /copied "public"\."moods" .*, text\)/);
      await assertSame(db, 'moods', 'after the initial copy');
      await pair.source.query(db, rowsSql(2501, 2600) + `
        UPDATE moods SET feelings = feelings || 'ok'::mood, p = ROW('', NULL, '{}') WHERE id % 10 = 1;
        UPDATE moods SET p = NULL, feelings = '{NULL}' WHERE id IN (2, 2502);
        DELETE FROM moods WHERE id % 50 = 0;`);
      await waitCaughtUp(pair, db, 'textcopy');
      await assertSame(db, 'moods', 'after streaming');
    } finally {
      assert.equal(await run.stop(), 0, run.output());
    }
  });
});
