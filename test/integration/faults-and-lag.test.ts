/**
 * Target faults `run` rides through, lag as `status` reports it, and stops that cannot finish,
 * against the real CLI and real PostgreSQL 15 clusters:
 *  - transient target errors (deadlock, serialization failure, lock timeout, admin and crash
 *    shutdown, cannot connect now, disk full, out of memory, too many connections), injected by an
 *    ALWAYS trigger on the target (the engine runs with session_replication_role = replica) that
 *    raises the given SQLSTATEs one after another, counted by a sequence, which a rollback does
 *    not undo: the run retries, and the target ends up exactly the source, each change once;
 *  - a unique violation stops the run with the conflicting key and no other row data;
 *  - lag: an applied LSN right after the copy; about 0 bytes / 0 s once a caught-up sync stops
 *    cleanly, although the source wrote WAL elsewhere; seconds once a published commit waits;
 *  - a stop that hangs (the target table locked): a second signal, or the grace period, ends
 *    `run` and `serve-ipc` with a non-zero code, and a next run loses nothing.
 * One pair of clusters for the file; every test has its own database.
 */
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';
import type { FromEngine, ToEngine } from '../../src/cli/ipc';
import type { SyncOptions } from '../../src/engine/types';
import {
  alive, CLI, exitWithin, finish, freshDatabases, pg, runCli, sameContents, startPair, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor, whileAlive,
  WORKLOAD_SCHEMA, WORKLOAD_SEED, workloadTxn, type Pair,
} from '../harness/sync';

const MiB = 1024 * 1024;

let pair: Pair;
const cli = trackRuns();
const engines = new Set<ChildProcess>();
before(async () => {
  pair = await startPair();
});
after(async () => {
  for (const proc of engines) if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
  pair?.stop();
});

const runArgs = (sourceUrl: string, targetUrl: string, sub: string) => ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub];

// ---------------------------------------------------------------------------------------------
// Transient target errors

/** On the target: every statement on `table` raises `codes[n]` for its n-th call, then passes. */
async function injectFaults(db: string, table: string, codes: string[]): Promise<void> {
  await pair.target.query(db, `
    CREATE SEQUENCE fault_count;
    CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$
    DECLARE
      codes text[] := ARRAY[${codes.map((c) => `'${c}'`).join(', ')}];
      n bigint := nextval('fault_count');
    BEGIN
      IF n <= array_length(codes, 1) THEN
        RAISE EXCEPTION 'injected fault % of %', n, array_length(codes, 1) USING ERRCODE = codes[n];
      END IF;
      RETURN NULL;
    END $$;
    CREATE TRIGGER inject_fault BEFORE INSERT OR UPDATE OR DELETE ON ${table} FOR EACH STATEMENT EXECUTE FUNCTION inject_fault();
    ALTER TABLE ${table} ENABLE ALWAYS TRIGGER inject_fault;`);
}

async function faultsRaised(db: string): Promise<number> {
  const r = await pair.target.query(db, `SELECT CASE WHEN is_called THEN last_value ELSE 0 END AS n FROM fault_count`);
  return Number(r.rows[0].n);
}

/**
 * A streaming run of the mixed workload meets `codes` on the target, one after another: it must
 * log a retry for each, keep running, and end with both tables exactly as on the source.
 */
async function ridesThrough(prefix: string, codes: string[]): Promise<string> {
  const sub = prefix;
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, prefix, WORKLOAD_SCHEMA);
  await pair.source.query(db, `${WORKLOAD_SEED} CREATE PUBLICATION pub FOR TABLE accounts, ledger;`);
  const run = cli(runArgs(sourceUrl, targetUrl, sub));
  await waitAllReady(pair.target, db, sub, 2);
  await injectFaults(db, 'accounts', codes);
  for (let i = 1; i <= 10; i++) await pair.source.query(db, workloadTxn(i, { rows: 5, modulus: 7 }));
  await whileAlive(run, `${codes.length} injected faults`, async () => (await faultsRaised(db)) >= codes.length, 60_000, 100);
  for (let i = 11; i <= 20; i++) await pair.source.query(db, workloadTxn(i, { rows: 5, modulus: 7 }));
  await waitCaughtUp(pair, db, sub, 60_000, run);
  assert.ok(await sameContents(pair, db, 'accounts'), `accounts: the target is exactly the source\n${tail(run.output())}`);
  assert.ok(await sameContents(pair, db, 'ledger'), `ledger (duplicate rows, no key): each change applied once\n${tail(run.output())}`);
  assert.equal(await finish(run), 0, tail(run.output()));
  return run.output();
}

