/**
 * A target that may lose commits it acknowledged (synchronous_commit = off, by server setting
 * and ALTER DATABASE): the sync's own sessions commit synchronously, so a target crash right
 * after the slot was confirmed loses nothing the slot no longer holds (real CLI, real
 * PostgreSQL 15). wal_writer_delay is long so that unflushed commits stay unwritten until the crash.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { finish, freshDatabases, pg, startPair, tableFingerprint, trackRuns, waitAllReady, waitCaughtUp, whileAlive, type Pair } from '../harness/sync';

let pair: Pair;
const startRun = trackRuns();
before(async () => (pair = await startPair({ synchronous_commit: 'off', wal_writer_delay: "'10s'", wal_writer_flush_after: "'1GB'" })));
after(() => pair?.stop());

describe('a target with synchronous_commit = off', () => {
  it('crashing right after the slot is confirmed loses no row; the rerun resumes with every row once', { timeout: 240_000 }, async () => {
    const sub = 'durable';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'durable', `CREATE TABLE t (id int PRIMARY KEY, v text)`);
    await pair.target.query(db, `ALTER DATABASE ${db} SET synchronous_commit = off`);
    await pair.source.query(db, `INSERT INTO t SELECT g, 'copied' FROM generate_series(1, 100) g; CREATE PUBLICATION pub FOR TABLE t;`);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--publication', 'pub'];
    const first = startRun(args);
    await waitAllReady(pair.target, db, sub, 1);
    // Single-row transactions, each committed (and confirmed to the slot) on its own; then the
    // crash as soon as the slot is confirmed past the last, well within wal_writer_delay.
    const writer = new pg.Client({ connectionString: sourceUrl });
    await writer.connect();
    let last: string;
    try {
      for (let i = 101; i <= 200; i++) await writer.query(`INSERT INTO t VALUES (${i}, 'streamed')`);
      last = (await writer.query(`SELECT pg_current_wal_insert_lsn()::text AS l`)).rows[0].l;
    } finally {
      await writer.end();
    }
    await whileAlive(first, 'the slot to be confirmed past the last insert', async () =>
      (await pair.source.query(db, `SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = $2`, [last, `pg_live_sync_${sub}`])).rows[0]?.ok === true, 60_000, 20);
    pair.target.restart('immediate');
    await first.kill9();

    const again = startRun(args);
    await pair.source.query(db, `INSERT INTO t VALUES (201, 'after the crash')`);
    await waitCaughtUp(pair, db, sub, 90_000, again);
    const [source, target] = await Promise.all([tableFingerprint(pair.source, db, 't'), tableFingerprint(pair.target, db, 't')]);
    assert.equal(target.rows, 201, `every row on the target:\n${again.output()}`);
    assert.deepEqual(target, source);
    assert.equal(await finish(again), 0, again.output());
  });
});
