/**
 * Which target owns a sync's slots, and tables copied afresh (real CLI, real PostgreSQL 15):
 *  - slot names are cluster-wide but the state is per target: a second sync of the same name into
 *    another target database is refused, leaves the first one's slot alone, and so does its drop;
 *  - a target whose state says less was applied than the slot confirms (a copy of a target's
 *    state) is refused; state from an older version resumes;
 *  - a target table dropped and created again is copied afresh, while running and at start;
 *  - `pg-live-sync resync --table` copies one table afresh, running or not, and refuses bad names.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { PASSWORD } from '../harness/cluster';
import {
  alive, exitWithin, finish, freshDatabases, runCli, sameContents, startPair, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor,
  type CliRun, type Pair,
} from '../harness/sync';

let pair: Pair;
const startRun = trackRuns();
before(async () => (pair = await startPair()));
after(() => pair?.stop());

const runArgs = (sourceUrl: string, targetUrl: string, sub: string) =>
  ['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--publication', 'pub'];

const slotExists = async (db: string, slot: string) =>
  (await pair.source.query(db, `SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = $1`, [slot])).rows[0].n === 1;

/** Exactly one line on stderr, no password, exit `code`. */
function oneLine(r: { code: number | null; stdout: string; stderr: string }, code: number, pattern: RegExp): void {
  assert.equal(r.code, code, `exit code; stdout: ${r.stdout}\nstderr: ${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line on stderr:\n${r.stderr}`);
  assert.match(lines[0], pattern);
  assert.ok(!(r.stdout + r.stderr).includes(PASSWORD), 'no password in the output');
}

/** A run that fails on its own: its exit code within 30 s and its output. */
async function failingRun(args: string[]): Promise<{ code: number | null | 'running'; output: string }> {
  const run = startRun(args);
  const code = await exitWithin(run, 30_000);
  if (code === 'running') await run.kill9();
  return { code, output: run.output() };
}

async function waitSame(db: string, table: string, run: CliRun, what: string): Promise<void> {
  await waitFor(what, async () => {
    assert.ok(alive(run), `the run exited (code ${run.proc.exitCode}):\n${tail(run.output())}`);
    return sameContents(pair, db, table);
  }, 90_000, 200, { describe: async () => tail(run.output()), fatal: (err) => err instanceof assert.AssertionError });
}

