/**
 * Production behaviours, against the real CLI and real PostgreSQL 15 clusters:
 *  - faults `run` rides through on its own (source restart, target restart, a dropped TCP
 *    connection): the same process logs the fault, retries with backoff, resumes, and the data
 *    converges with nothing lost or applied twice; and one it cannot (its slot dropped): one line,
 *    non-zero exit, `drop` as the fix;
 *  - an idle publication never holds back WAL written in another database;
 *  - `status --source` shows the slot's wal_status and retained WAL;
 *  - memory stays bounded (peak RSS of the CLI process, VmHWM) on a 2,000,000-row source
 *    transaction and while the target is stalled by a lock.
 * One pair of clusters for the file; every test has its own database; tests run one at a time
 * (two of them restart a cluster).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { startProxy } from '../harness/proxy';
import {
  alive, exitWithin, finish, freshDatabases, pg, runCli, sameContents, sleep, startPair, tableFingerprint, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor,
  WORKLOAD_SCHEMA, WORKLOAD_SEED, workloadTxn, type CliRun, type Pair,
} from '../harness/sync';

const MB = 1024 * 1024;
const RSS_LIMIT = 300 * MB;

let pair: Pair;
const cli = trackRuns();
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

async function appliedLsn(db: string, sub: string): Promise<string | null> {
  const r = await pair.target.query(db, `SELECT applied_lsn::text AS l FROM _pg_live_sync.subscription WHERE subname = $1`, [sub]);
  return r.rows[0]?.l ?? null;
}

/** Peak RSS of a process (VmHWM from /proc/<pid>/status), sampled every 200 ms. */
function rssSampler(pid: number): { peak(): number; stop(): number } {
  let peak = 0;
  const sample = () => {
    try {
      const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      // the process is gone: keep the last sample
    }
  };
  sample();
  const timer = setInterval(sample, 200);
  return {
    peak: () => peak,
    stop() {
      sample();
      clearInterval(timer);
      return peak;
    },
  };
}

const mb = (bytes: number) => `${(bytes / MB).toFixed(1)} MB`;

// ---------------------------------------------------------------------------------------------
// Faults

const FAULT_SETUP = `${WORKLOAD_SEED} CREATE PUBLICATION pub FOR TABLE accounts, ledger;`;

/**
 * A light, steady write load on the source (one mixed transaction every ~50 ms, duplicates in the
 * keyless table). It rides through a source restart itself: a failed transaction is dropped and
 * the next one runs on a new connection. Whatever the source ends up holding is the truth.
 */
function workload(url: string): { readonly committed: number; readonly failed: number; stop(): Promise<{ committed: number; failed: number }> } {
  let running = true;
  let committed = 0;
  let failed = 0;
  let client: pg.Client | null = null;
  const loop = (async () => {
    for (let i = 1; running; i++) {
      try {
        if (!client) {
          client = new pg.Client({ connectionString: url });
          client.on('error', () => undefined);
          await client.connect();
        }
        await client.query(workloadTxn(i, { rows: 10, modulus: 97 }));
        committed++;
      } catch {
        failed++;
        const broken: pg.Client | null = client;
        client = null;
        await broken?.end().catch(() => undefined);
        await sleep(200);
      }
      await sleep(50);
    }
    await (client as pg.Client | null)?.end().catch(() => undefined);
  })();
  return {
    get committed() {
      return committed;
    },
    get failed() {
      return failed;
    },
    async stop() {
      running = false;
      await loop;
      return { committed, failed };
    },
  };
}

interface FaultContext {
  db: string;
  sub: string;
  run: CliRun;
}

/**
 * Syncs accounts (primary key) and ledger (no key, FULL, duplicates) under the workload, injects
 * `fault` once the run is streaming, then requires: the same process alive, a retry logged after
 * the fault, the workload's later transactions applied, and both tables equal.
 */
