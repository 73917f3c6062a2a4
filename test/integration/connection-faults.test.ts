/**
 * Target connections that die without the server hearing of it, through a TCP proxy
 * (harness/proxy.ts) between `run` and the target:
 *  - half-open: the run's side is reset, the server's side stays, its session still holding the
 *    subscription's lock; the run reconnects, ends its own stale session and streams on;
 *  - a run killed while its connection was black-holed: its session stays on the target holding
 *    the lock; the next run sees from the state that its owner process is gone and takes over;
 *  - a fatal error after a reconnect still reaches last_error (`status --json`).
 *  - a copy snapshot's holder is found by the pid the state records, whatever its session is named.
 * A live run's session is never ended: bad-input.test.ts (concurrent runs) refuses a second run.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '../../src/engine/connection';
import { endHolders } from '../../src/engine/snapshotHolder';
import { startProxy, type Proxy } from '../harness/proxy';
import { alive, finish, freshDatabases, pg, runCli, startPair, tail, trackRuns, waitAllReady, waitFor, whileAlive, type Pair } from '../harness/sync';

let pair: Pair;
const cli = trackRuns();
const proxies: Proxy[] = [];
before(async () => {
  pair = await startPair();
});
after(async () => {
  for (const p of proxies) await p.close();
  pair?.stop();
});

const SCHEMA = 'CREATE TABLE t (id int PRIMARY KEY, v text)';
const runArgs = (sourceUrl: string, targetUrl: string, sub: string) => ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub];

/** A database with `t` (10 rows, published) and the target reached through a proxy of its own. */
async function setup(prefix: string) {
  const dbs = await freshDatabases(pair, prefix, SCHEMA);
  await pair.source.query(dbs.db, `INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g; CREATE PUBLICATION pub FOR TABLE t`);
  const proxy = await startProxy(pair.target.port);
  proxies.push(proxy);
  const proxiedTarget = dbs.targetUrl.replace(`:${pair.target.port}/`, `:${proxy.port}/`);
  assert.notEqual(proxiedTarget, dbs.targetUrl);
  return { ...dbs, proxy, proxiedTarget };
}

const targetCount = async (db: string) => Number((await pair.target.query(db, 'SELECT count(*) AS n FROM t')).rows[0].n);

/** The target session holding the subscription's lock, if any. */
async function lockHolder(db: string, sub: string): Promise<number | null> {
  const r = await pair.target.query(db, `SELECT l.pid FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::bigint = (hashtext('pg_live_sync.sub')::bigint & 4294967295) AND l.objid::bigint = (hashtext($1)::bigint & 4294967295)`, [sub]);
  return (r.rows[0]?.pid as number | undefined) ?? null;
}

describe('a half-open target connection', () => {
  it('the run reconnects, ends its own stale session that still holds the lock, and streams on', async () => {
    const sub = 'halfopen';
    const { db, sourceUrl, proxiedTarget, proxy } = await setup(sub);
    const run = cli(runArgs(sourceUrl, proxiedTarget, sub));
    try {
      await waitAllReady(pair.target, db, sub, 1, 90_000);
      const before = await lockHolder(db, sub);
      assert.ok(before !== null, 'the run holds its lock');
      proxy.halfOpen();
      await pair.source.query(db, `INSERT INTO t SELECT g, 'after' FROM generate_series(11, 20) g`);
      await whileAlive(run, 'the rows written after the connection went half-open', async () => (await targetCount(db)) === 20, 120_000, 200);
      const out = run.output();
      assert.match(out, new RegExp(`ending session ${before} on the target, which holds subscription "${sub}"'s lock: it is this run's own session from before its connection was lost`), tail(out));
      assert.doesNotMatch(out, /already running/, tail(out));
      assert.notEqual(await lockHolder(db, sub), before, 'a new session holds the lock');
    } finally {
      assert.equal(await finish(run), 0, tail(run.output()));
    }
  });

  it('a run killed while its connection was black-holed leaves its session holding the lock; the next run ends it and streams', async () => {
    const sub = 'deadrun';
    const { db, sourceUrl, targetUrl, proxiedTarget, proxy } = await setup(sub);
    const first = cli(runArgs(sourceUrl, proxiedTarget, sub));
    await waitAllReady(pair.target, db, sub, 1, 90_000);
    const stale = await lockHolder(db, sub);
    assert.ok(stale !== null);
    proxy.blackHole();
    await first.kill9();
    // The server never heard: the dead run's session still holds the lock.
    assert.equal(await lockHolder(db, sub), stale);

    const next = cli(runArgs(sourceUrl, targetUrl, sub));
    try {
      await pair.source.query(db, `INSERT INTO t SELECT g, 'after' FROM generate_series(11, 20) g`);
      await whileAlive(next, 'the rows written after the first run died', async () => (await targetCount(db)) === 20, 120_000, 200);
      assert.match(next.output(), new RegExp(`ending session ${stale} on the target, which holds subscription "${sub}"'s lock: its run, process ${first.proc.pid} on this host, is gone`), tail(next.output()));
    } finally {
      assert.equal(await finish(next), 0, tail(next.output()));
    }
  });
});

