import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freshDatabases, runCli, sameContents, startCli, startPair, tableStates, waitAllReady, waitCaughtUp, type Pair } from '../harness/sync';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

function runArgs(sourceUrl: string, targetUrl: string, sub: string, ...extra: string[]): string[] {
  return ['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, ...extra];
}

describe('initial copy then streaming', () => {
  it('copies, then applies inserts, updates (with key changes), deletes, truncate; skips rolled-back work', async () => {
    const schema = `
      CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(12,2));
      CREATE TABLE events (id bigserial PRIMARY KEY, item int, note text);`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'basic', schema);
    await pair.source.query(db, `
      INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 20000) g;
      INSERT INTO events (item, note) SELECT g % 100, repeat('x', g % 50) FROM generate_series(1, 5000) g;
      CREATE PUBLICATION pub FOR TABLE items, events;`);
    const run = startCli(runArgs(sourceUrl, targetUrl, 'basic', '--publication', 'pub', '--table-sync-workers', '2'));
    try {
      await waitAllReady(pair.target, db, 'basic', 2);
      assert.ok(await sameContents(pair, db, 'items'), 'items after copy');
      assert.ok(await sameContents(pair, db, 'events'), 'events after copy');
      const copied = await pair.target.query(db, `SELECT tablename, rows_copied, bytes_copied, lsn IS NOT NULL AS has_lsn FROM _pg_live_sync.subscription_rel ORDER BY 1`);
      assert.deepEqual(copied.rows.map((r) => [r.tablename, Number(r.rows_copied), r.has_lsn]), [['events', 5000, true], ['items', 20000, true]]);
      assert.ok(copied.rows.every((r) => Number(r.bytes_copied) > 0));

      await pair.source.query(db, `
        INSERT INTO items VALUES (30001, 'new', 1.5), (30002, 'new2', NULL);
        UPDATE items SET name = 'renamed' WHERE id <= 100;
        UPDATE items SET id = id + 100000 WHERE id BETWEEN 101 AND 150;
        DELETE FROM items WHERE id BETWEEN 1000 AND 1999;
        BEGIN; INSERT INTO items VALUES (40000, 'rolled back', 0); UPDATE items SET name = 'nope'; DELETE FROM events; ROLLBACK;
        TRUNCATE events;
        INSERT INTO events (item, note) VALUES (1, 'after truncate'), (2, E'quote '' and\nnewline');`);
      await waitCaughtUp(pair, db, 'basic');
      assert.ok(await sameContents(pair, db, 'items'), 'items after streaming');
      assert.ok(await sameContents(pair, db, 'events'), 'events after streaming');
      const rolledBack = await pair.target.query(db, `SELECT count(*)::int AS n FROM items WHERE id = 40000 OR name = 'nope'`);
      assert.equal(rolledBack.rows[0].n, 0);
    } finally {
      assert.equal(await run.stop(), 0, run.output());
    }
    const applied = await pair.target.query(db, `SELECT applied_lsn IS NOT NULL AS ok FROM _pg_live_sync.subscription WHERE subname = 'basic'`);
    assert.equal(applied.rows[0].ok, true);
  });

  it('never overwrites unchanged TOAST values', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'toast', `CREATE TABLE docs (id int PRIMARY KEY, counter int, body text, blob bytea)`);
    await pair.source.query(db, `
      ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
      INSERT INTO docs SELECT g, 0, repeat(md5(g::text), 4000), decode(repeat(md5(g::text), 3000), 'hex') FROM generate_series(1, 20) g;
      CREATE PUBLICATION pub FOR TABLE docs;`);
    const run = startCli(runArgs(sourceUrl, targetUrl, 'toast', '--publication', 'pub'));
    try {
      await waitAllReady(pair.target, db, 'toast', 1);
      // Only `counter` changes: pgoutput sends body and blob as "unchanged TOAST".
      await pair.source.query(db, `UPDATE docs SET counter = counter + 1; UPDATE docs SET counter = counter + 1 WHERE id <= 10;`);
      // A row changed in the same transaction that inserted it: the values arrive in full.
      await pair.source.query(db, `BEGIN; INSERT INTO docs VALUES (100, 0, repeat('z', 100000), NULL); UPDATE docs SET counter = 5 WHERE id = 100; COMMIT;`);
      await waitCaughtUp(pair, db, 'toast');
      assert.ok(await sameContents(pair, db, 'docs'));
      const r = await pair.target.query(db, `SELECT count(*)::int AS n FROM docs WHERE length(body) = 128000 AND length(blob) = 48000`);
      assert.equal(r.rows[0].n, 20);
    } finally {
      assert.equal(await run.stop(), 0, run.output());
    }
  });

  it('replica identity FULL: duplicate rows stay duplicates, one row changes per change', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'full', `CREATE TABLE readings (sensor text, value float8, tags json, at timestamptz)`);
    await pair.source.query(db, `
      ALTER TABLE readings REPLICA IDENTITY FULL;
      INSERT INTO readings SELECT 's' || (g % 3), 1.5, '{"a": 12345678901234567890}', '2026-01-01 00:00:00.123456+00' FROM generate_series(1, 9) g;
      INSERT INTO readings VALUES (NULL, NULL, NULL, NULL), (NULL, NULL, NULL, NULL);
      CREATE PUBLICATION pub FOR TABLE readings;`);
    const run = startCli(runArgs(sourceUrl, targetUrl, 'full', '--publication', 'pub'));
    try {
      await waitAllReady(pair.target, db, 'full', 1);
      await pair.source.query(db, `
        UPDATE readings SET value = 2.5 WHERE ctid = (SELECT ctid FROM readings WHERE sensor = 's1' LIMIT 1);
        DELETE FROM readings WHERE ctid = (SELECT ctid FROM readings WHERE sensor = 's2' LIMIT 1);
        DELETE FROM readings WHERE ctid = (SELECT ctid FROM readings WHERE sensor IS NULL LIMIT 1);
        INSERT INTO readings VALUES ('s0', 1.5, '{"a": 12345678901234567890}', '2026-01-01 00:00:00.123456+00');
        UPDATE readings SET tags = '{"b": 1}' WHERE sensor = 's0';`);
      await waitCaughtUp(pair, db, 'full');
      assert.ok(await sameContents(pair, db, 'readings'));
      const counts = await pair.target.query(db, `SELECT sensor, count(*)::int AS n FROM readings GROUP BY 1 ORDER BY 1 NULLS LAST`);
      assert.deepEqual(counts.rows.map((r) => [r.sensor, r.n]), [['s0', 4], ['s1', 3], ['s2', 2], [null, 1]]);
    } finally {
      assert.equal(await run.stop(), 0, run.output());
    }
  });
});

