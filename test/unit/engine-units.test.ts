import assert from 'node:assert/strict';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, it } from 'node:test';
import { qualified } from '../../src/engine/connection';
import { BinaryRowCounter, chunkRanges, TextRowCounter } from '../../src/engine/copy';
import { SyncError } from '../../src/engine/errors';
import { formatLsn, parseLsn } from '../../src/engine/lsn';
import { validateSubscriptionName } from '../../src/engine/slot';
import { mappedColumn, parseTableMap, parseTableName, resolveColumnMap, resolveTarget } from '../../src/engine/tablemap';

describe('LSN', () => {
  it('parses both spellings the replication library uses and compares as 64-bit numbers', () => {
    assert.equal(parseLsn('0/155F488'), parseLsn('00000000/0155F488'));
    assert.ok(parseLsn('0/FFFFFFFF') < parseLsn('1/0'));
    assert.ok(parseLsn('0/9') < parseLsn('0/10'));
    assert.ok('0/9' > '0/10', 'string comparison would get this wrong');
    assert.equal(formatLsn(parseLsn('16/B374D848')), '16/B374D848');
    assert.throws(() => parseLsn('not an lsn'));
  });
});

describe('table map', () => {
  const table = parseTableMap('{"source":{"schema":"public","table":"metrics"},"target":{"schema":"public","table":"metrics_data"}}');
  const schema = parseTableMap('{"source":{"schema":"public"},"target":{"schema":"analytics"}}');
  it('maps one table, a whole schema, and leaves the rest alone; a table map wins over a schema map', () => {
    assert.deepEqual(resolveTarget([schema, table], { schema: 'public', table: 'metrics' }), { schema: 'public', table: 'metrics_data' });
    assert.deepEqual(resolveTarget([schema, table], { schema: 'public', table: 'orders' }), { schema: 'analytics', table: 'orders' });
    assert.deepEqual(resolveTarget([schema, table], { schema: 'sales', table: 'orders' }), { schema: 'sales', table: 'orders' });
  });
  it('rejects malformed maps with a usage error that shows the accepted forms', () => {
    for (const bad of ['{', '{"source":{"schema":"a"}}', '{"source":{"schema":"a"},"target":{"schema":"b","table":"t"}}', '{"source":{"schema":""},"target":{"schema":"b"}}']) {
      assert.throws(() => parseTableMap(bad), (e: unknown) => e instanceof SyncError && e.code === 'usage' && /--table-map/.test(e.message), bad);
    }
  });
  it('reads a column map on a table map: a string renames, null leaves out, names exactly as written', () => {
    const m = parseTableMap('{"source":{"schema":"public","table":"users"},"target":{"schema":"public"},"columns":{"Email":"email_address","pw":null,"Ünï Ç":"u"}}');
    assert.deepEqual(m.columns, { Email: 'email_address', pw: null, 'Ünï Ç': 'u' });
    assert.deepEqual(resolveColumnMap([schema, m], { schema: 'public', table: 'users' }), m.columns);
    assert.deepEqual(resolveColumnMap([schema, m], { schema: 'public', table: 'orders' }), {});
    assert.equal(mappedColumn(m.columns!, 'Email'), 'email_address');
    assert.equal(mappedColumn(m.columns!, 'email'), 'email', 'no case folding: an unmapped name keeps its own');
    assert.equal(mappedColumn(m.columns!, 'pw'), null);
    assert.equal(mappedColumn(m.columns!, 'toString'), 'toString', 'only the map\'s own keys count');
    assert.equal(parseTableMap('{"source":{"schema":"a","table":"t"},"target":{"schema":"b"}}').columns, undefined, 'the old form is unchanged');
  });
  it('refuses a bad column map with one usage line that says what to do', () => {
    const cases: [string, RegExp][] = [
      ['{"source":{"schema":"a"},"target":{"schema":"b"},"columns":{"x":"y"}}', /whole-schema map.*give "source.table"/],
      ['{"source":{"schema":"a","table":"t"},"target":{"schema":"b"},"columns":["x"]}', /must be an object/],
      ['{"source":{"schema":"a","table":"t"},"target":{"schema":"b"},"columns":{"x":1}}', /give the target column's name as a string, or null/],
      ['{"source":{"schema":"a","table":"t"},"target":{"schema":"b"},"columns":{"x":""}}', /give the target column's name/],
      ['{"source":{"schema":"a","table":"t"},"target":{"schema":"b"},"columns":{"x":"z","y":"z"}}', /both "x" and "y" onto target column "z".*own target name/],
    ];
    for (const [bad, why] of cases) {
      assert.throws(() => parseTableMap(bad), (e: unknown) => e instanceof SyncError && e.code === 'usage' && why.test(e.message) && !e.message.includes('\n'), bad);
    }
  });
});

describe('table names (--table)', () => {
  it('reads SCHEMA.TABLE as SQL does: plain parts fold to lower case, quoted parts are kept, dots inside quotes are names', () => {
    assert.deepEqual(parseTableName('Public.Orders'), { schema: 'public', table: 'orders' });
    assert.deepEqual(parseTableName('"x.y".z'), { schema: 'x.y', table: 'z' });
    assert.deepEqual(parseTableName('x."y.z"'), { schema: 'x', table: 'y.z' });
    assert.deepEqual(parseTableName('"My ""Schema"""."Ünï.T"'), { schema: 'My "Schema"', table: 'Ünï.T' });
    assert.deepEqual(parseTableName('café.t$1'), { schema: 'café', table: 't$1' });
  });
  it('reads back the quoted names the CLI prints', () => {
    for (const t of [{ schema: 'public', table: 'orders' }, { schema: 'x.y', table: 'z' }, { schema: 'My "Schema"', table: 'Ünï.T' }, { schema: 'a', table: 'Big' }]) {
      assert.deepEqual(parseTableName(qualified(t.schema, t.table)), t);
    }
  });
  it('refuses anything else with a usage error that shows the form', () => {
    for (const bad of ['', 'orders', 'a.b.c', '"a.b', 'a.', '.b', 'a.""', 'a b.c', 'a.b;drop', '1a.b']) {
      assert.throws(() => parseTableName(bad), (e: unknown) => e instanceof SyncError && e.code === 'usage' && /SCHEMA\.TABLE/.test(e.message), bad);
    }
  });
});

describe('subscription names', () => {
  it('accepts slot-safe names only', () => {
    validateSubscriptionName('orders_2026');
    for (const bad of ['', 'Orders', 'a-b', 'x'.repeat(51), 'drop table']) assert.throws(() => validateSubscriptionName(bad), SyncError, bad);
  });
});

async function countRows(counter: TextRowCounter | BinaryRowCounter, chunks: Buffer[]): Promise<number> {
  await pipeline(Readable.from(chunks), counter, new Writable({ write: (_c, _e, cb) => cb() }));
  return counter.rows;
}

/** A binary COPY stream: header, rows of (int4, text or NULL), trailer. */
function binaryCopy(rows: (string | null)[]): Buffer {
  const parts = [Buffer.from('PGCOPY\n\xff\r\n\0', 'latin1'), Buffer.alloc(8)];
  rows.forEach((text, i) => {
    const head = Buffer.alloc(10);
    head.writeInt16BE(2, 0);
    head.writeInt32BE(4, 2);
    head.writeInt32BE(i, 6);
    parts.push(head);
    const len = Buffer.alloc(4);
    if (text === null) {
      len.writeInt32BE(-1, 0);
      parts.push(len);
    } else {
      const body = Buffer.from(text);
      len.writeInt32BE(body.length, 0);
      parts.push(len, body);
    }
  });
  const trailer = Buffer.alloc(2);
  trailer.writeInt16BE(-1, 0);
  parts.push(trailer);
  return Buffer.concat(parts);
}

function split(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}

describe('copy row counters', () => {
  it('count binary COPY rows whatever the chunk boundaries', async () => {
    const rows = Array.from({ length: 500 }, (_, i) => (i % 7 === 0 ? null : 'x'.repeat(i % 40)));
    const data = binaryCopy(rows);
    for (const size of [1, 2, 3, 5, 64, 4096, data.length]) {
      assert.equal(await countRows(new BinaryRowCounter(), split(data, size)), 500, `chunk size ${size}`);
    }
  });
  it('count text COPY rows by their terminating newline', async () => {
    const data = Buffer.from('1\ta\\nb\n2\t\\N\n3\tc\n');
    assert.equal(await countRows(new TextRowCounter(), split(data, 3)), 3);
  });
});

describe('sizes (--copy-chunk-size, --warn-retained-wal)', () => {
  it('reads PostgreSQL units and IEC units as powers of 1024, bare numbers as bytes, and 0', async () => {
    const { parseSize } = await import('../../src/engine/units');
    assert.equal(parseSize('256MB'), 256 * 1024 ** 2);
    assert.equal(parseSize('256MiB'), 256 * 1024 ** 2);
    assert.equal(parseSize('16kB'), 16 * 1024);
    assert.equal(parseSize('1.5 GB'), 1.5 * 1024 ** 3);
    assert.equal(parseSize('4096'), 4096);
    assert.equal(parseSize('0'), 0);
    assert.equal(parseSize('lots'), null);
    assert.equal(parseSize('-1MB'), null);
  });
});

describe('chunk plan', () => {
  const widths = (pages: number, chunkPages: number) => chunkRanges(pages, chunkPages).map((c) => (c.endPage ?? pages) - c.firstPage);

  it('splits into as many ranges as the chunk size needs, of equal size (within a page), covering every page once', () => {
    // 321 MB in 256 MiB chunks: two halves, not 256 MiB and a 65 MB remainder.
    assert.deepEqual(widths(39_185, 32_768), [19_592, 19_593]);
    for (const [pages, size] of [[101, 10], [7, 3], [1_000_003, 4_096], [5, 5], [1, 1], [3, 10]]) {
      const r = chunkRanges(pages, size);
      assert.equal(r.length, Math.ceil(pages / size));
      const w = widths(pages, size);
      assert.ok(Math.max(...w) <= size && Math.max(...w) - Math.min(...w) <= 1, `${pages}/${size}: ${w}`);
      assert.equal(w.reduce((a, b) => a + b, 0), pages);
      r.forEach((c, i) => assert.equal(c.firstPage, i === 0 ? 0 : r[i - 1].endPage));
      assert.equal(r[r.length - 1].endPage, null, 'the last range is open-ended');
    }
  });
});