describe('a fatal error after a reconnect', () => {
  it('is recorded in last_error, which status --json shows', async () => {
    const sub = 'fatal_after_reconnect';
    const { db, sourceUrl, targetUrl, proxiedTarget, proxy } = await setup(sub);
    const run = cli(runArgs(sourceUrl, proxiedTarget, sub));
    await waitAllReady(pair.target, db, sub, 1, 90_000);
    const streamed = () => (run.output().match(/streaming from/g) ?? []).length;
    await whileAlive(run, 'streaming', async () => streamed() === 1, 60_000, 100);
    proxy.cut();
    await whileAlive(run, 'streaming again after the reconnect', async () => streamed() >= 2, 120_000, 100);
    // A change the target refuses: the row is already there.
    await pair.target.query(db, `INSERT INTO t VALUES (42, 'target-only')`);
    await pair.source.query(db, `INSERT INTO t VALUES (42, 'source-only')`);
    await waitFor('the run to stop on the unique violation', async () => !alive(run), 120_000, 200);
    assert.equal(await run.exited, 1, tail(run.output()));
    assert.match(run.output(), /duplicate key value violates unique constraint/, tail(run.output()));
    const status = await runCli(['status', '--subscription', sub, '--target', targetUrl, '--json']);
    assert.equal(status.code, 0, status.stderr);
    assert.match(JSON.parse(status.stdout).lastError ?? '', /duplicate key value violates unique constraint "t_pkey"/, status.stdout);
  });
});

describe('snapshot holders', () => {
  it('are ended by their recorded pid even when a URL named their session, and only sessions that are holders', async () => {
    const { sourceUrl } = await freshDatabases(pair, 'holders', SCHEMA);
    const session = async (sql: string) => {
      const c = new pg.Client({ connectionString: sourceUrl, application_name: 'mine' });
      await c.connect();
      c.on('error', () => undefined);
      await c.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      const pid = (await c.query(sql)).rows[0].pid as number;
      return { c, pid };
    };
    const holder = await session('SELECT pg_export_snapshot() AS snapshot, pg_backend_pid() AS pid');
    const other = await session('SELECT pg_backend_pid() AS pid');
    const admin = await connect({ url: sourceUrl, role: 'source' });
    try {
      await endHolders(admin, [holder.pid, other.pid]);
      const live = async (pid: number) => (await admin.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).rowCount === 1;
      await waitFor('the holder\'s session to end', async () => !(await live(holder.pid)), 30_000);
      assert.equal(await live(other.pid), true, 'a session that is not a holder stays');
    } finally {
      await admin.end();
      await Promise.all([holder.c.end().catch(() => undefined), other.c.end().catch(() => undefined)]);
    }
  });
});