describe('a table with no columns (001_rep_changes tab_no_col)', () => {
  it('its rows are copied, streamed and truncated', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'nocol', `CREATE TABLE tab_no_col ()`);
    await pair.source.query(db, `INSERT INTO tab_no_col DEFAULT VALUES; INSERT INTO tab_no_col DEFAULT VALUES;
      CREATE PUBLICATION pub FOR TABLE tab_no_col WITH (publish = 'insert, truncate');`);
    const count = async () => (await pair.target.query(db, `SELECT count(*)::int AS n FROM tab_no_col`)).rows[0].n as number;
    const run = startCli(runArgs(sourceUrl, targetUrl, 'nocol', '--publication', 'pub'));
    try {
      await waitAllReady(pair.target, db, 'nocol', 1);
      assert.equal(await count(), 2, 'copied');
      await pair.source.query(db, `INSERT INTO tab_no_col DEFAULT VALUES; INSERT INTO tab_no_col DEFAULT VALUES; INSERT INTO tab_no_col DEFAULT VALUES;`);
      await waitCaughtUp(pair, db, 'nocol');
      assert.equal(await count(), 5, 'streamed');
      await pair.source.query(db, `TRUNCATE tab_no_col; INSERT INTO tab_no_col DEFAULT VALUES;`);
      await waitCaughtUp(pair, db, 'nocol');
      assert.equal(await count(), 1, 'truncated, then one more');
    } finally {
      assert.equal(await run.stop(), 0, run.output());
    }
  });
});

