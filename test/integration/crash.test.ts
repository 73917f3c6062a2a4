import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freshDatabases, sameContents, startCli, startPair, waitAllReady, waitCaughtUp, waitFor, WORKLOAD_SCHEMA, WORKLOAD_SEED, workloadTxn, type Pair } from '../harness/sync';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

/** Keeps committing mixed transactions on the source until stopped. */
function workload(db: string): { stop(): Promise<number> } {
  let running = true;
  let txns = 0;
  const loop = (async () => {
    let i = 0;
    while (running) {
      i++;
      await pair.source.query(db, workloadTxn(i, { rows: 20, modulus: 7 }));
      txns++;
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return txns;
    },
  };
}

describe('crash and stop', () => {
  it('kill -9 during streaming, restarted each time: nothing lost, nothing applied twice', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'crash', WORKLOAD_SCHEMA);
    await pair.source.query(db, `${WORKLOAD_SEED} CREATE PUBLICATION pub FOR TABLE accounts, ledger;`);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', 'crash'];
    let run = startCli(args);
    await waitAllReady(pair.target, db, 'crash', 2);
    const load = workload(db);
    try {
      for (let kill = 0; kill < 6; kill++) {
        // Kill once this run is applying, at a random point of its current group.
        const before = await appliedLsn(db);
        await waitFor('the run to apply more', async () => (await appliedLsn(db)) !== before, 60_000, 50);
        await new Promise((r) => setTimeout(r, Math.random() * 600));
        await run.kill9();
        run = startCli(args);
      }
    } finally {
      const txns = await load.stop();
      assert.ok(txns > 0);
    }
    await waitCaughtUp(pair, db, 'crash');
    assert.ok(await sameContents(pair, db, 'accounts'), 'accounts match');
    assert.ok(await sameContents(pair, db, 'ledger'), 'ledger (no key, duplicates) matches');
    assert.equal(await run.stop(), 0, run.output());
  });

  it('SIGINT persists progress and exits 0 within 15 s; a restart resumes without copying again', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'stop', `CREATE TABLE t (id int PRIMARY KEY, v int)`);
    await pair.source.query(db, `INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g; CREATE PUBLICATION pub FOR TABLE t;`);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', 'stop'];
    const first = startCli(args);
    await waitAllReady(pair.target, db, 'stop', 1);
    await pair.source.query(db, `UPDATE t SET v = v + 1`);
    await waitCaughtUp(pair, db, 'stop');
    const started = Date.now();
    assert.equal(await first.stop(), 0, first.output());
    assert.ok(Date.now() - started < 15_000);

    await pair.source.query(db, `INSERT INTO t VALUES (5000, 1); DELETE FROM t WHERE id <= 10;`);
    const copiedBefore = await pair.target.query(db, `SELECT updated_at FROM _pg_live_sync.subscription_rel WHERE subname = 'stop'`);
    const second = startCli(args);
    await waitCaughtUp(pair, db, 'stop');
    assert.ok(await sameContents(pair, db, 't'));
    assert.equal(await second.stop(), 0, second.output());
    assert.doesNotMatch(second.output(), /copied /, 'a ready table is never copied again');
    const copiedAfter = await pair.target.query(db, `SELECT updated_at FROM _pg_live_sync.subscription_rel WHERE subname = 'stop'`);
    assert.deepEqual(copiedAfter.rows, copiedBefore.rows);
  });
});

async function appliedLsn(db: string): Promise<string | null> {
  const r = await pair.target.query(db, `SELECT applied_lsn::text AS l FROM _pg_live_sync.subscription WHERE subname = 'crash'`);
  return r.rows[0]?.l ?? null;
}