describe('transient target errors are retried', () => {
  it('deadlock, serialization failure, lock timeout', async () => {
    const out = await ridesThrough('fault_lock', ['40P01', '40001', '55P03']);
    for (const code of ['40P01', '40001', '55P03']) assert.match(out, new RegExp(`SQLSTATE ${code}\\): .*injected fault.*; retry \\d+ in \\d+ s`), tail(out));
  });

  it('admin shutdown, crash shutdown, cannot connect now', async () => {
    const out = await ridesThrough('fault_shutdown', ['57P01', '57P02', '57P03']);
    for (const code of ['57P01', '57P02', '57P03']) assert.match(out, new RegExp(`SQLSTATE ${code}\\): .*; retry \\d+ in \\d+ s`), tail(out));
  });

  it('out of memory, too many connections, and disk full with its own message', async () => {
    const out = await ridesThrough('fault_resource', ['53200', '53300', '53100']);
    for (const code of ['53200', '53300']) assert.match(out, new RegExp(`SQLSTATE ${code}\\): .*; retry \\d+ in \\d+ s`), tail(out));
    const diskFull = out.split('\n').filter((l) => /disk is full/.test(l));
    assert.equal(diskFull.length, 1, tail(out));
    assert.match(diskFull[0], /the target's disk is full \(injected fault 3 of 3\): free space on the target; the sync resumes by itself \(retry 3 in 4 s/);
  });

  it('a unique violation stops the run with the conflicting key and no other row data', async () => {
    const sub = 'fault_unique';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TABLE items (id int PRIMARY KEY, secret text);`);
    await pair.source.query(db, `INSERT INTO items VALUES (1, 'copied'); CREATE PUBLICATION pub FOR TABLE items;`);
    const run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 1);
    await pair.target.query(db, `INSERT INTO items VALUES (42, 'target-only-value')`);
    await pair.source.query(db, `INSERT INTO items VALUES (42, 'source-only-value')`);
    assert.equal(await exitWithin(run, 30_000), 1, tail(run.output()));
    const out = run.output();
    assert.match(out, /pg-live-sync: error: .*duplicate key value violates unique constraint "items_pkey" \(Key \(id\)=\(42\) already exists\.\); .*delete that row/, tail(out));
    for (const value of ['target-only-value', 'source-only-value']) assert.ok(!out.includes(value), `row data in the output: ${value}`);
  });
});

// ---------------------------------------------------------------------------------------------
// Lag

interface StatusJson { appliedLsn: string | null; consistentLsn: string | null; lagBytes: number | null; lagSeconds: number | null }

async function statusJson(targetUrl: string, sub: string, sourceUrl?: string): Promise<StatusJson> {
  const r = await runCli(['status', '--subscription', sub, '--target', targetUrl, ...(sourceUrl ? ['--source', sourceUrl] : []), '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as StatusJson;
}

describe('lag', () => {
  it('an applied LSN right after the copy; about 0 bytes and 0 s after a clean stop, with WAL written elsewhere; seconds for a pending commit', async () => {
    const sub = 'lag_idle';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TABLE items (id int PRIMARY KEY, name text);`);
    await pair.source.query(db, `INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g; CREATE PUBLICATION pub FOR TABLE items;`);
    const run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 1);
    const copied = await statusJson(targetUrl, sub);
    assert.notEqual(copied.appliedLsn, null, 'an applied LSN right after the copy');
    assert.equal(copied.appliedLsn, copied.consistentLsn, 'the copy is applied up to the consistent point');

    await pair.source.query(db, `UPDATE items SET name = 'changed' WHERE id <= 10`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    // Another database on the source writes WAL the sync has no part in.
    const other = `${db}_other`;
    await pair.source.createDatabase(other);
    await pair.source.query(other, `CREATE TABLE w (x text); INSERT INTO w SELECT repeat('x', 1000) FROM generate_series(1, 4000);`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    const confirmed = (await pair.source.query(db, `SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = $1`, [`pg_live_sync_${sub}`])).rows[0].l as string;
    await whileAlive(run, 'the target to hold the position the slot confirmed', async () => {
      const r = await pair.target.query(db, `SELECT applied_lsn >= $2::pg_lsn AS ok FROM _pg_live_sync.subscription WHERE subname = $1`, [sub, confirmed]);
      return r.rows[0]?.ok === true;
    });
    assert.equal(await finish(run), 0, tail(run.output()));

    const stopped = await waitFor('status after the stop: lag under 1 MiB and 0 s', async () => {
      const s = await statusJson(targetUrl, sub, sourceUrl);
      return s.lagBytes !== null && s.lagBytes < MiB && s.lagSeconds === 0 ? s : null;
    }, 20_000, 200, { describe: async () => JSON.stringify(await statusJson(targetUrl, sub, sourceUrl)) });
    assert.ok(stopped.lagBytes! < MiB);
    const text = await runCli(['status', '--subscription', sub, '--target', targetUrl, '--source', sourceUrl]);
    assert.match(text.stdout, /^lag +[\d.,]+ \S*B of source WAL, 0\.0 s behind$/m, text.stdout);

    // More WAL elsewhere while stopped: bytes, but no published commit is waiting.
    await pair.source.query(other, `INSERT INTO w SELECT repeat('y', 1000) FROM generate_series(1, 100);`);
    const idle = await statusJson(targetUrl, sub, sourceUrl);
    assert.ok(idle.lagBytes! > 0 && idle.lagBytes! < MiB, JSON.stringify(idle));
    assert.equal(idle.lagSeconds, 0, 'WAL without a pending commit is no time behind');

    // A published commit while stopped: time behind from its commit time.
    await pair.source.query(db, `INSERT INTO items VALUES (5001, 'while stopped')`);
    const pending = await waitFor('lag seconds for the pending commit', async () => {
      const s = await statusJson(targetUrl, sub, sourceUrl);
      return s.lagSeconds !== null && s.lagSeconds > 0 ? s : null;
    }, 20_000, 200);
    assert.ok(pending.lagSeconds! < 60, JSON.stringify(pending));
  });
});

// ---------------------------------------------------------------------------------------------
// Stops that cannot finish

/** `serve-ipc` forked as the extension does, started on a sync. */
function forkEngine(sourceUrl: string, targetUrl: string, sub: string) {
  const proc = fork(CLI, ['serve-ipc'], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: [] });
  engines.add(proc);
  const messages: FromEngine[] = [];
  let stderr = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => (stderr += d));
  proc.on('message', (m: FromEngine) => messages.push(m));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const options: SyncOptions = { source: sourceUrl, target: targetUrl, publications: ['pub'], subscription: sub, tableMaps: [], tableSyncWorkers: 2, copyData: true };
  proc.send({ type: 'start', options } satisfies ToEngine);
  return {
    proc,
    /** The exit code, or 'running' if still up after `ms`. */
    within: (ms: number) => Promise.race([exited, new Promise<'running'>((resolve) => setTimeout(() => resolve('running'), ms).unref())]),
    exitError: () => messages.find((m): m is Extract<FromEngine, { type: 'exit' }> => m.type === 'exit')?.error,
    alive: () => proc.exitCode === null && proc.signalCode === null,
    output: () => stderr,
  };
}

