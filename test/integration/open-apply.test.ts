/**
 * Streamed transactions applied on the target while they are still open on the source
 * (`run --streaming parallel`): the source runs with logical_decoding_work_mem 64kB, so any
 * transaction of a few thousand rows is streamed in segments before its commit. In parallel mode
 * the sync applies such a transaction as it arrives, in its own target transaction on a second
 * connection (application_name pg_live_sync_apply_open), committed at the source's COMMIT. Each
 * test checks that the source did stream (pg_stat_replication_slots) and that the target was
 * really applying it while open (that backend in a transaction holding an xid, its rows locked but
 * invisible), then that the target ends up equal to the source, every row once.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startCluster, type Cluster } from '../harness/cluster';
import {
  alive, freshDatabases, pg, sameContents, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor, whileAlive, type CliRun, type Pair,
} from '../harness/sync';
import { spoolDirFor } from '../../src/engine/spool';

const OPEN_APP = 'pg_live_sync_apply_open';
const FALLBACK = /applying it while open stopped/;
const PARALLEL = ['--streaming', 'parallel'];

// Runs still alive when the file ends (a failed test) are SIGKILLed before the clusters stop.
const startRun = trackRuns();
let pair: Pair;
const spoolBase = mkdtempSync(path.join(tmpdir(), 'pgls-open-apply-test-'));
before(async () => {
  const [source, target] = await Promise.all([
    startCluster({ name: 'oasrc', settings: { logical_decoding_work_mem: "'64kB'" } }),
    startCluster({ name: 'oatgt' }),
  ]);
  pair = { source, target, stop: () => [source, target].forEach((c) => c.stop()) };
});
after(() => {
  pair?.stop();
  rmSync(spoolBase, { recursive: true, force: true });
});

/** Spool files of one sync's slot under the test's --spool-dir. */
function spoolFiles(sourceUrl: string, sub: string): string[] {
  const dir = spoolDirFor(sourceUrl, `pg_live_sync_${sub}`, spoolBase);
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.spool'));
}

/** What the source's walsender has streamed on the sync's slot so far: open transactions and their bytes. */
async function streamed(db: string, sub: string): Promise<{ txns: number; bytes: number }> {
  const r = await pair.source.query(db, `SELECT stream_txns::int AS txns, stream_bytes::bigint AS bytes FROM pg_stat_replication_slots WHERE slot_name = $1`, [`pg_live_sync_${sub}`]);
  return { txns: r.rows[0]?.txns ?? 0, bytes: Number(r.rows[0]?.bytes ?? 0) };
}

interface OpenBackend { pid: number; state: string; xact_start: Date | null; xid: string | null }

/** The target's backends of the open-transaction apply connection for `db`. */
async function openBackends(db: string): Promise<OpenBackend[]> {
  const r = await pair.target.query<OpenBackend>(db,
    `SELECT pid, state, xact_start, backend_xid::text AS xid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2`, [db, OPEN_APP]);
  return r.rows;
}

/** The open-apply backend while it applies: in a transaction that has written (it holds an xid). */
async function applyingOpen(db: string): Promise<OpenBackend | undefined> {
  return (await openBackends(db)).find((b) => b.xact_start !== null && b.xid !== null && (b.state === 'idle in transaction' || b.state === 'active'));
}

/**
 * True when `sql` (a write on the target, rolled back in any case) has to wait for a lock: the row
 * it touches is held by an uncommitted transaction there. A probe that does not wait is rolled back.
 */
async function blockedOnTarget(db: string, sql: string): Promise<boolean> {
  const c = new pg.Client({ connectionString: pair.target.url(db), application_name: 'oa_probe' });
  await c.connect();
  try {
    await c.query(`BEGIN; SET LOCAL lock_timeout = '200ms'`);
    try {
      await c.query(sql);
      return false;
    } catch (err) {
      if ((err as { code?: string }).code === '55P03') return true;
      throw err;
    }
  } finally {
    await c.query('ROLLBACK').catch(() => undefined);
    await c.end();
  }
}

