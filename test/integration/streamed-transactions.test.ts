/**
 * Transactions the source streams while they are still open (protocol 2, spool.ts): the source runs
 * with logical_decoding_work_mem 64kB, so any transaction of a few thousand rows is streamed in
 * segments before its commit. Each test checks the source did stream (pg_stat_replication_slots),
 * then that the target gets each transaction whole, once, in commit order.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startCluster, type Cluster } from '../harness/cluster';
import { freshDatabases, pg, sameContents, startCli, waitAllReady, waitCaughtUp, waitFor, type CliRun, type Pair } from '../harness/sync';
import { spoolDirFor } from '../../src/engine/spool';

let pair: Pair;
const spoolBase = mkdtempSync(path.join(tmpdir(), 'pgls-spool-test-'));
before(async () => {
  const [source, target] = await Promise.all([
    startCluster({ name: 'strsrc', settings: { logical_decoding_work_mem: "'64kB'" } }),
    // Commit times order the target's transactions: two target connections commit (openApply.ts).
    startCluster({ name: 'strtgt', settings: { track_commit_timestamp: 'on' } }),
  ]);
  pair = { source, target, stop: () => [source, target].forEach((c) => c.stop()) };
});
after(() => {
  pair?.stop();
  rmSync(spoolBase, { recursive: true, force: true });
});

/** Spool files under the test's --spool-dir. */
function spoolFiles(): string[] {
  if (!existsSync(spoolBase)) return [];
  return readdirSync(spoolBase, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.spool'));
}

/** What the source's walsender has streamed on the sync's slot so far: open transactions and their bytes. */
async function streamed(db: string, sub: string): Promise<{ txns: number; bytes: number }> {
  const r = await pair.source.query(db, `SELECT stream_txns::int AS txns, stream_bytes::bigint AS bytes FROM pg_stat_replication_slots WHERE slot_name = $1`, [`pg_live_sync_${sub}`]);
  return { txns: r.rows[0]?.txns ?? 0, bytes: Number(r.rows[0]?.bytes ?? 0) };
}

async function syncing(sub: string, schema: string, sourceSetup = '', extra: string[] = []): Promise<{ db: string; args: string[]; run: CliRun; sourceUrl: string }> {
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, schema);
  await pair.source.query(db, `${sourceSetup}; CREATE PUBLICATION pub FOR ALL TABLES`);
  const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--publication', 'pub', '--spool-dir', spoolBase, ...extra];
  const run = startCli(args);
  const tables = (await pair.source.query(db, `SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'`)).rows[0].n;
  await Promise.race([
    waitAllReady(pair.target, db, sub, tables, 120_000),
    run.exited.then((code) => Promise.reject(new Error(`the sync exited (${code}) before every table was ready:\n${run.output()}`))),
  ]);
  await waitCaughtUp(pair, db, sub, 120_000, run);
  return { db, args, run, sourceUrl };
}

async function stopOk(run: CliRun): Promise<void> {
  if (run.proc.exitCode !== null) return;
  assert.equal(await run.stop(), 0, run.output());
}

async function sourceSession(db: string): Promise<pg.Client> {
  const c = new pg.Client({ connectionString: pair.source.url(db) });
  await c.connect();
  return c;
}

async function count(c: Cluster, db: string, sql: string): Promise<number> {
  return (await c.query(db, sql)).rows[0].n;
}