async function ridesThrough(t: { diagnostic(msg: string): void }, sub: string, fault: (ctx: FaultContext) => Promise<void>, sourceUrlFor?: (db: string) => string): Promise<void> {
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, WORKLOAD_SCHEMA);
  await pair.source.query(db, FAULT_SETUP);
  const run = cli(['run', '--source', sourceUrlFor?.(db) ?? sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub]);
  const load = workload(sourceUrl);
  let stopped = false;
  try {
    await waitAllReady(pair.target, db, sub, 2, 120_000);
    const appliedBefore = await appliedLsn(db, sub);
    await waitFor('the run to apply workload transactions', async () => {
      const now = await appliedLsn(db, sub);
      return now !== null && now !== appliedBefore;
    }, 60_000);

    const mark = run.output().length;
    const since = () => run.output().slice(mark);
    const faultAt = Date.now();
    await fault({ db, sub, run });
    await waitFor('a retry to be logged (or the run to exit)', async () => /retry/i.test(since()) || !alive(run), 120_000);
    assert.ok(alive(run), `the run exited with code ${run.proc.exitCode} instead of retrying; output after the fault:\n${tail(since())}`);
    assert.match(since(), /retry/i);
    const retryLines = since().split('\n').filter((l) => /retry/i.test(l));
    t.diagnostic(`${retryLines.length} line(s) mention a retry; first: ${retryLines[0]}`);

    // Resumes on its own: transactions committed after the fault reach the target too.
    const committedAtRetry = load.committed;
    await waitFor('20 more workload transactions on the source', async () => load.committed >= committedAtRetry + 20, 120_000);
    const { committed, failed } = await load.stop();
    stopped = true;
    await waitCaughtUp(pair, db, sub, 180_000, run);
    t.diagnostic(`workload: ${committed} transactions committed, ${failed} failed; converged ${((Date.now() - faultAt) / 1000).toFixed(1)} s after the fault`);
    assert.ok(await sameContents(pair, db, 'accounts'), 'accounts (primary key) match');
    assert.ok(await sameContents(pair, db, 'ledger'), 'ledger (no key, REPLICA IDENTITY FULL, duplicate rows) matches');
    assert.equal(run.proc.exitCode, null, 'the same process is still running');
    assert.ok(alive(run), run.output());
    assert.equal(await finish(run), 0, tail(run.output()));
  } finally {
    if (!stopped) await load.stop();
    await finish(run);
  }
}


/** One 100-row table synced by a run that has applied a first change: the start of several tests. */
async function streamingOneTable(sub: string) {
  const dbs = await freshDatabases(pair, sub, `CREATE TABLE t (id int PRIMARY KEY, v int)`);
  await pair.source.query(dbs.db, `INSERT INTO t SELECT g, g FROM generate_series(1, 100) g; CREATE PUBLICATION pub FOR TABLE t;`);
  const run = cli(['run', '--source', dbs.sourceUrl, '--target', dbs.targetUrl, '--publication', 'pub', '--subscription', sub]);
  await waitAllReady(pair.target, dbs.db, sub, 1, 120_000);
  await pair.source.query(dbs.db, `UPDATE t SET v = v + 1`);
  await waitCaughtUp(pair, dbs.db, sub, 120_000, run);
  return { ...dbs, run };
}