describe('slot ownership across target databases', () => {
  it('a second sync of the same name into another target database is refused, and its drop leaves the slot', { timeout: 240_000 }, async () => {
    const sub = 'owned';
    const slot = `pg_live_sync_${sub}`;
    const schema = `CREATE TABLE t (id int PRIMARY KEY, v text)`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'own', schema);
    const otherDb = `${db}_other`;
    await pair.target.createDatabase(otherDb);
    await pair.target.query(otherDb, schema);
    const otherUrl = pair.target.url(otherDb);
    await pair.source.query(db, `INSERT INTO t SELECT g, 'first' FROM generate_series(1, 100) g; CREATE PUBLICATION pub FOR TABLE t;`);

    const first = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 1);
    await pair.source.query(db, `INSERT INTO t SELECT g, 'streamed' FROM generate_series(101, 150) g`);
    await waitCaughtUp(pair, db, sub, 60_000, first);
    assert.equal(await finish(first), 0, first.output());

    // The same name into another database of the same target cluster: the slot is not its own.
    const second = await failingRun(runArgs(sourceUrl, otherUrl, sub));
    assert.equal(second.code, 1, `the second sync must be refused:\n${tail(second.output)}`);
    assert.match(second.output, new RegExp(`pg-live-sync: error: replication slot "${slot}" of subscription "${sub}" on the source was not created by this target .*pick another --subscription`));
    assert.ok(!second.output.includes(PASSWORD));
    assert.ok(await slotExists(db, slot), 'the first sync keeps its slot');
    const otherState = await pair.target.query(otherDb, `SELECT to_regclass('_pg_live_sync.subscription') IS NULL OR NOT EXISTS (SELECT 1 FROM _pg_live_sync.subscription WHERE subname = '${sub}') AS none`);
    assert.equal(otherState.rows[0].none, true, 'the refused sync records nothing');

    // Changes made meanwhile reach the first target when it resumes: nothing was lost.
    await pair.source.query(db, `INSERT INTO t SELECT g, 'while stopped' FROM generate_series(151, 200) g; UPDATE t SET v = 'changed' WHERE id <= 10`);
    const resumed = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitCaughtUp(pair, db, sub, 60_000, resumed);
    assert.ok(await sameContents(pair, db, 't'), 'the first target has every row after resuming');
    assert.equal(await finish(resumed), 0, resumed.output());

    // drop from the target that does not own the slot leaves it; from the owner, removes it.
    const foreignDrop = await runCli(['drop', '--subscription', sub, '--source', sourceUrl, '--target', otherUrl]);
    assert.equal(foreignDrop.code, 0, foreignDrop.stderr);
    assert.match(foreignDrop.stderr, new RegExp(`replication slot "${slot}" .* not created by this target .*left in place`));
    assert.ok(await slotExists(db, slot), 'drop from another target leaves the slot');
    const ownerDrop = await runCli(['drop', '--subscription', sub, '--source', sourceUrl, '--target', targetUrl]);
    assert.equal(ownerDrop.code, 0, ownerDrop.stderr);
    assert.ok(!(await slotExists(db, slot)), 'drop from the owner removes the slot');
  });

  it('a target whose state is behind what the slot confirms (a copy of another target) is refused; older state resumes', { timeout: 240_000 }, async () => {
    const sub = 'moved';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'moved', `CREATE TABLE t (id int PRIMARY KEY, v text)`);
    await pair.source.query(db, `INSERT INTO t SELECT g, 'x' FROM generate_series(1, 50) g; CREATE PUBLICATION pub FOR TABLE t;`);
    const first = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 1);
    await waitCaughtUp(pair, db, sub, 60_000, first);
    assert.equal(await finish(first), 0, first.output());
    const applied = async (database: string) =>
      (await pair.target.query(database, `SELECT applied_lsn::text AS a, consistent_lsn::text AS c FROM _pg_live_sync.subscription`)).rows[0];
    const confirmed = async () => (await pair.source.query(db, `SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = $1`, [`pg_live_sync_${sub}`])).rows[0].l as string;
    const notPast = async (database: string) => (await pair.source.query(db, `SELECT $1::pg_lsn <= GREATEST($2::pg_lsn, $3::pg_lsn) AS ok`, [await confirmed(), (await applied(database)).a, (await applied(database)).c])).rows[0].ok;
    assert.equal(await notPast(db), true, 'a stopped sync has acknowledged no more than its target applied');

    // A copy of the target's state, taken now, then the original moves on.
    const cloneDb = `${db}_clone`;
    await pair.target.query('postgres', `CREATE DATABASE ${cloneDb} TEMPLATE ${db}`);
    await pair.source.query(db, `INSERT INTO t SELECT g, 'later' FROM generate_series(51, 80) g`);
    const again = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitCaughtUp(pair, db, sub, 60_000, again);
    assert.equal(await finish(again), 0, again.output());
    const clone = await failingRun(runArgs(sourceUrl, pair.target.url(cloneDb), sub));
    assert.equal(clone.code, 1, `the copy must be refused:\n${tail(clone.output)}`);
    assert.match(clone.output, /pg-live-sync: error: replication slot "pg_live_sync_moved" is confirmed up to \S+ on the source, past the \S+ this target holds: the changes in between are not on this target .*another sync of subscription "moved", into another target database, moved the slot, or this target lost commits/);
    assert.ok(await notPast(db), 'the refused copy did not move the slot');

    // State written by an older version (it acknowledged idle positions without recording them).
    await pair.target.query(db, `UPDATE _pg_live_sync.subscription SET acks_applied_only = false, applied_lsn = consistent_lsn`);
    await pair.source.query(db, `INSERT INTO t SELECT g, 'after upgrade' FROM generate_series(81, 90) g`);
    const upgraded = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitCaughtUp(pair, db, sub, 60_000, upgraded);
    assert.ok(await sameContents(pair, db, 't'));
    assert.equal(await finish(upgraded), 0, upgraded.output());
    const flag = await pair.target.query(db, `SELECT acks_applied_only FROM _pg_live_sync.subscription`);
    assert.equal(flag.rows[0].acks_applied_only, true);
  });
});