async function syncing(sub: string, schema: string, sourceSetup = '', extra: string[] = PARALLEL): Promise<{ db: string; args: string[]; run: CliRun; sourceUrl: string }> {
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, schema);
  await pair.source.query(db, `${sourceSetup}; CREATE PUBLICATION pub FOR ALL TABLES`);
  const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--publication', 'pub', '--spool-dir', spoolBase, ...extra];
  const run = startRun(args);
  const tables = (await pair.source.query(db, `SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'`)).rows[0].n;
  await Promise.race([
    waitAllReady(pair.target, db, sub, tables, 120_000),
    run.exited.then((code) => Promise.reject(new Error(`the sync exited (${code}) before every table was ready:\n${run.output()}`))),
  ]);
  await waitCaughtUp(pair, db, sub, 120_000, run);
  return { db, args, run, sourceUrl };
}

async function stopOk(run: CliRun): Promise<void> {
  if (!alive(run)) return;
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

/** Polls until every table is the same on both sides, failing at once if the run exits. */
async function untilSame(run: CliRun, db: string, tables: string[], timeoutMs = 120_000): Promise<void> {
  await whileAlive(run, `the target to equal the source (${tables.join(', ')})`, async () => {
    for (const t of tables) if (!(await sameContents(pair, db, t))) return false;
    return true;
  }, timeoutMs, 300);
}

/** Polls until `sql` (a count) reads `n` on the target, failing at once if the run exits. */
async function untilTargetCount(run: CliRun, db: string, sql: string, n: number, what: string, timeoutMs = 60_000): Promise<void> {
  await whileAlive(run, what, async () => (await count(pair.target, db, sql)) === n, timeoutMs, 100);
}

/** The run's stop line: how many transactions it streamed while open, and applied while open (null when not said). */
function stopLine(out: string): { line: string; streamedOpen: number; appliedOpen: number | null } {
  const line = out.split('\n').find((l) => /stopped at \S+ after [\d,]+ transactions?\b/.test(l));
  assert.ok(line, `no stop line in the output:\n${tail(out)}`);
  const s = /\((\d+) of them streamed while open/.exec(line);
  const a = /(\d+) applied while open/.exec(line);
  return { line, streamedOpen: s ? Number(s[1]) : 0, appliedOpen: a ? Number(a[1]) : null };
}

describe('open transactions applied while open (--streaming parallel)', () => {
  it('a big open transaction is applied on the target while open, invisible there until its COMMIT; other transactions apply meanwhile', async () => {
    const sub = 'oa_open';
    const { db, run, sourceUrl } = await syncing(sub, `CREATE TABLE big (id int PRIMARY KEY, v text); CREATE TABLE small (id int PRIMARY KEY)`);
    const open = await sourceSession(db);
    try {
      await open.query('BEGIN');
      await open.query(`INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 40000) g`);
      await open.query(`UPDATE big SET v = 'updated' WHERE id % 7 = 0`);
      await open.query(`DELETE FROM big WHERE id % 11 = 0`);
      const backend = await waitFor('the open transaction streamed and being applied on the target while open', async () =>
        (await streamed(db, sub)).bytes > 1_000_000 && (await applyingOpen(db)), 60_000, 100,
      { describe: async () => `streamed ${JSON.stringify(await streamed(db, sub))}, open-apply backends ${JSON.stringify(await openBackends(db))}\n${tail(run.output())}` });
      // Its rows are in the target's open transaction: a write to one of them waits, a read sees none.
      await waitFor('row 39999 held by the open target transaction', () => blockedOnTarget(db, `INSERT INTO big VALUES (39999, 'probe')`), 60_000, 200);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM big`), 0, 'nothing of the open transaction is visible on the target');
      // Other transactions commit and apply meanwhile.
      await pair.source.query(db, `INSERT INTO small VALUES (1), (2)`);
      await untilTargetCount(run, db, `SELECT count(*)::int AS n FROM small`, 2, 'a small transaction committed meanwhile on the target');
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM big`), 0, 'still nothing of the open transaction visible');
      const still = await applyingOpen(db);
      assert.equal(still?.pid, backend.pid, 'the open transaction is still being applied while open, on the same backend');
      assert.doesNotMatch(run.output(), FALLBACK);
      await open.query(`INSERT INTO big SELECT g, 'tail' FROM generate_series(40001, 45000) g`);
      await open.query('COMMIT');
      await untilSame(run, db, ['big', 'small']);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM big`), 45000 - Math.floor(40000 / 11));
      assert.ok((await streamed(db, sub)).txns >= 1, 'the source streamed it');
      await waitCaughtUp(pair, db, sub, 60_000, run);
      assert.deepEqual(spoolFiles(sourceUrl, sub), [], 'no spool file left after its commit');
      await stopOk(run);
      const stop = stopLine(run.output());
      assert.ok(stop.streamedOpen >= 1, stop.line);
      assert.ok(stop.appliedOpen !== null && stop.appliedOpen >= 1, `the stop line counts it applied while open: ${stop.line}`);
      assert.doesNotMatch(run.output(), FALLBACK, 'applied while open to the end');
    } finally {
      await open.end();
      await stopOk(run);
    }
  });

  it('SAVEPOINT, ROLLBACK TO SAVEPOINT and ROLLBACK map onto the open target transaction', async () => {
    const sub = 'oa_sub';
    const { db, run } = await syncing(sub, `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE marks (id int PRIMARY KEY)`);
    const s = await sourceSession(db);
    try {
      await s.query('BEGIN');
      await s.query(`INSERT INTO t SELECT g, 'top' FROM generate_series(1, 20000) g`);
      await waitFor('the open transaction streamed and being applied while open', async () =>
        (await streamed(db, sub)).bytes > 300_000 && (await applyingOpen(db)), 60_000, 100,
      { describe: async () => `streamed ${JSON.stringify(await streamed(db, sub))}, open-apply backends ${JSON.stringify(await openBackends(db))}\n${tail(run.output())}` });
      await s.query('SAVEPOINT a');
      await s.query(`INSERT INTO t SELECT g, 'rolled back' FROM generate_series(100001, 120000) g`);
      await s.query(`UPDATE t SET v = 'rolled back too' WHERE id <= 5000`);
      // The subtransaction's rows reached the open target transaction before it rolls back.
      await waitFor('row 110000 of the subtransaction held by the open target transaction', () => blockedOnTarget(db, `INSERT INTO t VALUES (110000, 'probe')`), 60_000, 200);
      await s.query('ROLLBACK TO SAVEPOINT a');
      // Keys only the rolled-back subtransaction had: free on the source, so they must be free on the target.
      await pair.source.query(db, `INSERT INTO t SELECT g, 'other session' FROM generate_series(100001, 100010) g`);
      await untilTargetCount(run, db, `SELECT count(*)::int AS n FROM t WHERE id BETWEEN 100001 AND 100010`, 10,
        'the other session\'s rows on the target while the big transaction is open');
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM t`), 10, 'only the other session\'s rows are visible');
      assert.ok(await applyingOpen(db), 'the big transaction is still applied while open');
      assert.doesNotMatch(run.output(), FALLBACK);
      await s.query(`INSERT INTO t SELECT g, 'after a' FROM generate_series(200001, 210000) g`);
      await s.query('SAVEPOINT b');
      await s.query(`INSERT INTO t SELECT g, 'released' FROM generate_series(210001, 210005) g`);
      await s.query('RELEASE SAVEPOINT b');
      await s.query('COMMIT');
      await untilSame(run, db, ['t']);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM t`), 20000 + 10 + 10005);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM t WHERE v LIKE 'rolled back%'`), 0, 'nothing of the rolled-back subtransaction');

      // A whole streamed transaction, applied while open, then rolled back.
      const before = (await streamed(db, sub)).bytes;
      await s.query('BEGIN');
      await s.query(`INSERT INTO t SELECT g, 'never' FROM generate_series(300001, 330000) g`);
      await waitFor('the doomed transaction streamed and being applied while open', async () =>
        (await streamed(db, sub)).bytes > before + 500_000 && (await applyingOpen(db)), 60_000, 100);
      await waitFor('row 320000 held by the open target transaction', () => blockedOnTarget(db, `INSERT INTO t VALUES (320000, 'probe')`), 60_000, 200);
      await s.query('ROLLBACK');
      await pair.source.query(db, `INSERT INTO marks VALUES (1)`);
      await untilTargetCount(run, db, `SELECT count(*)::int AS n FROM marks`, 1, 'the marker committed after the ROLLBACK on the target');
      assert.ok(await sameContents(pair, db, 't'), 't after the rollback');
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM t WHERE id > 300000`), 0, 'nothing of the rolled-back transaction');
      await waitFor('the open target transaction rolled back', async () => !(await applyingOpen(db)), 30_000, 100,
        { describe: async () => JSON.stringify(await openBackends(db)) });
      assert.equal(await blockedOnTarget(db, `INSERT INTO t VALUES (320000, 'probe')`), false, 'no lock left on the rolled-back rows');
      assert.ok((await streamed(db, sub)).txns >= 2, 'the source streamed both');
      await stopOk(run);
      const stop = stopLine(run.output());
      assert.ok(stop.appliedOpen !== null && stop.appliedOpen >= 1, `the stop line counts it applied while open: ${stop.line}`);
      assert.doesNotMatch(run.output(), FALLBACK, 'applied while open to the end');
    } finally {
      await s.end();
      await stopOk(run);
    }
  });

  it('the main apply waiting on a lock the open target transaction holds: it is dropped, applied at commit from the spool instead, nothing hangs', async (t) => {
    const sub = 'oa_lock';
    const { db, run } = await syncing(sub, `CREATE TABLE t (id int PRIMARY KEY, v int)`);
    // On the target only: a unique index the source lacks.
    await pair.target.query(db, `CREATE UNIQUE INDEX t_v_target_only ON t (v)`);
    const s = await sourceSession(db);
    try {
      await s.query(`BEGIN; INSERT INTO t SELECT g, g FROM generate_series(1, 40000) g`);
      await waitFor('the open transaction streamed and being applied while open', async () =>
        (await streamed(db, sub)).bytes > 300_000 && (await applyingOpen(db)), 60_000, 100,
      { describe: async () => `streamed ${JSON.stringify(await streamed(db, sub))}, open-apply backends ${JSON.stringify(await openBackends(db))}\n${tail(run.output())}` });
      await waitFor('v = 5 held by the open target transaction', () => blockedOnTarget(db, `INSERT INTO t VALUES (-2, 5)`), 60_000, 200);
      assert.doesNotMatch(run.output(), FALLBACK, 'no fallback before the conflict');
      // Allowed on the source; on the target the main apply waits on the open transaction's v = 5.
      await pair.source.query(db, `INSERT INTO t VALUES (-1, 5)`);
      await untilTargetCount(run, db, `SELECT count(*)::int AS n FROM t WHERE id = -1`, 1, 'row -1 on the target (the main apply is not stuck)', 60_000);
      await waitFor('the fallback line', async () => FALLBACK.test(run.output()), 10_000, 100, { describe: async () => tail(run.output()) });
      t.diagnostic(run.output().split('\n').find((l) => FALLBACK.test(l)) ?? '');
      await waitFor('the open target transaction dropped', async () => !(await applyingOpen(db)), 30_000, 100,
        { describe: async () => JSON.stringify(await openBackends(db)) });
      await s.query('ROLLBACK');
      await pair.source.query(db, `INSERT INTO t VALUES (-3, -3)`);
      await untilSame(run, db, ['t']);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM t`), 2);
      assert.ok((await streamed(db, sub)).txns >= 1, 'the source streamed it');
      assert.ok(alive(run), `the sync is still running:\n${tail(run.output())}`);
      await stopOk(run);
    } finally {
      await s.end();
      await stopOk(run);
    }
  });

  it('kill -9 while a transaction is applied while open, on a table without a key: nothing of it shows before its COMMIT, then every row once', async () => {
    const sub = 'oa_kill';
    const { db, args, run } = await syncing(sub, `CREATE TABLE nokey (id int, v text); CREATE TABLE marks (id int PRIMARY KEY)`, `ALTER TABLE nokey REPLICA IDENTITY FULL`);
    let current = run;
    const s = await sourceSession(db);
    try {
      await s.query(`BEGIN; INSERT INTO nokey SELECT g, md5(g::text) FROM generate_series(1, 30000) g`);
      const backend = await waitFor('the open transaction streamed and being applied while open', async () =>
        (await streamed(db, sub)).bytes > 500_000 && (await applyingOpen(db)), 60_000, 100,
      { describe: async () => `streamed ${JSON.stringify(await streamed(db, sub))}, open-apply backends ${JSON.stringify(await openBackends(db))}\n${tail(current.output())}` });
      await current.kill9();
      await waitFor('the killed run\'s open target transaction gone', async () => !(await openBackends(db)).some((b) => b.pid === backend.pid), 30_000, 100);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM nokey`), 0, 'nothing of the open transaction after the kill');
      current = startRun(args);
      await pair.source.query(db, `INSERT INTO marks VALUES (1)`);
      await untilTargetCount(current, db, `SELECT count(*)::int AS n FROM marks`, 1, 'the restarted run applying a marker committed after the restart', 120_000);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM nokey`), 0, 'nothing of the open transaction before its COMMIT');
      await s.query(`INSERT INTO nokey SELECT g, 'after the restart' FROM generate_series(30001, 31000) g; COMMIT`);
      await untilSame(current, db, ['nokey', 'marks']);
      const sourceRows = await count(pair.source, db, `SELECT count(*)::int AS n FROM nokey`);
      assert.equal(sourceRows, 31000);
      assert.equal(await count(pair.target, db, `SELECT count(*)::int AS n FROM nokey`), sourceRows, 'every row exactly once');
      assert.ok((await streamed(db, sub)).txns >= 1, 'the source streamed it');
      await stopOk(current);
      const stop = stopLine(current.output());
      assert.ok(stop.appliedOpen !== null && stop.appliedOpen >= 1, `the restarted run applied it while open: ${stop.line}`);
      assert.doesNotMatch(current.output(), FALLBACK);
    } finally {
      await s.end().catch(() => undefined);
      await stopOk(current);
    }
  });

  it('--streaming on: the open transaction is only spooled, never applied while open', async () => {
    const sub = 'oa_on';
    const { db, run, sourceUrl } = await syncing(sub, `CREATE TABLE big (id int PRIMARY KEY, v text); CREATE TABLE marks (id int PRIMARY KEY)`, '', ['--streaming', 'on']);
    const open = await sourceSession(db);
    try {
      await open.query(`BEGIN; INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 40000) g`);
      // Checked at every poll below; a backend seen fails the test at once.
      const noOpenApply = async () => {
        const b = await openBackends(db);
        assert.deepEqual(b, [], 'no open-apply backend on the target');
        return true;
      };
      const fatal = (err: unknown) => err instanceof assert.AssertionError;
      await waitFor('the open transaction streamed and spooled', async () =>
        (await noOpenApply()) && (await streamed(db, sub)).bytes > 1_000_000 && spoolFiles(sourceUrl, sub).length > 0, 60_000, 100, { fatal });
      await pair.source.query(db, `INSERT INTO marks VALUES (1)`);
      // The marker arriving proves the stream went past the streamed segments.
      await waitFor('the marker on the target', async () =>
        (await noOpenApply()) && (!alive(run) || (await count(pair.target, db, `SELECT count(*)::int AS n FROM marks`)) === 1), 60_000, 100, { fatal });
      assert.ok(alive(run), `the run exited:\n${tail(run.output())}`);
      await noOpenApply();
      assert.equal(await blockedOnTarget(db, `INSERT INTO big VALUES (1, 'probe')`), false, 'no target transaction holds its rows');
      await open.query('COMMIT');
      await untilSame(run, db, ['big', 'marks']);
      assert.ok((await streamed(db, sub)).txns >= 1, 'the source streamed it');
      await stopOk(run);
      const stop = stopLine(run.output());
      assert.ok(stop.streamedOpen >= 1, stop.line);
      assert.ok(stop.appliedOpen === null || stop.appliedOpen === 0, `nothing applied while open: ${stop.line}`);
      assert.doesNotMatch(run.output(), FALLBACK);
    } finally {
      await open.end();
      await stopOk(run);
    }
  });
});