describe('faults', () => {
  it('source restart: the run retries, resumes and converges, and does not hold the shutdown up', { timeout: 360_000 }, async (t) => {
    let restartMs = 0;
    await ridesThrough(t, 'fault_source', async ({ run }) => {
      const started = Date.now();
      try {
        pair.source.restart();
      } catch (err) {
        // pg_ctl stop -m fast gave up (60 s): a logical walsender only exits once its client has
        // confirmed everything sent, so a run that never does holds the shutdown up. Free the
        // cluster for the rest of the file, then fail.
        const ms = Date.now() - started;
        await run.kill9();
        pair.source.restart();
        assert.fail(`the source could not shut down in ${ms} ms with the run connected (it did once the run was killed): ${String(err).split('\n')[0]}\nrun output:\n${tail(run.output())}`);
      }
      restartMs = Date.now() - started;
      t.diagnostic(`source restarted in ${restartMs} ms`);
    });
    // Idle, a restart takes well under a second. The fast shutdown waits for the run's walsender,
    // which exits only once the run has confirmed everything sent: a run that keeps an applied
    // group open while answering keepalives holds the source's shutdown up.
    assert.ok(restartMs < 10_000, `the source took ${restartMs} ms to restart with the run connected: the run must let a fast shutdown finish`);
  });

  it('target restart: the run retries, resumes and converges', { timeout: 360_000 }, async (t) => {
    await ridesThrough(t, 'fault_target', async () => {
      const started = Date.now();
      pair.target.restart();
      t.diagnostic(`target restarted in ${Date.now() - started} ms`);
    });
  });

  it('dropped TCP connections to the source: the run backs off while refused, then resumes', { timeout: 360_000 }, async (t) => {
    const proxy = await startProxy(pair.source.port);
    try {
      await ridesThrough(t, 'fault_tcp', async ({ run }) => {
        // Cut everything, and refuse reconnects until the run has tried twice.
        const open = proxy.open;
        proxy.pause();
        proxy.cut();
        await waitFor('two reconnect attempts (or the run to exit)', async () => proxy.refused >= 2 || !alive(run), 90_000, 20);
        const refused = proxy.refused;
        const gaps = proxy.refusedAt.slice(1).map((at, i) => at - proxy.refusedAt[i]);
        proxy.resume();
        t.diagnostic(`cut ${open} connection(s); ${refused} reconnect attempt(s) refused, gaps ${gaps.join(', ') || '-'} ms`);
        assert.ok(alive(run), `the run exited with code ${run.proc.exitCode} instead of retrying:\n${tail(run.output())}`);
        assert.ok(refused < 10, `reconnects must back off, not spin: ${refused} attempts refused by the time two were seen`);
      }, (db) => pair.source.url(db).replace(`:${pair.source.port}/`, `:${proxy.port}/`));
      t.diagnostic(`proxy forwarded ${proxy.accepted} connection(s) in all`);
    } finally {
      await proxy.close();
    }
  });

  it('the slot dropped on the source: one error line naming the slot with drop as the fix, exit non-zero', { timeout: 240_000 }, async (t) => {
    const sub = 'fault_slot';
    const slot = `pg_live_sync_${sub}`;
    const { run } = await streamingOneTable(sub);
    try {
      // Someone drops the slot: end its walsender, then drop it while it is inactive. A run that
      // reconnects quickly may take the slot again before the drop: keep at it.
      let terminations = 0;
      await waitFor(`slot ${slot} dropped`, async () => {
        const r = await pair.source.query('postgres', `SELECT pg_terminate_backend(active_pid) AS t FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL`, [slot]);
        terminations += r.rowCount ?? 0;
        await pair.source.query('postgres', `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active`, [slot]).catch(() => undefined);
        const left = await pair.source.query('postgres', `SELECT 1 FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
        return left.rowCount === 0;
      }, 60_000);
      t.diagnostic(`slot dropped after ${terminations} walsender termination(s)`);

      const code = await exitWithin(run, 120_000);
      const out = run.output();
      assert.notEqual(code, 'running', `the run must give up on a dropped slot, still running after 120 s:\n${tail(out)}`);
      assert.notEqual(code, 0, tail(out));
      assert.notEqual(code, null, tail(out));
      const errors = out.split('\n').filter((l) => l.startsWith('pg-live-sync: error:'));
      t.diagnostic(`exit ${code}: ${errors.join(' | ')}`);
      assert.equal(errors.length, 1, `exactly one error line:\n${tail(out)}`);
      assert.match(errors[0], /slot/i, 'the error names the slot');
      assert.match(errors[0], /\bdrop\b/, 'the error gives drop as the fix');
      assert.ok(!out.includes('sync-test-pw'), 'no password in the output');
    } finally {
      await finish(run);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// WAL safety and status

describe('WAL retention', () => {
  it('an idle publication does not hold back WAL written in another database', { timeout: 300_000 }, async (t) => {
    const sub = 'idle_pub';
    const slot = `pg_live_sync_${sub}`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TABLE quiet (id int PRIMARY KEY, v text)`);
    await pair.source.query(db, `INSERT INTO quiet SELECT g, 'v' || g FROM generate_series(1, 100) g; CREATE PUBLICATION pub FOR TABLE quiet;`);
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub]);
    const busy = `busy_${process.pid}`;
    try {
      await waitAllReady(pair.target, db, sub, 1, 120_000);
      await waitCaughtUp(pair, db, sub, 120_000, run);
      await pair.source.createDatabase(busy);

      // The workload: ~1 kB rows into a table of another database, paced to ~100 MB over 30 s.
      const client = new pg.Client({ connectionString: pair.source.url(busy) });
      client.on('error', () => undefined);
      await client.connect();
      let generated = 0;
      let genEnd = '';
      try {
        await client.query(`CREATE TABLE filler (id int, pad text)`);
        const start = (await client.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l as string;
        const began = Date.now();
        const goal = 100 * MB;
        for (let i = 0; Date.now() - began < 30_000; i++) {
          if (generated < goal * ((Date.now() - began) / 30_000)) {
            await client.query(i % 20 === 19 ? 'TRUNCATE filler' : `INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 1000) g`);
            generated = Number((await client.query(`SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)::bigint AS n`, [start])).rows[0].n);
          } else {
            await sleep(50);
          }
        }
        await client.query('CHECKPOINT');
        genEnd = (await client.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l as string;
        generated = Number((await client.query(`SELECT pg_wal_lsn_diff($1, $2)::bigint AS n`, [genEnd, start])).rows[0].n);
      } finally {
        await client.end();
      }
      t.diagnostic(`generated ${mb(generated)} of WAL in database ${busy} in 30 s (ends at ${genEnd})`);
      assert.ok(generated >= 64 * MB, `the workload must write at least 64 MB of WAL, wrote ${mb(generated)}`);
      assert.ok(alive(run), tail(run.output()));

      // restart_lsn moves only after a running-xacts record the slot has been confirmed past:
      // a CHECKPOINT writes one; repeat it now and then while waiting.
      const settling = Date.now();
      let lastCheckpoint = Date.now();
      let last = { retained: -1, confirmedPast: false, walStatus: '' };
      try {
        await waitFor('the slot to retain < 16 MB and be confirmed past the generated WAL', async () => {
          const r = await pair.source.query('postgres', `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained,
              confirmed_flush_lsn >= $2::pg_lsn AS past, wal_status FROM pg_replication_slots WHERE slot_name = $1`, [slot, genEnd]);
          const row = r.rows[0];
          if (!row) return false;
          last = { retained: Number(row.retained), confirmedPast: row.past === true, walStatus: row.wal_status };
          if (last.retained < 16 * MB && last.confirmedPast) return true;
          if (Date.now() - lastCheckpoint > 5_000) {
            lastCheckpoint = Date.now();
            await pair.source.query('postgres', 'CHECKPOINT');
          }
          return false;
        }, 60_000, 500);
      } finally {
        t.diagnostic(`slot retains ${mb(last.retained)} (${last.retained} bytes), confirmed past the generated WAL: ${last.confirmedPast}, wal_status ${last.walStatus}, after ${((Date.now() - settling) / 1000).toFixed(1)} s`);
      }
      assert.ok(alive(run), tail(run.output()));
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      await finish(run);
      await pair.source.query('postgres', `DROP DATABASE IF EXISTS ${pg.escapeIdentifier(busy)}`).catch(() => undefined);
    }
  });

  it('status --source shows the slot wal_status and retained WAL, as text and as JSON', { timeout: 180_000 }, async () => {
    const sub = 'status_slot';
    const { sourceUrl, targetUrl, run } = await streamingOneTable(sub);
    try {
      const text = await runCli(['status', '--subscription', sub, '--target', targetUrl, '--source', sourceUrl]);
      assert.equal(text.code, 0, text.stderr);
      assert.match(text.stdout, /wal_status (reserved|extended|unreserved)\b/, text.stdout);
      assert.match(text.stdout, /retained WAL \d/, text.stdout);

      const json = await runCli(['status', '--subscription', sub, '--target', targetUrl, '--source', sourceUrl, '--json']);
      assert.equal(json.code, 0, json.stderr);
      const parsed = JSON.parse(json.stdout);
      assert.ok(parsed.slot, json.stdout);
      assert.ok(['reserved', 'extended', 'unreserved'].includes(parsed.slot.walStatus), `slot.walStatus: ${parsed.slot.walStatus}`);
      assert.equal(typeof parsed.slot.retainedBytes, 'number', json.stdout);
      assert.ok(parsed.slot.retainedBytes >= 0 && parsed.slot.retainedBytes < 1024 * MB, json.stdout);
      for (const out of [text.stdout, text.stderr, json.stdout, json.stderr]) assert.ok(!out.includes('sync-test-pw'), 'status must not show the password');
      assert.deepEqual(parsed.warnings, [], 'a caught-up slot is not worth a warning');

      // Past the threshold, status warns (a 1-byte threshold stands in for a slot gone stale).
      const warned = await runCli(['status', '--subscription', sub, '--target', targetUrl, '--source', sourceUrl, '--warn-retained-wal', '1B']);
      assert.match(warned.stdout, /^warning\s+the slot holds .* of WAL on the source \(over 1 B\)/m, warned.stdout);
      const warnedJson = JSON.parse((await runCli(['status', '--subscription', sub, '--target', targetUrl, '--source', sourceUrl, '--warn-retained-wal', '1B', '--json'])).stdout);
      assert.equal(warnedJson.warnings.length, 1);
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      await finish(run);
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Memory

const WIDE = `CREATE TABLE big (id bigint PRIMARY KEY, payload text)`;
/** ~100-byte rows. */
const fill = (from: number, to: number) => `INSERT INTO big SELECT g, rpad(g::text, 80, '.x') FROM generate_series(${from}, ${to}) g`;

describe('memory', () => {
  it('one 2,000,000-row source transaction syncs with the CLI under 300 MB peak RSS', { timeout: 900_000 }, async (t) => {
    const sub = 'big_txn';
    const rows = 2_000_000;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, WIDE);
    await pair.source.query(db, `CREATE PUBLICATION pub FOR TABLE big`);
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub]);
    const rss = rssSampler(run.proc.pid!);
    try {
      await waitAllReady(pair.target, db, sub, 1, 120_000);
      const began = Date.now();
      await pair.source.query(db, fill(1, rows));
      const committed = Date.now();
      await waitCaughtUp(pair, db, sub, 600_000, run);
      const done = Date.now();
      const peak = rss.stop();
      const applySeconds = (done - committed) / 1000;
      t.diagnostic(`source INSERT of ${rows} rows took ${((committed - began) / 1000).toFixed(1)} s; applied ${applySeconds.toFixed(1)} s after its commit: ${Math.round(rows / applySeconds)} rows/s (${Math.round(rows / ((done - began) / 1000))} rows/s from the INSERT's start)`);
      t.diagnostic(`peak RSS of the CLI (VmHWM): ${mb(peak)}`);
      const [a, b] = await Promise.all([tableFingerprint(pair.source, db, 'big'), tableFingerprint(pair.target, db, 'big')]);
      assert.equal(b.rows, rows);
      assert.deepEqual(b, a, 'target equals source');
      assert.ok(peak > 0, 'VmHWM was sampled');
      assert.ok(peak < RSS_LIMIT, `peak RSS ${mb(peak)} must stay under ${mb(RSS_LIMIT)}`);
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      rss.stop();
      await finish(run);
    }
  });

  it('a target stalled by a lock for ~10 s while 500,000 rows stream: memory bounded, all rows arrive after', { timeout: 600_000 }, async (t) => {
    const sub = 'stalled';
    const rows = 500_000;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, WIDE);
    await pair.source.query(db, `CREATE PUBLICATION pub FOR TABLE big`);
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub]);
    const rss = rssSampler(run.proc.pid!);
    const locker = new pg.Client({ connectionString: targetUrl });
    locker.on('error', () => undefined);
    let locked = false;
    try {
      await waitAllReady(pair.target, db, sub, 1, 120_000);
      await locker.connect();
      await locker.query('BEGIN; LOCK TABLE big IN ACCESS EXCLUSIVE MODE');
      locked = true;
      const lockedAt = Date.now();
      // Five source transactions of 100,000 rows; the run blocks on the first.
      for (let k = 0; k < 5; k++) await pair.source.query(db, fill(k * 100_000 + 1, (k + 1) * 100_000));
      await waitFor('the run to wait on the lock (or exit)', async () => {
        if (!alive(run)) return true;
        const r = await pair.target.query(db, `SELECT count(*)::int AS n FROM pg_locks WHERE NOT granted AND relation = 'big'::regclass`);
        return r.rows[0].n > 0;
      }, 120_000);
      assert.ok(alive(run), `the run exited while the target was locked:\n${tail(run.output())}`);
      const held = Date.now() - lockedAt;
      if (held < 10_000) await sleep(10_000 - held); // the stall itself: the lock is held ~10 s
      assert.ok(alive(run), `the run exited while the target was locked:\n${tail(run.output())}`);
      const peakWhileLocked = rss.peak();
      await locker.query('COMMIT');
      locked = false;
      const released = Date.now();
      t.diagnostic(`lock held ${((released - lockedAt) / 1000).toFixed(1)} s; peak RSS while locked ${mb(peakWhileLocked)}`);

      await waitCaughtUp(pair, db, sub, 300_000, run);
      const seconds = (Date.now() - released) / 1000;
      const peak = rss.stop();
      t.diagnostic(`all ${rows} rows applied ${seconds.toFixed(1)} s after the release (${Math.round(rows / seconds)} rows/s); peak RSS of the CLI (VmHWM): ${mb(peak)}`);
      const count = (await pair.target.query(db, `SELECT count(*)::int AS n FROM big`)).rows[0].n;
      assert.equal(count, rows);
      assert.ok(await sameContents(pair, db, 'big'), 'target equals source');
      assert.ok(peak < RSS_LIMIT, `peak RSS ${mb(peak)} must stay under ${mb(RSS_LIMIT)}`);
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      if (locked) await locker.query('ROLLBACK').catch(() => undefined);
      await locker.end().catch(() => undefined);
      rss.stop();
      await finish(run);
    }
  });
});