describe('tables copied afresh', () => {
  const SCHEMA = `CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);
    CREATE SCHEMA "My Schema"; CREATE TABLE "My Schema"."Ünï.T" (id int PRIMARY KEY, v text);`;
  const SEED = `INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 500) g;
    INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 500) g;
    INSERT INTO "My Schema"."Ünï.T" SELECT g, 'u' || g FROM generate_series(1, 300) g;
    CREATE PUBLICATION pub FOR ALL TABLES;`;

  it('a target table dropped and created again is copied afresh, while running and at start', { timeout: 240_000 }, async () => {
    const sub = 'recreated';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'recreated', SCHEMA);
    await pair.source.query(db, SEED);
    const run = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 3);
    await pair.target.query(db, `DROP TABLE a; CREATE TABLE a (id int PRIMARY KEY, v text);`);
    await pair.source.query(db, `INSERT INTO a VALUES (501, 'new'); UPDATE a SET v = 'changed' WHERE id <= 5; INSERT INTO b VALUES (501, 'new');`);
    await waitSame(db, 'a', run, 'the recreated table a to be copied afresh');
    assert.match(run.output(), /"public"\."a": its target table "public"\."a" was dropped and created again on the target/);
    await waitAllReady(pair.target, db, sub, 3);
    await pair.source.query(db, `UPDATE a SET v = 'after' WHERE id = 501`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.ok(await sameContents(pair, db, 'a'));
    assert.ok(await sameContents(pair, db, 'b'));
    assert.equal(await finish(run), 0, run.output());

    // Recreated while stopped: noticed at start.
    await pair.target.query(db, `DROP TABLE "My Schema"."Ünï.T"; CREATE TABLE "My Schema"."Ünï.T" (id int PRIMARY KEY, v text);`);
    const next = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitSame(db, '"My Schema"."Ünï.T"', next, 'the table recreated while stopped to be copied afresh');
    assert.match(next.output(), /"My Schema"\."Ünï\.T": its target table "My Schema"\."Ünï\.T" was dropped and created again/);
    assert.equal(await finish(next), 0, next.output());
  });

  it('resync --table copies one table afresh on a running sync and at the next run; bad names get one line', { timeout: 240_000 }, async () => {
    const sub = 'resynced';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'resynced', SCHEMA);
    await pair.source.query(db, SEED);
    const run = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 3);
    const resync = (table: string) => runCli(['resync', '--subscription', sub, '--target', targetUrl, '--table', table]);

    // Rows lost behind the sync's back come back only through a fresh copy.
    await pair.target.query(db, `DELETE FROM "My Schema"."Ünï.T" WHERE id <= 100; DELETE FROM b WHERE id <= 100`);
    const quoted = await resync('"My Schema"."Ünï.T"');
    assert.equal(quoted.code, 0, quoted.stderr);
    assert.match(quoted.stdout, /^"My Schema"\."Ünï\.T": the running sync is copying it afresh/);
    await waitSame(db, '"My Schema"."Ünï.T"', run, 'the resynced table to match the source');
    await waitAllReady(pair.target, db, sub, 3);
    assert.ok(!(await sameContents(pair, db, 'b')), 'a table not resynced is left as it is');
    await pair.source.query(db, `INSERT INTO "My Schema"."Ünï.T" VALUES (301, 'streamed')`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.ok(await sameContents(pair, db, '"My Schema"."Ünï.T"'), 'the resynced table streams again');
    assert.equal(await finish(run), 0, run.output());

    // Not running: marked, and the next run copies it.
    const plain = await resync('PUBLIC.B');
    assert.equal(plain.code, 0, plain.stderr);
    assert.match(plain.stdout, /^"public"\."b": marked for resync; the next pg-live-sync run of resynced copies it afresh/);
    const next = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitSame(db, 'b', next, 'b to be copied afresh by the next run');
    assert.equal(await finish(next), 0, next.output());

    oneLine(await resync('b'), 2, /^pg-live-sync: --table "b" has no schema; give SCHEMA\.TABLE as in SQL/);
    oneLine(await resync('"My Schema.b'), 2, /^pg-live-sync: --table ""My Schema\.b" has a double quote that is not closed/);
    oneLine(await resync('public.missing'), 1, /^pg-live-sync: error: subscription "resynced" has no table "public"\."missing" \(its tables: "My Schema"\."Ünï\.T", "public"\."a", "public"\."b"\)/);
    oneLine(await runCli(['resync', '--subscription', 'nosuch', '--target', targetUrl, '--table', 'public.a']), 1, /^pg-live-sync: error: the target has no state for subscription "nosuch"/);
  });
});
