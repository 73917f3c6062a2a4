import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  alive, commitLoop, freshDatabases, runCli, sameContents, startPair, tableFingerprint, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor, whileAlive,
  type Pair,
} from '../harness/sync';

let pair: Pair;
const startRun = trackRuns();
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

/** Tiny chunks, so tables of a few hundred kB split into dozens of chunks. */
const CHUNK = '16kB';
// Below run's 1 MiB minimum: the CLI takes it for tests only, from this (inherited by every run started here).
process.env.PG_LIVE_SYNC_TEST_SMALL_CHUNKS = '1';

const processAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function chunkCounts(db: string, sub: string, table: string): Promise<{ done: number; total: number }> {
  const r = await pair.target.query(db, `SELECT count(*) FILTER (WHERE done_at IS NOT NULL)::int AS done, count(*)::int AS total FROM _pg_live_sync.copy_chunk WHERE subname = $1 AND tablename = $2`, [sub, table]);
  return r.rows[0] as { done: number; total: number };
}

async function holders(db: string): Promise<number> {
  const r = await pair.source.query(db, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'pg_live_sync_snapshot' AND datname = current_database()`);
  return r.rows[0].n;
}

async function holderOsPids(db: string, sub: string): Promise<number[]> {
  const r = await pair.target.query(db, `SELECT holder_os_pid FROM _pg_live_sync.copy_snapshot WHERE subname = $1`, [sub]);
  return r.rows.map((row) => row.holder_os_pid as number);
}

/** A big table on the source and, on the target, a trigger that logs every row inserted into it, replicated or copied. */
const BIG = `CREATE TABLE big (id int PRIMARY KEY, pad text);`;
const BIG_TARGET_LOG = `CREATE TABLE ins_log (id int);
  CREATE FUNCTION log_ins() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$ BEGIN INSERT INTO ins_log VALUES (NEW.id); RETURN NEW; END $$;
  CREATE TRIGGER log_ins AFTER INSERT ON big FOR EACH ROW EXECUTE FUNCTION log_ins();
  ALTER TABLE big ENABLE ALWAYS TRIGGER log_ins;`;
const BIG_ROWS = 20_000;

async function diagnose(err: unknown, db: string, run: { output(): string }): Promise<never> {
  const slots = await pair.source.query(db, `SELECT slot_name, active, confirmed_flush_lsn::text, pg_current_wal_lsn()::text FROM pg_replication_slots`);
  const acts = await pair.source.query(db, `SELECT application_name, state, wait_event_type, wait_event, backend_xmin::text, left(query, 80) q FROM pg_stat_activity WHERE datname = current_database()`);
  const tacts = await pair.target.query(db, `SELECT application_name, state, wait_event_type, wait_event, backend_xid::text, left(query, 300) q FROM pg_stat_activity WHERE datname = current_database()`);
  throw new Error(`${String(err)}\n${JSON.stringify(slots.rows)}\n${JSON.stringify(acts.rows)}\n${JSON.stringify(tacts.rows)}\n${tail(run.output(), 8000)}`);
}

describe('chunked copy', () => {
  it('ctid ranges are read with a TID Range Scan', async () => {
    const { db } = await freshDatabases(pair, 'tidscan', BIG);
    const r = await pair.source.query(db, `EXPLAIN SELECT id FROM ONLY big WHERE ctid >= '(2,0)'::tid AND ctid < '(4,0)'::tid`);
    assert.match(r.rows.map((row) => row['QUERY PLAN']).join('\n'), /Tid Range Scan/);
  });

  it('is exact with and without a key, binary and text, a row filter and a quoted Unicode name, with writes during the copy; status shows chunks', async () => {
    const schema = `CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
      CREATE TABLE keyed (id int PRIMARY KEY, v int, pad text);
      CREATE TABLE nokey (a int, b text);
      CREATE TABLE "Zähler ""q""" (id int PRIMARY KEY, m mood, pad text);
      CREATE TABLE filtered (id int PRIMARY KEY, v int, pad text);`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'chunks', schema);
    await pair.source.query(db, `ALTER TABLE nokey REPLICA IDENTITY FULL;
      INSERT INTO keyed SELECT g, g, repeat('k', 60) FROM generate_series(1, 6000) g;
      INSERT INTO nokey SELECT g % 100, repeat('n', 60) FROM generate_series(1, 6000) g;
      INSERT INTO "Zähler ""q""" SELECT g, (ARRAY['sad','ok','happy'])[1 + g % 3]::mood, repeat('z', 60) FROM generate_series(1, 6000) g;
      INSERT INTO filtered SELECT g, g, repeat('f', 60) FROM generate_series(1, 6000) g;
      CREATE PUBLICATION pub FOR TABLE keyed, nokey, "Zähler ""q""", filtered WHERE (id % 2 = 0);`);
    const load = commitLoop(sourceUrl, (i) => `BEGIN;
      INSERT INTO keyed VALUES (${100_000 + i}, ${i}, 'new');
      UPDATE keyed SET v = v + 1 WHERE id = ${1 + (i * 37) % 6000};
      DELETE FROM keyed WHERE id = ${1 + (i * 53) % 6000};
      INSERT INTO nokey VALUES (${i % 100}, 'new');
      DELETE FROM nokey WHERE ctid = (SELECT ctid FROM nokey WHERE a = ${i % 100} LIMIT 1);
      UPDATE "Zähler ""q""" SET m = 'happy' WHERE id = ${1 + (i * 41) % 6000};
      INSERT INTO filtered VALUES (${100_000 + i}, ${i}, 'new');
      UPDATE filtered SET v = v + 1 WHERE id = ${1 + (i * 43) % 6000};
      COMMIT;`);
    const sub = 'chunks';
    const run = startRun(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--copy-chunk-size', CHUNK, '--table-sync-workers', '2']);
    try {
      await load.more(5);
      await whileAlive(run, 'all tables ready', async () => {
        const r = await pair.target.query(db, `SELECT count(*) FILTER (WHERE state = 'r')::int AS n FROM _pg_live_sync.subscription_rel`).catch(() => null);
        return r?.rows[0].n === 4;
      });
      await load.more(5);
    } finally {
      await load.stop();
    }
    await waitCaughtUp(pair, db, sub, 120_000, run);
    for (const t of ['keyed', 'nokey', '"Zähler ""q"""']) assert.ok(await sameContents(pair, db, t), `${t} matches\n${tail(run.output())}`);
    const [a, b] = await Promise.all([
      tableFingerprint(pair.source, db, '(SELECT * FROM filtered WHERE id % 2 = 0)'),
      tableFingerprint(pair.target, db, 'filtered'),
    ]);
    assert.deepEqual(b, a, 'the row filter applies to every chunk');
    assert.match(run.output(), /copied "public"\."keyed" -> "public"\."keyed" in \d+ chunks/);
    assert.match(run.output(), /in \d+ chunks: .*, text\)/, 'the enum table is copied as text');
    for (const t of ['keyed', 'nokey', 'Zähler "q"', 'filtered']) {
      const c = await chunkCounts(db, sub, t);
      assert.ok(c.total > 3 && c.done === c.total, `${t}: ${JSON.stringify(c)}`);
    }
    const json = await runCli(['status', '--subscription', sub, '--target', targetUrl, '--json']);
    const keyed = JSON.parse(json.stdout).tables.find((t: { table: string }) => t.table === 'keyed');
    assert.ok(keyed.chunks && keyed.chunks.done === keyed.chunks.total && keyed.chunks.total > 3, json.stdout);
    const text = await runCli(['status', '--subscription', sub, '--target', targetUrl]);
    assert.match(text.stdout, /CHUNKS/);
    assert.match(text.stdout, new RegExp(`"public"\\."keyed".*\\b${keyed.chunks.total} / ${keyed.chunks.total}\\b`));
    const rows = await pair.target.query(db, `SELECT sum(rows_copied)::int AS n FROM _pg_live_sync.copy_chunk WHERE tablename = 'keyed'`);
    const rel = await pair.target.query(db, `SELECT rows_copied::int AS n FROM _pg_live_sync.subscription_rel WHERE tablename = 'keyed'`);
    assert.equal(rel.rows[0].n, rows.rows[0].n, 'rows_copied is the sum over the chunks');
    await waitFor('no snapshot holder left', async () => (await holders(db)) === 0);
    assert.equal(await run.stop(), 0, run.output());
  });

  it('kill -9 mid-copy: the restart copies only the chunks not done, in the same snapshot, exactly', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'resume', BIG);
    await pair.target.query(db, BIG_TARGET_LOG);
    await pair.source.query(db, `INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, ${BIG_ROWS}) g; CREATE PUBLICATION pub FOR TABLE big;`);
    const sub = 'resume';
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--copy-chunk-size', CHUNK, '--table-sync-workers', '2'];
    const first = startRun(args);
    await whileAlive(first, 'some chunks done', async () => {
      const c = await chunkCounts(db, sub, 'big').catch(() => ({ done: 0, total: 0 }));
      return c.done >= 5;
    }, 60_000, 5);
    // Changes after the snapshot: they must arrive by the stream, once, not by the copy.
    const load = commitLoop(sourceUrl, (i) => `INSERT INTO big VALUES (${1_000_000 + i}, 'new'); UPDATE big SET pad = 'upd' WHERE id = ${1 + (i * 31) % BIG_ROWS}; DELETE FROM big WHERE id = ${1 + (i * 47) % BIG_ROWS};`);
    await load.more(3);
    await first.kill9();
    const before = await pair.target.query(db, `SELECT chunk, xmin::text AS x, done_at FROM _pg_live_sync.copy_chunk WHERE done_at IS NOT NULL ORDER BY chunk`);
    const total = (await chunkCounts(db, sub, 'big')).total;
    assert.ok(before.rows.length > 0 && before.rows.length < total, `killed mid-copy: ${before.rows.length} of ${total} chunks done`);
    const heldPids = await holderOsPids(db, sub);
    assert.equal(heldPids.length, 1);
    assert.ok(processAlive(heldPids[0]), 'the holder outlives the run');

    const second = startRun(args);
    try {
      await load.more(3);
    } finally {
      await load.stop();
    }
    await waitAllReady(pair.target, db, sub, 1, 180_000);
    await waitCaughtUp(pair, db, sub, 120_000, second).catch(async (err) => diagnose(err, db, second));
    assert.match(second.output(), /resuming the chunked copy of "public"\."big": \d+ of \d+ chunks were done/);
    assert.ok(await sameContents(pair, db, 'big'), tail(second.output()));
    const after = await pair.target.query(db, `SELECT chunk, xmin::text AS x, done_at FROM _pg_live_sync.copy_chunk WHERE chunk = ANY($1::int[]) ORDER BY chunk`, [before.rows.map((r) => r.chunk)]);
    assert.deepEqual(after.rows, before.rows, 'finished chunks were not copied again');
    // Every row inserted on the target once: the snapshot's rows by the copy, later ones by the stream.
    const inserted = (await pair.target.query(db, `SELECT count(*)::int AS n FROM ins_log`)).rows[0].n;
    const streamed = (await pair.source.query(db, `SELECT count(*)::int AS n FROM big WHERE id > 1000000`)).rows[0].n;
    assert.equal(inserted, BIG_ROWS + streamed, 'no row copied twice');
    await waitFor('the holders gone', async () => (await holders(db)) === 0 && !heldPids.some(processAlive));
    assert.equal((await holderOsPids(db, sub)).length, 0);
    assert.equal(await second.stop(), 0, second.output());
  });

  it('kill -9 of the run and its holder: the restart copies afresh, exactly', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'noholder', BIG);
    await pair.source.query(db, `INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, ${BIG_ROWS}) g; CREATE PUBLICATION pub FOR TABLE big;`);
    const sub = 'noholder';
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--copy-chunk-size', CHUNK, '--table-sync-workers', '2'];
    const first = startRun(args);
    await whileAlive(first, 'some chunks done', async () => (await chunkCounts(db, sub, 'big').catch(() => ({ done: 0 }))).done >= 3, 60_000, 5);
    const load = commitLoop(sourceUrl, (i) => `INSERT INTO big VALUES (${1_000_000 + i}, 'new'); UPDATE big SET pad = 'upd' WHERE id = ${1 + (i * 31) % BIG_ROWS};`);
    await load.more(3);
    await first.kill9();
    const heldPids = await holderOsPids(db, sub);
    for (const pid of heldPids) process.kill(pid, 'SIGKILL');
    await waitFor('the holder gone', async () => (await holders(db)) === 0);

    const second = startRun(args);
    try {
      await load.more(3);
    } finally {
      await load.stop();
    }
    await waitAllReady(pair.target, db, sub, 1, 180_000);
    await waitCaughtUp(pair, db, sub, 120_000, second).catch(async (err) => diagnose(err, db, second));
    assert.match(second.output(), /can no longer be imported/);
    assert.ok(await sameContents(pair, db, 'big'), tail(second.output()));
    assert.equal(await holders(db), 0);
    assert.equal(await second.stop(), 0, second.output());
  });

  it('a table that joins later, killed mid-copy through its own slot: the restart resumes its chunks there, exactly', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'joinresume', `${BIG} CREATE TABLE small (id int PRIMARY KEY);`);
    await pair.target.query(db, BIG_TARGET_LOG);
    await pair.source.query(db, `INSERT INTO small VALUES (1); INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, ${BIG_ROWS}) g; CREATE PUBLICATION pub FOR TABLE small;`);
    const sub = 'joinresume';
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--copy-chunk-size', CHUNK];
    const first = startRun(args);
    await waitAllReady(pair.target, db, sub, 1);
    await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE big`);
    await whileAlive(first, 'some chunks of the joined table done', async () => (await chunkCounts(db, sub, 'big').catch(() => ({ done: 0 }))).done >= 5, 60_000, 5);
    const load = commitLoop(sourceUrl, (i) => `INSERT INTO big VALUES (${1_000_000 + i}, 'new'); UPDATE big SET pad = 'upd' WHERE id = ${1 + (i * 31) % BIG_ROWS}; DELETE FROM big WHERE id = ${1 + (i * 47) % BIG_ROWS};`);
    await load.more(3);
    await first.kill9();
    const before = await pair.target.query(db, `SELECT chunk, xmin::text AS x, done_at FROM _pg_live_sync.copy_chunk WHERE done_at IS NOT NULL ORDER BY chunk`);
    const total = (await chunkCounts(db, sub, 'big')).total;
    assert.ok(before.rows.length > 0 && before.rows.length < total, `killed mid-copy: ${before.rows.length} of ${total} chunks done`);

    const second = startRun(args);
    try {
      await load.more(3);
    } finally {
      await load.stop();
    }
    await waitAllReady(pair.target, db, sub, 2, 180_000);
    await waitCaughtUp(pair, db, sub, 120_000, second).catch(async (err) => diagnose(err, db, second));
    assert.match(second.output(), /resuming the interrupted copy of public\.big in its snapshot/);
    assert.ok(await sameContents(pair, db, 'big'), tail(second.output()));
    const after = await pair.target.query(db, `SELECT chunk, xmin::text AS x, done_at FROM _pg_live_sync.copy_chunk WHERE chunk = ANY($1::int[]) ORDER BY chunk`, [before.rows.map((r) => r.chunk)]);
    assert.deepEqual(after.rows, before.rows, 'finished chunks were not copied again');
    const inserted = (await pair.target.query(db, `SELECT count(*)::int AS n FROM ins_log`)).rows[0].n;
    const streamed = (await pair.source.query(db, `SELECT count(*)::int AS n FROM big WHERE id > 1000000`)).rows[0].n;
    assert.equal(inserted, BIG_ROWS + streamed, 'no row copied twice');
    await waitFor('the holders gone', async () => (await holders(db)) === 0);
    assert.equal(await second.stop(), 0, second.output());
  });

  it('drop ends the holder of a copy cut short and removes its chunk rows', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'dropchunks', BIG);
    await pair.source.query(db, `INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, ${BIG_ROWS}) g; CREATE PUBLICATION pub FOR TABLE big;`);
    const sub = 'dropchunks';
    const first = startRun(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--copy-chunk-size', CHUNK]);
    await whileAlive(first, 'some chunks done', async () => (await chunkCounts(db, sub, 'big').catch(() => ({ done: 0 }))).done >= 2, 60_000, 5);
    await first.kill9();
    const heldPids = await holderOsPids(db, sub);
    assert.ok(heldPids.length === 1 && processAlive(heldPids[0]));
    const r = await runCli(['drop', '--subscription', sub, '--source', sourceUrl, '--target', targetUrl]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await chunkCounts(db, sub, 'big')).total, 0);
    await waitFor('the holder gone', async () => (await holders(db)) === 0 && !processAlive(heldPids[0]));
  });

  it('--copy-chunk-size refuses what is not a size', async () => {
    const r = await runCli(['run', '--source', 'postgres://x/y', '--target', 'postgres://x/z', '--publication', 'p', '--subscription', 's', '--copy-chunk-size', 'lots']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /--copy-chunk-size takes a size such as 256MiB or 0, not "lots"/);
  });
});

void alive;