describe('transactions streamed while open', () => {
  it('a big open transaction is streamed and spooled, nothing is applied before its COMMIT, then all of it once', async () => {
    const { db, run } = await syncing('st_big', `CREATE TABLE big (id int PRIMARY KEY, v text); CREATE TABLE small (id int PRIMARY KEY)`);
    const open = await sourceSession(db);
    try {
      await open.query('BEGIN');
      await open.query(`INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 40000) g`);
      await open.query(`UPDATE big SET v = 'updated' WHERE id % 7 = 0`);
      await open.query(`DELETE FROM big WHERE id % 11 = 0`);
      await waitFor('the open transaction streamed to the sync and spooled', async () => (await streamed(db, 'st_big')).bytes > 1_000_000 && spoolFiles().length > 0, 60_000);
      // Other transactions commit and apply meanwhile.
      await pair.source.query(db, `INSERT INTO small VALUES (1), (2)`);
      await waitCaughtUp(pair, db, 'st_big', 60_000, run);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM small`), 2, 'a small transaction committed meanwhile is applied');
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM big`), 0, 'nothing of the open transaction is applied');
      await open.query(`INSERT INTO big SELECT g, 'tail' FROM generate_series(40001, 45000) g`);
      await open.query('COMMIT');
      await waitCaughtUp(pair, db, 'st_big', 120_000, run);
      assert.ok(await sameContents(pair, db, 'big'), 'big after the commit');
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM big`), 45000 - Math.floor(40000 / 11));
      assert.ok((await streamed(db, 'st_big')).txns >= 1, 'the source streamed it');
      assert.deepEqual(spoolFiles(), [], 'the spool file is gone after its commit');
      await stopOk(run);
      assert.match(run.output(), /stopped at .* \(1 of them streamed while open, [\d.]+ MiB spooled, 1 applied while open\)/);
    } finally {
      await open.end();
      await stopOk(run);
    }
  });

  it('ROLLBACK TO SAVEPOINT and ROLLBACK of streamed transactions: only what committed arrives', async () => {
    // `late` is first touched inside a subtransaction that rolls back: its Relation message is in
    // the cut part of the spool, and the source does not send it again for this transaction.
    const { db, run } = await syncing('st_sub', `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE late (id int PRIMARY KEY, v text)`);
    const s = await sourceSession(db);
    try {
      await s.query('BEGIN');
      await s.query(`INSERT INTO t SELECT g, 'top' FROM generate_series(1, 10000) g`);
      await s.query('SAVEPOINT a');
      await s.query(`INSERT INTO late SELECT g, 'rolled back' FROM generate_series(1, 5000) g`);
      await s.query(`INSERT INTO t SELECT g, 'rolled back' FROM generate_series(10001, 20000) g`);
      await waitFor('the subtransaction streamed', async () => (await streamed(db, 'st_sub')).bytes > 500_000, 60_000);
      await s.query('ROLLBACK TO SAVEPOINT a');
      await s.query(`INSERT INTO late SELECT g, 'kept' FROM generate_series(1, 3000) g`);
      await s.query('SAVEPOINT b');
      await s.query(`INSERT INTO t SELECT g, 'released' FROM generate_series(20001, 26000) g`);
      await s.query('SAVEPOINT c');
      await s.query(`UPDATE t SET v = 'rolled back too' WHERE id <= 5000`);
      await s.query('ROLLBACK TO SAVEPOINT c');
      await s.query('RELEASE SAVEPOINT b');
      await s.query(`UPDATE t SET v = 'top again' WHERE id % 100 = 0`);
      await s.query('COMMIT');
      // A whole streamed transaction that rolls back.
      await s.query('BEGIN');
      await s.query(`INSERT INTO t SELECT g, 'never' FROM generate_series(100001, 130000) g`);
      const before = (await streamed(db, 'st_sub')).bytes;
      await waitFor('the doomed transaction streamed', async () => (await streamed(db, 'st_sub')).bytes > before + 500_000, 60_000);
      await s.query('ROLLBACK');
      await pair.source.query(db, `INSERT INTO t VALUES (200000, 'after the rollback')`);
      await waitCaughtUp(pair, db, 'st_sub', 120_000, run);
      for (const table of ['t', 'late']) assert.ok(await sameContents(pair, db, table), `${table} after savepoints and rollbacks`);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM t`), 16001);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM late WHERE v = 'kept'`), 3000);
      assert.deepEqual(spoolFiles(), [], 'no spool file left after the commit and the rollback');
    } finally {
      await s.end();
      await stopOk(run);
    }
    // The savepoints were the target transaction's own, not a fall back to the spool.
    assert.match(run.output(), /, 1 applied while open\)/);
    assert.doesNotMatch(run.output(), /applying it while open stopped/);
  });

  it('a row committed between two segments of an open transaction is there for its later changes', async () => {
    // Applied while open, segment 2's UPDATE of row -1 must see the small transaction that
    // committed on the source before it: the target commits that first, before applying segment 2.
    const { db, run } = await syncing('st_between', `CREATE TABLE t (id int PRIMARY KEY, v text)`);
    const open = await sourceSession(db);
    try {
      await open.query(`BEGIN; INSERT INTO t SELECT g, 'bulk' FROM generate_series(1, 20000) g`);
      await waitFor('segment 1 streamed', async () => (await streamed(db, 'st_between')).bytes > 500_000, 60_000);
      for (let i = 1; i <= 20; i++) await pair.source.query(db, `INSERT INTO t VALUES (-${i}, 'small')`);
      await open.query(`UPDATE t SET v = 'updated by the open one' WHERE id < 0; INSERT INTO t SELECT g, 'bulk' FROM generate_series(20001, 40000) g; COMMIT`);
      await waitCaughtUp(pair, db, 'st_between', 120_000, run);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM t WHERE v = 'updated by the open one'`), 20);
      assert.ok(await sameContents(pair, db, 't'));
    } finally {
      await open.end();
      await stopOk(run);
    }
    assert.match(run.output(), /, 1 applied while open\)/);
    assert.doesNotMatch(run.output(), /found no row/);
  });

  it('open streamed transactions interleaved with small ones apply in source commit order', async () => {
    const { db, run } = await syncing('st_order', `CREATE TABLE bulk (id int, who text); CREATE TABLE marks (label text)`,
      `ALTER TABLE bulk REPLICA IDENTITY FULL; ALTER TABLE marks REPLICA IDENTITY FULL`);
    // On the target only: a trigger that fires for applied rows too and records their order
    // within a target transaction; the target transactions are ordered by their commit times
    // (one is applied while open on its own connection, so its rows are written early).
    await pair.target.query(db, `CREATE TABLE applied_order (seq bigserial PRIMARY KEY, label text);
      CREATE FUNCTION note_mark() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$ BEGIN INSERT INTO applied_order (label) VALUES (NEW.label); RETURN NEW; END $$;
      CREATE TRIGGER note_mark AFTER INSERT ON marks FOR EACH ROW EXECUTE FUNCTION note_mark();
      ALTER TABLE marks ENABLE ALWAYS TRIGGER note_mark`);
    const [a, b] = await Promise.all([sourceSession(db), sourceSession(db)]);
    try {
      const before = (await streamed(db, 'st_order')).bytes;
      await a.query(`BEGIN; INSERT INTO marks VALUES ('A'); INSERT INTO bulk SELECT g, 'A' FROM generate_series(1, 20000) g`);
      await b.query(`BEGIN; INSERT INTO marks VALUES ('B'); INSERT INTO bulk SELECT g, 'B' FROM generate_series(1, 20000) g`);
      await waitFor('both open transactions streamed', async () => (await streamed(db, 'st_order')).bytes > before + 1_500_000, 60_000);
      await pair.source.query(db, `INSERT INTO marks VALUES ('S1')`);
      await b.query(`INSERT INTO bulk SELECT g, 'B2' FROM generate_series(1, 5000) g; COMMIT`);
      await pair.source.query(db, `INSERT INTO marks VALUES ('S2')`);
      await a.query(`DELETE FROM bulk WHERE who = 'A' AND id % 2 = 0; COMMIT`);
      await pair.source.query(db, `INSERT INTO marks VALUES ('S3')`);
      await waitCaughtUp(pair, db, 'st_order', 120_000, run);
      const order = (await pair.target.query(db, `SELECT label FROM applied_order ORDER BY pg_xact_commit_timestamp(xmin), seq`)).rows.map((r) => r.label);
      assert.deepEqual(order, ['S1', 'B', 'S2', 'A', 'S3'], 'committed in source commit order');
      for (const table of ['bulk', 'marks']) assert.ok(await sameContents(pair, db, table), `${table} after the interleaving`);
    } finally {
      await Promise.all([a.end(), b.end()]);
      await stopOk(run);
    }
    // A and B each went on a target connection of their own while open, and committed in order.
    assert.match(run.output(), /\(2 of them streamed while open, [\d.]+ MiB spooled, 2 applied while open\)/);
  });

  it('--streaming off: the source keeps the big transaction (it spills), nothing is spooled, all of it arrives', async () => {
    const { db, run, sourceUrl } = await syncing('st_off', `CREATE TABLE big (id int PRIMARY KEY, v text)`, '', ['--streaming', 'off']);
    try {
      await pair.source.query(db, `INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 30000) g`);
      await waitCaughtUp(pair, db, 'st_off', 120_000, run);
      assert.ok(await sameContents(pair, db, 'big'), 'big');
      const stats = await waitFor('slot statistics', async () => {
        const r = await pair.source.query(db, `SELECT spill_txns::int AS spill, stream_txns::int AS stream FROM pg_stat_replication_slots WHERE slot_name = 'pg_live_sync_st_off'`);
        return r.rows[0]?.spill > 0 ? r.rows[0] : undefined;
      }, 30_000);
      assert.equal(stats.stream, 0, 'nothing streamed');
      assert.equal(existsSync(spoolDirFor(sourceUrl, 'pg_live_sync_st_off', spoolBase)), false, 'no spool folder for the slot');
    } finally {
      await stopOk(run);
    }
  });

  it('a spool folder that cannot be made: one line with the fix, exit 1, nothing applied is lost', async () => {
    const notADir = path.join(spoolBase, 'a-file');
    writeFileSync(notADir, 'x');
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'st_bad', `CREATE TABLE t (id int PRIMARY KEY)`);
    await pair.source.query(db, `INSERT INTO t VALUES (1); CREATE PUBLICATION pub FOR ALL TABLES`);
    const run = startCli(['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', 'st_bad', '--publication', 'pub', '--spool-dir', notADir]);
    const code = await Promise.race([run.exited, new Promise<string>((r) => setTimeout(() => r('still running'), 60_000))]);
    if (code === 'still running') await run.kill9();
    assert.equal(code, 1, run.output());
    const errors = run.output().split('\n').filter((l) => /error/.test(l));
    assert.ok(errors.some((l) => /spool folder .*a-file.* --spool-dir/.test(l)), run.output());
    assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM t`), 1, 'the copy is kept');
    rmSync(notADir);
  });

  it('kill -9 with a streamed transaction open, and again while its replay applies: applied exactly once', async (t) => {
    // No key: a row applied twice would show as a duplicate.
    // --streaming on: the second kill lands in the replay from the spool (open-apply.test.ts kills
    // a transaction applied while open).
    const { db, args, run } = await syncing('st_kill', `CREATE TABLE nokey (id int, v text)`, `ALTER TABLE nokey REPLICA IDENTITY FULL`, ['--streaming', 'on']);
    let current = run;
    const s = await sourceSession(db);
    try {
      await s.query(`BEGIN; INSERT INTO nokey SELECT g, md5(g::text) FROM generate_series(1, 150000) g`);
      await waitFor('the open transaction streamed and spooled', async () => (await streamed(db, 'st_kill')).bytes > 2_000_000 && spoolFiles().length > 0, 60_000);
      await current.kill9();
      current = startCli(args);
      // The restarted run gets the open transaction again from its start.
      await waitFor('the restarted run streaming', async () => /streaming from/.test(current.output()), 60_000);
      await s.query(`INSERT INTO nokey SELECT g, 'after the restart' FROM generate_series(150001, 160000) g; COMMIT`);
      await waitFor('the target applying the streamed transaction', async () => {
        const r = await pair.target.query(db, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = 'pg_live_sync' AND backend_xid IS NOT NULL`, [db]);
        return r.rows[0].n > 0 || (await count(pair.target, db, `SELECT count(*)::int AS n FROM nokey`)) > 0;
      }, 120_000, 5);
      const rowsAtKill = await count(pair.target, db, `SELECT count(*)::int AS n FROM nokey`);
      await current.kill9();
      t.diagnostic(`second kill with ${rowsAtKill} rows committed on the target`);
      assert.ok(rowsAtKill === 0 || rowsAtKill === 160000, `the streamed transaction is applied atomically, saw ${rowsAtKill}`);
      current = startCli(args);
      await waitCaughtUp(pair, db, 'st_kill', 180_000, current);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM nokey`), 160000, 'every row once');
      assert.ok(await sameContents(pair, db, 'nokey'), 'nokey after two kills');
    } finally {
      await s.end().catch(() => undefined);
      await stopOk(current);
    }
  });
});