describe('mapping and options', () => {
  it('table maps (one table and a whole schema), two publications, status and drop', async () => {
    const schema = `CREATE SCHEMA sales; CREATE TABLE public.metrics (id int PRIMARY KEY, v int); CREATE TABLE sales.orders (id int PRIMARY KEY, total numeric);`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'maps');
    await pair.source.query(db, schema + `
      INSERT INTO metrics SELECT g, g FROM generate_series(1, 100) g;
      INSERT INTO sales.orders SELECT g, g * 2 FROM generate_series(1, 50) g;
      CREATE PUBLICATION pub_metrics FOR TABLE metrics;
      CREATE PUBLICATION pub_sales FOR TABLE sales.orders;`);
    await pair.target.query(db, `CREATE TABLE public.metrics_data (id int PRIMARY KEY, v int, extra text DEFAULT 'x');
      CREATE SCHEMA analytics; CREATE TABLE analytics.orders (id int PRIMARY KEY, total numeric);`);
    const run = startCli(runArgs(sourceUrl, targetUrl, 'maps', '--publication', 'pub_metrics', '--publication', 'pub_sales',
      '--table-map', '{"source":{"schema":"public","table":"metrics"},"target":{"schema":"public","table":"metrics_data"}}',
      '--table-map', '{"source":{"schema":"sales"},"target":{"schema":"analytics"}}'));
    try {
      await waitAllReady(pair.target, db, 'maps', 2);
      await pair.source.query(db, `INSERT INTO metrics VALUES (101, 101); UPDATE sales.orders SET total = 0 WHERE id = 1; DELETE FROM metrics WHERE id = 2;`);
      await waitCaughtUp(pair, db, 'maps');
      assert.ok(await sameContents(pair, db, 'metrics', '(SELECT id, v FROM metrics_data)'));
      assert.ok(await sameContents(pair, db, 'sales.orders', 'analytics.orders'));
      const status = await runCli(['status', '--subscription', 'maps', '--target', targetUrl, '--json']);
      assert.equal(status.code, 0, status.stderr);
      const parsed = JSON.parse(status.stdout);
      assert.deepEqual(parsed.publications, ['pub_metrics', 'pub_sales']);
      assert.deepEqual(parsed.tables.map((t: { schema: string; targetSchema: string; targetTable: string; state: string }) => [t.schema, t.targetSchema, t.targetTable, t.state]),
        [['public', 'public', 'metrics_data', 'r'], ['sales', 'analytics', 'orders', 'r']]);
      assert.ok(!status.stdout.includes('sync-test-pw'), 'status must not show the password');
    } finally {
      assert.equal(await run.stop(), 0, run.output());
    }
    const text = await runCli(['status', '--subscription', 'maps'], { TARGET: targetUrl, SOURCE: sourceUrl });
    assert.match(text.stdout, /"sales"\."orders"\s+"analytics"\."orders"\s+r ready/);
    assert.match(text.stdout, /slot\s+inactive/);
    const dropped = await runCli(['drop', '--subscription', 'maps', '--source', sourceUrl, '--target', targetUrl]);
    assert.equal(dropped.code, 0, dropped.stderr);
    const slots = await pair.source.query(db, `SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = 'pg_live_sync_maps'`);
    assert.equal(slots.rows[0].n, 0);
    assert.deepEqual(await tableStates(pair.target, db, 'maps'), {});
    const kept = await pair.target.query(db, `SELECT count(*)::int AS n FROM metrics_data`);
    assert.equal(kept.rows[0].n, 100, 'drop keeps the target data');
  });

  it('--copy-data false syncs only changes made after the slot exists', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'nocopy', `CREATE TABLE t (id int PRIMARY KEY, v text)`);
    await pair.source.query(db, `INSERT INTO t SELECT g, 'old' FROM generate_series(1, 10) g; CREATE PUBLICATION pub FOR TABLE t;`);
    const run = startCli(runArgs(sourceUrl, targetUrl, 'nocopy', '--publication', 'pub', '--copy-data', 'false'));
    try {
      await waitAllReady(pair.target, db, 'nocopy', 1);
      await pair.source.query(db, `INSERT INTO t VALUES (11, 'new'), (12, 'new'); UPDATE t SET v = 'changed' WHERE id = 12;`);
      await waitCaughtUp(pair, db, 'nocopy');
      const rows = await pair.target.query(db, `SELECT id, v FROM t ORDER BY id`);
      assert.deepEqual(rows.rows, [{ id: 11, v: 'new' }, { id: 12, v: 'changed' }]);
    } finally {
      assert.equal(await run.stop(), 0, run.output());
    }
  });

  it('a change the target refuses stops the run with one line naming the table; fixing it and running again resumes', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'refused', `CREATE TABLE t (id int PRIMARY KEY, qty int)`);
    await pair.source.query(db, `INSERT INTO t VALUES (1, 1); CREATE PUBLICATION pub FOR TABLE t;`);
    await pair.target.query(db, `ALTER TABLE t ADD CONSTRAINT qty_small CHECK (qty < 100)`);
    const args = runArgs(sourceUrl, targetUrl, 'refused', '--publication', 'pub');
    const run = startCli(args);
    await waitAllReady(pair.target, db, 'refused', 1);
    await pair.source.query(db, `INSERT INTO t VALUES (2, 2); UPDATE t SET qty = 500 WHERE id = 1;`);
    assert.equal(await run.exited, 1);
    const errors = run.output().split('\n').filter((l) => l.startsWith('pg-live-sync: error:'));
    assert.equal(errors.length, 1, run.output());
    assert.match(errors[0], /"public"\."t".*qty_small.*run again/);
    const state = await pair.target.query(db, `SELECT last_error FROM _pg_live_sync.subscription WHERE subname = 'refused'`);
    assert.match(state.rows[0].last_error, /qty_small/);
    const atomic = await pair.target.query(db, `SELECT count(*)::int AS n FROM t WHERE id = 2`);
    assert.equal(atomic.rows[0].n, 0, 'the refused source transaction is not half applied');

    await pair.target.query(db, `ALTER TABLE t DROP CONSTRAINT qty_small`);
    const again = startCli(args);
    await waitCaughtUp(pair, db, 'refused');
    assert.ok(await sameContents(pair, db, 't'));
    assert.equal(await again.stop(), 0, again.output());
    const cleared = await pair.target.query(db, `SELECT last_error FROM _pg_live_sync.subscription WHERE subname = 'refused'`);
    assert.equal(cleared.rows[0].last_error, null);
  });
});