/**
 * A streaming sync (started by `start`) whose apply waits on a lock the test holds on the target
 * table, so a stop cannot commit; `release` ends the lock.
 */
async function stuckSync<R extends { alive(): boolean; output(): string }>(sub: string, start: (sourceUrl: string, targetUrl: string) => R) {
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TABLE items (id int PRIMARY KEY, name text);`);
  await pair.source.query(db, `INSERT INTO items VALUES (1, 'a'); CREATE PUBLICATION pub FOR TABLE items;`);
  const runner = start(sourceUrl, targetUrl);
  await waitAllReady(pair.target, db, sub, 1);
  const locker = new pg.Client({ connectionString: targetUrl });
  await locker.connect();
  await locker.query('BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE');
  await pair.source.query(db, `INSERT INTO items VALUES (2, 'waits for the lock')`);
  await waitFor('the apply to wait on the lock', async () => {
    assert.ok(runner.alive(), `the sync exited\n${tail(runner.output())}`);
    const r = await pair.target.query(db, `SELECT 1 FROM pg_stat_activity WHERE datname = $1 AND application_name = 'pg_live_sync' AND wait_event_type = 'Lock'`, [db]);
    return r.rowCount === 1;
  }, 60_000, 100, { fatal: (err) => err instanceof assert.AssertionError });
  return {
    runner, db, sourceUrl, targetUrl,
    release: () => locker.query('ROLLBACK').finally(() => locker.end()),
  };
}

const stuckRun = (sub: string) => stuckSync(sub, (sourceUrl, targetUrl) => {
  const run = cli(runArgs(sourceUrl, targetUrl, sub));
  return Object.assign(run, { alive: () => alive(run) });
});
const stuckEngine = (sub: string) => stuckSync(sub, (sourceUrl, targetUrl) => forkEngine(sourceUrl, targetUrl, sub));

describe('a stop that hangs', () => {
  it('run: a second SIGINT exits at once, non-zero', async () => {
    const s = await stuckRun('hang_run2');
    const run = s.runner;
    try {
      run.proc.kill('SIGINT');
      assert.equal(await exitWithin(run, 1_000), 'running', 'the stop waits for the locked table');
      run.proc.kill('SIGINT');
      assert.equal(await exitWithin(run, 5_000), 1, tail(run.output()));
      assert.match(run.output(), /pg-live-sync: error: stopped by force \(second SIGINT\)/);
    } finally {
      await s.release();
    }
  });

  it('run: the grace period ends a stop that does not finish, non-zero; the next run loses nothing', async () => {
    const s = await stuckRun('hang_grace');
    const run = s.runner;
    try {
      run.proc.kill('SIGTERM');
      assert.equal(await exitWithin(run, 20_000), 1, tail(run.output()));
      assert.match(run.output(), /pg-live-sync: error: stopped by force \(the stop did not finish within 13 s\)/);
    } finally {
      await s.release();
    }
    const again = cli(runArgs(s.sourceUrl, s.targetUrl, 'hang_grace'));
    await waitCaughtUp(pair, s.db, 'hang_grace', 60_000, again);
    assert.ok(await sameContents(pair, s.db, 'items'), tail(again.output()));
    assert.equal(await finish(again), 0, tail(again.output()));
  });

  it('serve-ipc: a second SIGTERM exits at once, non-zero, with an exit message', async () => {
    const s = await stuckEngine('hang_ipc2');
    const engine = s.runner;
    try {
      engine.proc.kill('SIGTERM');
      assert.equal(await engine.within(1_000), 'running', 'the stop waits for the locked table');
      engine.proc.kill('SIGTERM');
      assert.equal(await engine.within(5_000), 1, tail(engine.output()));
      assert.match(engine.exitError() ?? '', /^stopped by force \(second SIGTERM\)/, tail(engine.output()));
    } finally {
      await s.release();
    }
  });

  it('serve-ipc: the grace period ends a stop that does not finish, non-zero', async () => {
    const s = await stuckEngine('hang_ipcg');
    const engine = s.runner;
    try {
      engine.proc.kill('SIGTERM');
      assert.equal(await engine.within(20_000), 1, tail(engine.output()));
      assert.match(engine.exitError() ?? '', /^stopped by force \(the stop did not finish within 13 s\)/, tail(engine.output()));
    } finally {
      await s.release();
    }
  });
});
