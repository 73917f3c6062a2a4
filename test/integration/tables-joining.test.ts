/**
 * Tables joining and leaving the publication while `run` streams (real CLI, real PostgreSQL 15):
 * ADD TABLE under heavy writes, DROP TABLE and re-adding, a table failing until its target exists,
 * handovers on an idle source, a catch-up that keeps failing, partitioned tables, --copy-data false.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  alive, commitLoop, finish, freshDatabases, pg, rnd, runCli, sameContents, sleep, startPair, tableFingerprint, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor,
  type CliRun, type Pair,
} from '../harness/sync';

let pair: Pair;
const startRun = trackRuns();
before(async () => (pair = await startPair()));
after(() => pair?.stop());

const cli = (sourceUrl: string, targetUrl: string, sub: string, ...extra: string[]): CliRun =>
  startRun(['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--publication', 'pub', ...extra]);

/** Fresh databases (`schema` on both sides, then `source` / `target` SQL), and a run once `ready` tables are r. */
async function started(sub: string, o: { schema?: string; source: string; target?: string; ready: number; extra?: string[] }) {
  const dbs = await freshDatabases(pair, sub, o.schema);
  await pair.source.query(dbs.db, o.source);
  if (o.target) await pair.target.query(dbs.db, o.target);
  const run = cli(dbs.sourceUrl, dbs.targetUrl, sub, ...(o.extra ?? []));
  await waitAllReady(pair.target, dbs.db, sub, o.ready, 120_000);
  return { ...dbs, run };
}

interface Rel { tablename: string; state: string; last_error: string | null; removed: boolean }
async function rels(db: string, sub: string): Promise<Map<string, Rel>> {
  const r = await pair.target.query<Rel>(db, `SELECT tablename, state, last_error, removed_at IS NOT NULL AS removed FROM _pg_live_sync.subscription_rel WHERE subname = $1`, [sub]);
  return new Map(r.rows.map((row) => [row.tablename, row]));
}
const rel = async (db: string, sub: string, table: string) => (await rels(db, sub)).get(table);

/** Waits for `table` to record an error, and returns its row. */
const recordedError = (db: string, sub: string, table: string) =>
  waitFor(`${table} to record an error`, async () => {
    const r = await rel(db, sub, table);
    return r?.last_error ? r : null;
  }, 30_000, 50);

/** Waits for every table to be in one of `states` ('sr': handed over to the main stream). */
async function waitState(db: string, sub: string, tables: string[], states: string, run: CliRun, timeoutMs: number): Promise<void> {
  await waitFor(`${tables.join(', ')} in state ${states.split('').join(' or ')}`, async () => {
    if (!alive(run)) return true;
    const now = await rels(db, sub);
    return tables.every((t) => states.includes(now.get(t)?.state ?? '-') && !now.get(t)?.removed);
  }, timeoutMs, 50).catch(async (err) => {
    throw new Error(`${(err as Error).message}; states: ${JSON.stringify([...(await rels(db, sub)).values()])}\n${tail(run.output())}`);
  });
  assert.ok(alive(run), `the run exited (code ${run.proc.exitCode}):\n${tail(run.output())}`);
}

const SYNC_SLOTS = `SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgls_%_sync_%' AND database = current_database()`;

/** Records each table's sequence of distinct states (every 20 ms) and any table-sync slot seen. */
function stateSampler(db: string, sub: string, tables: string[]) {
  const seen = new Map<string, string[]>(tables.map((t) => [t, []]));
  const slots = new Set<string>();
  let running = true;
  const target = new pg.Client({ connectionString: pair.target.url(db) });
  const source = new pg.Client({ connectionString: pair.source.url(db) });
  const loop = (async () => {
    await Promise.all([target.connect(), source.connect()]);
    try {
      while (running) {
        const r = await target.query(`SELECT tablename, state FROM _pg_live_sync.subscription_rel WHERE subname = $1 AND tablename = ANY($2)`, [sub, tables]);
        for (const row of r.rows) if (seen.get(row.tablename)!.at(-1) !== row.state) seen.get(row.tablename)!.push(row.state);
        for (const row of (await source.query(SYNC_SLOTS)).rows) slots.add(row.slot_name);
        await sleep(20);
      }
    } finally {
      await Promise.all([target.end(), source.end()]);
    }
  })();
  return { seen, slots, async stop() { running = false; await loop; } };
}

describe('tables joining and leaving while run streams', () => {
  it('ADD TABLE: noticed without restart, copied in its own snapshot, caught up under heavy writes, exact', { timeout: 300_000 }, async (t) => {
    const sub = 'join_add';
    const { db, sourceUrl, run } = await started(sub, {
      schema: `CREATE TABLE seed (id int PRIMARY KEY, v int); CREATE TABLE big (id bigint PRIMARY KEY, v bigint, pad text); CREATE TABLE dupes (k text, v int);`,
      source: `ALTER TABLE dupes REPLICA IDENTITY FULL;
        INSERT INTO big SELECT g, g, repeat(md5(g::text), 2) FROM generate_series(1, 300000) g;
        INSERT INTO dupes SELECT CASE WHEN g % 10 = 0 THEN 'one' ELSE 'dup' END, g % 5 FROM generate_series(1, 1000) g;
        CREATE PUBLICATION pub FOR TABLE seed;`,
      ready: 1,
    });
    const sampler = stateSampler(db, sub, ['big', 'dupes']);
    const load = commitLoop(sourceUrl, (i) => {
      const [r1, r2, r3] = [rnd(300_000), rnd(300_000), rnd(300_000)];
      return `BEGIN;
        INSERT INTO big SELECT 1000000 + ${i} * 100 + g, g, 'new' FROM generate_series(1, 50) g;
        UPDATE big SET v = v + 1 WHERE id BETWEEN ${r1} AND ${r1 + 30};
        UPDATE big SET id = id + 10000000 WHERE id = ${r2};
        DELETE FROM big WHERE id BETWEEN ${r3} AND ${r3 + 3} OR id = 1000000 + ${i} * 100 + 7;
        INSERT INTO dupes VALUES ('dup', ${i % 5}), ('dup', ${i % 5}), ('one', ${i});
        DELETE FROM dupes WHERE ctid = (SELECT ctid FROM dupes WHERE k = 'dup' AND v = ${i % 5} LIMIT 1);
        UPDATE dupes SET v = v + 1 WHERE ctid = (SELECT ctid FROM dupes WHERE k = 'one' LIMIT 1);
        UPDATE dupes SET v = v + 100 WHERE ctid IN (SELECT ctid FROM dupes WHERE k = 'dup' AND v = ${(i + 2) % 5} LIMIT 3);
        INSERT INTO seed VALUES (${i}, ${i});
        COMMIT;`;
    });
    let stopped = false;
    try {
      await load.more(10);
      await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE big, dupes`);
      const addedAt = Date.now();
      await waitFor('the run to notice the added tables', async () => (await rels(db, sub)).size === 3, 30_000, 50);
      t.diagnostic(`noticed ${Date.now() - addedAt} ms after ADD TABLE`);
      await waitState(db, sub, ['big', 'dupes'], 'r', run, 240_000);
      t.diagnostic(`both ready ${((Date.now() - addedAt) / 1000).toFixed(1)} s after ADD TABLE; ${load.committed} workload transactions so far`);
      await load.more(20); // the main stream applies them after the handover
      t.diagnostic(`workload: ${await load.stop()} transactions`);
      stopped = true;
      await waitCaughtUp(pair, db, sub, 120_000, run);
      await sampler.stop();
      t.diagnostic(`states seen: big ${sampler.seen.get('big')!.join('>')}, dupes ${sampler.seen.get('dupes')!.join('>')}; sync slots seen: ${[...sampler.slots].join(', ')}`);
      for (const table of ['seed', 'big', 'dupes']) assert.ok(await sameContents(pair, db, table), `${table} matches`);
      const big = sampler.seen.get('big')!;
      assert.equal(big.at(-1), 'r');
      assert.ok(big.slice(0, -1).some((s) => s === 'd' || s === 'f'), `big went through d or f before r: ${big.join('>')}`);
      assert.ok(big.every((s) => 'idfsr'.includes(s)));
      assert.equal(sampler.seen.get('dupes')!.at(-1), 'r');
      assert.ok(sampler.slots.size >= 1, 'the joining tables synced through a table-sync slot of their own');
      assert.match(run.output(), /copied "public"\."big"/);
      await waitFor('the table-sync slots to be dropped', async () => (await pair.source.query(db, SYNC_SLOTS)).rowCount === 0, 30_000);
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      if (!stopped) await load.stop().catch(() => undefined);
      await sampler.stop().catch(() => undefined);
      await finish(run);
    }
  });

  it('DROP TABLE: no longer applied, marked removed, target data kept; re-adding syncs it afresh', { timeout: 240_000 }, async () => {
    const sub = 'join_drop';
    const { db, targetUrl, run } = await started(sub, {
      schema: `CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v int);`,
      source: `INSERT INTO a SELECT g, g FROM generate_series(1, 100) g; INSERT INTO b SELECT g, g FROM generate_series(1, 100) g;
        CREATE PUBLICATION pub FOR TABLE a, b;`,
      ready: 2,
    });
    try {
      await pair.source.query(db, `UPDATE a SET v = v + 1; UPDATE b SET v = v + 1 WHERE id <= 50;`);
      await waitCaughtUp(pair, db, sub, 120_000, run);
      assert.ok(await sameContents(pair, db, 'b'));

      await pair.source.query(db, `ALTER PUBLICATION pub DROP TABLE b`);
      await waitFor('b marked removed', async () => (await rel(db, sub, 'b'))?.removed, 30_000, 50);
      const frozen = await tableFingerprint(pair.target, db, 'b');
      await pair.source.query(db, `INSERT INTO b VALUES (1000, 1); UPDATE b SET v = -1 WHERE id <= 20; DELETE FROM b WHERE id > 90; INSERT INTO a VALUES (1000, 1);`);
      await waitCaughtUp(pair, db, sub, 120_000, run);
      assert.ok(await sameContents(pair, db, 'a'), 'a keeps syncing');
      assert.deepEqual(await tableFingerprint(pair.target, db, 'b'), frozen, 'later changes to b do not reach the target; its data stays');
      assert.equal(frozen.rows, 100);
      assert.ok(!(await sameContents(pair, db, 'b')));
      const status = await runCli(['status', '--subscription', sub, '--target', targetUrl]);
      assert.match(status.stdout, /"public"\."b"\s.*removed from publication/, status.stdout);

      await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE b`);
      await waitState(db, sub, ['b'], 'sr', run, 60_000);
      assert.ok(await sameContents(pair, db, 'b'), 'b copied again from scratch');
      await pair.source.query(db, `UPDATE b SET v = v * 2 WHERE id BETWEEN 20 AND 40; DELETE FROM b WHERE id = 50;`);
      await waitCaughtUp(pair, db, sub, 120_000, run);
      assert.ok(await sameContents(pair, db, 'b'), 'b streams again');
      assert.ok(await sameContents(pair, db, 'a'));
      assert.equal((await rel(db, sub, 'b'))?.state, 'r');
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      await finish(run);
    }
  });

  it('a table whose target is missing: error recorded and shown, others go on; created later, retried to r on its own', { timeout: 240_000 }, async (t) => {
    const sub = 'join_fail';
    const { db, targetUrl, run } = await started(sub, {
      schema: `CREATE TABLE a (id int PRIMARY KEY, v int)`,
      source: `CREATE TABLE c (id int PRIMARY KEY, v text); INSERT INTO c SELECT g, 'c' || g FROM generate_series(1, 1000) g;
        INSERT INTO a SELECT g, g FROM generate_series(1, 10) g; CREATE PUBLICATION pub FOR TABLE a;`,
      ready: 1,
    });
    try {
      await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE c`);
      const failed = await recordedError(db, sub, 'c');
      t.diagnostic(`c: state ${failed.state}, last_error: ${failed.last_error}`);
      assert.notEqual(failed.state, 'r');
      assert.match(failed.last_error!, /does not exist/);

      await pair.source.query(db, `INSERT INTO a VALUES (11, 11); UPDATE a SET v = 0 WHERE id = 1; INSERT INTO c VALUES (1001, 'while failing'); DELETE FROM c WHERE id = 1;`);
      await waitCaughtUp(pair, db, sub, 120_000, run);
      assert.ok(await sameContents(pair, db, 'a'), 'the other table keeps syncing');
      assert.notEqual((await rel(db, sub, 'c'))?.state, 'r');
      const status = await runCli(['status', '--subscription', sub, '--target', targetUrl]);
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /"public"\."c"\s.*\(error\).*does not exist/, status.stdout);

      await pair.target.query(db, `CREATE TABLE c (id int PRIMARY KEY, v text)`);
      const createdAt = Date.now();
      await waitState(db, sub, ['c'], 'sr', run, 75_000);
      t.diagnostic(`c handed over ${((Date.now() - createdAt) / 1000).toFixed(1)} s after its target table was created`);
      await pair.source.query(db, `UPDATE c SET v = 'later' WHERE id <= 10; INSERT INTO c VALUES (2000, 'x');`);
      await waitCaughtUp(pair, db, sub, 120_000, run);
      assert.ok(await sameContents(pair, db, 'c'));
      assert.deepEqual(await rel(db, sub, 'c'), { tablename: 'c', state: 'r', last_error: null, removed: false }, 'ready, error cleared');
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      await finish(run);
    }
  });

  it('a joined table failing on a column the target lacks: fixed on the source by a column list, the retry sees the fix', { timeout: 240_000 }, async (t) => {
    const sub = 'join_recatalog';
    const { db, run } = await started(sub, {
      schema: `CREATE TABLE a (id int PRIMARY KEY, v int)`,
      source: `CREATE TABLE c (id int PRIMARY KEY, v text, secret text); INSERT INTO c SELECT g, 'c' || g, 's' FROM generate_series(1, 100) g;
        INSERT INTO a VALUES (1, 1); CREATE PUBLICATION pub FOR TABLE a;`,
      target: `CREATE TABLE c (id int PRIMARY KEY, v text)`,
      ready: 1,
    });
    try {
      await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE c`);
      const failed = await recordedError(db, sub, 'c');
      t.diagnostic(`c: last_error: ${failed.last_error}`);
      assert.match(failed.last_error!, /"secret"/);
      // The fix on the source: publish c without the column. The catalog read when c joined still has it.
      await pair.source.query(db, `ALTER PUBLICATION pub SET TABLE a, c (id, v)`);
      await waitState(db, sub, ['c'], 'sr', run, 90_000);
      await pair.source.query(db, `UPDATE c SET v = 'later', secret = 'never sent' WHERE id <= 10`);
      await waitCaughtUp(pair, db, sub, 120_000, run);
      const rows = await pair.target.query(db, `SELECT count(*)::int AS n, count(*) FILTER (WHERE v = 'later')::int AS later FROM c`);
      assert.deepEqual(rows.rows[0], { n: 100, later: 10 });
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      await finish(run);
    }
  });

  it('a joined table reaches r while the source is idle (no further writes)', { timeout: 120_000 }, async () => {
    const sub = 'join_idle';
    const { db, run } = await started(sub, {
      schema: `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);`,
      source: `INSERT INTO b SELECT generate_series(1, 100); CREATE PUBLICATION pub FOR TABLE a;`,
      ready: 1,
    });
    try {
      await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE b`);
      await waitState(db, sub, ['b'], 'sr', run, 30_000);
      assert.ok(await sameContents(pair, db, 'b'));
      await waitState(db, sub, ['b'], 'r', run, 30_000);
    } finally {
      await finish(run);
    }
  });

  /**
   * Syncs table a, then adds `table` (300k rows) whose target trigger runs `action` for rows with
   * v = -42, and commits such a row during its copy: its catch-up (not its copy) meets it.
   */
  async function gatedJoin(sub: string, table: string, action: string) {
    const g = await started(sub, {
      schema: `CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE ${table} (id bigint PRIMARY KEY, v bigint); CREATE TABLE w (id int PRIMARY KEY, v int);`,
      source: `INSERT INTO ${table} SELECT g, g FROM generate_series(1, 300000) g; CREATE PUBLICATION pub FOR TABLE a;`,
      target: `CREATE TABLE gate_closed (); INSERT INTO gate_closed DEFAULT VALUES;
        CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$ BEGIN IF NEW.v = -42 THEN ${action}; END IF; RETURN NEW; END $$;
        CREATE TRIGGER gate BEFORE INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION gate(); ALTER TABLE ${table} ENABLE ALWAYS TRIGGER gate;`,
      ready: 1,
    });
    await pair.source.query(g.db, `ALTER PUBLICATION pub ADD TABLE ${table}`);
    await waitFor(`${table} copying`, async () => (await rel(g.db, sub, table))?.state === 'd', 60_000, 20);
    await pair.source.query(g.db, `INSERT INTO ${table} VALUES (0, -42); UPDATE ${table} SET v = 0 WHERE id <= 10;`);
    return g;
  }

  it("a table whose catch-up keeps failing stays f when another table's handover promotes; kill -9 then loses nothing", { timeout: 240_000 }, async (t) => {
    const sub = 'join_race';
    const g = await gatedJoin(sub, 'y', `IF EXISTS (SELECT FROM gate_closed) THEN RAISE EXCEPTION 'gate closed'; END IF`);
    let run = g.run;
    try {
      const failing = await waitFor('the catch-up of y to fail', async () => {
        const y = await rel(g.db, sub, 'y');
        return y?.last_error?.includes('gate closed') ? y : null;
      }, 60_000, 50);
      assert.equal(failing.state, 'f');
      await pair.source.query(g.db, `ALTER PUBLICATION pub ADD TABLE w`);
      await waitState(g.db, sub, ['w'], 'sr', run, 60_000);
      await pair.source.query(g.db, `INSERT INTO w VALUES (1, 1); INSERT INTO a VALUES (1, 1);`);
      await waitCaughtUp(pair, g.db, sub, 120_000, run);
      const y = (await rel(g.db, sub, 'y'))!;
      t.diagnostic(`after w's handover: y ${y.state} (last_error: ${y.last_error})`);
      await run.kill9();
      await pair.target.query(g.db, `DELETE FROM gate_closed`);
      run = cli(g.sourceUrl, g.targetUrl, sub);
      await waitState(g.db, sub, ['a', 'w', 'y'], 'sr', run, 120_000);
      await pair.source.query(g.db, `INSERT INTO y VALUES (-1, 1); INSERT INTO w VALUES (2, 2);`);
      await waitCaughtUp(pair, g.db, sub, 120_000, run);
      const kept = await pair.target.query(g.db, `SELECT count(*)::int AS n FROM y WHERE id = 0`);
      assert.ok(await sameContents(pair, g.db, 'y'), `y matches after the restart (y was "${y.state}" while its catch-up failed; row 0 on the target: ${kept.rows[0].n})`);
      assert.equal(y.state, 'f', 'y was marked r while its catch-up had not handed over');
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      await finish(run);
    }
  });

  const COLS = '(id int, k int, v text, PRIMARY KEY (id, k))';
  const VIA_ROOT = 'WITH (publish_via_partition_root = true)';
  for (const [sub, title, target, pubOptions, tables] of [
    ['part_root_plain', 'publish_via_partition_root: into a plain target table', `CREATE TABLE m ${COLS}`, VIA_ROOT, ['m']],
    ['part_root_part', 'publish_via_partition_root: into a partitioned target table with other bounds', `CREATE TABLE m ${COLS} PARTITION BY RANGE (k);
      CREATE TABLE m_lo PARTITION OF m FOR VALUES FROM (0) TO (150); CREATE TABLE m_hi PARTITION OF m FOR VALUES FROM (150) TO (300);`, VIA_ROOT, ['m']],
    ['part_leaves', 'without publish_via_partition_root: each partition into its own target table', ['m1', 'm2', 'm3'].map((p) => `CREATE TABLE ${p} ${COLS};`).join(' '), '', ['m1', 'm2', 'm3']],
  ] as const) {
    it(`partitioned, ${title}`, { timeout: 180_000 }, async () => {
      const { db, run } = await started(sub, {
        source: `CREATE TABLE m ${COLS} PARTITION BY RANGE (k);
          CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (100); CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (100) TO (200);
          CREATE TABLE m3 PARTITION OF m FOR VALUES FROM (200) TO (300);
          INSERT INTO m SELECT g, g % 300, 'v' || g FROM generate_series(1, 3000) g; CREATE PUBLICATION pub FOR TABLE m ${pubOptions};`,
        target,
        ready: tables.length,
      });
      try {
        assert.deepEqual([...(await rels(db, sub)).keys()].sort(), tables);
        for (const table of tables) assert.ok(await sameContents(pair, db, table), `${table} after the copy`);
        // Inserts, updates, deletes, and updates moving rows to another partition (k is the partition key).
        await pair.source.query(db, `INSERT INTO m SELECT g, g % 300, 'new' FROM generate_series(3001, 3300) g;
          UPDATE m SET v = 'upd' WHERE id % 10 = 0; UPDATE m SET k = k + 100 WHERE id IN (1, 2, 3);
          UPDATE m SET k = 200, v = 'moved' WHERE id = 140; DELETE FROM m WHERE id % 7 = 0;`);
        await waitCaughtUp(pair, db, sub, 120_000, run);
        for (const table of tables) assert.ok(await sameContents(pair, db, table), `${table} after streaming`);
        assert.equal(await finish(run), 0, tail(run.output()));
      } finally {
        await finish(run);
      }
    });
  }

  it('--copy-data false: a table added while running joins without a copy', { timeout: 180_000 }, async () => {
    const sub = 'join_nocopy';
    const { db, run } = await started(sub, {
      schema: `CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE late (id int PRIMARY KEY, v int);`,
      source: `INSERT INTO a SELECT g, g FROM generate_series(1, 50) g; INSERT INTO late SELECT g, g FROM generate_series(1, 100) g;
        CREATE PUBLICATION pub FOR TABLE a;`,
      ready: 1,
      extra: ['--copy-data', 'false'],
    });
    try {
      await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE late`);
      await waitState(db, sub, ['late'], 'sr', run, 30_000);
      await pair.source.query(db, `INSERT INTO late SELECT g, g FROM generate_series(101, 150) g;
        UPDATE late SET v = -v WHERE id BETWEEN 101 AND 110; DELETE FROM late WHERE id > 140;
        INSERT INTO a SELECT g, g FROM generate_series(51, 60) g;`);
      await waitCaughtUp(pair, db, sub, 120_000, run);
      const old = await pair.target.query(db, `SELECT (SELECT count(*)::int FROM late WHERE id <= 100) AS late, (SELECT count(*)::int FROM a WHERE id <= 50) AS a`);
      assert.deepEqual(old.rows[0], { late: 0, a: 0 }, 'rows present before are not copied');
      assert.ok(await sameContents(pair, db, '(SELECT * FROM late WHERE id > 100)', 'late'), 'changes after the join are applied');
      assert.ok(await sameContents(pair, db, '(SELECT * FROM a WHERE id > 50)', 'a'));
      assert.equal((await rel(db, sub, 'late'))?.state, 'r');
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      await finish(run);
    }
  });
  it('a blocked catch-up does not hold up the other tables: the main stream pauses only for the last stretch', { timeout: 180_000 }, async () => {
    // The joining table's catch-up (and only it: the copy and the main stream use other
    // application names) blocks on an advisory lock the test holds.
    const schema = `CREATE TABLE other (id int PRIMARY KEY, v int); CREATE TABLE joining (id int PRIMARY KEY, v int);`;
    const { db, run } = await started('join_block', {
      schema,
      source: `INSERT INTO joining SELECT g, 0 FROM generate_series(1, 50000) g; CREATE PUBLICATION pub FOR TABLE other;`,
      target: `CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$ BEGIN
                 IF current_setting('application_name') = 'pg_live_sync_tablesync' THEN PERFORM pg_advisory_lock(4242); PERFORM pg_advisory_unlock(4242); END IF;
                 RETURN NEW; END $$;
               CREATE TRIGGER gate BEFORE INSERT OR UPDATE ON joining FOR EACH ROW EXECUTE FUNCTION gate();
               ALTER TABLE joining ENABLE ALWAYS TRIGGER gate;`,
      ready: 1,
    });
    const holder = new pg.Client({ connectionString: pair.target.url(db) });
    await holder.connect();
    try {
      await holder.query('SELECT pg_advisory_lock(4242)');
      let writing = true;
      const load = (async () => {
        for (let i = 1; writing; i++) await pair.source.query(db, `UPDATE joining SET v = v + 1 WHERE id = ${1 + (i % 50000)}`);
      })();
      await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE joining`);
      // The catch-up is stuck behind the lock once the joining table is `f` with writes pending.
      await waitFor('the joining table to finish its copy', async () => (await rels(db, 'join_block')).get('joining')?.state === 'f', 120_000);
      await waitFor('the catch-up to block on the lock', async () =>
        (await pair.target.query(db, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'pg_live_sync_tablesync' AND wait_event_type = 'Lock'`)).rows[0].n > 0, 60_000);
      writing = false;
      await load;
      await pair.source.query(db, `INSERT INTO other VALUES (1, 1)`);
      await waitFor('a change to another table to arrive while the catch-up is blocked', async () =>
        (await pair.target.query(db, `SELECT count(*)::int AS n FROM other`)).rows[0].n === 1, 30_000);
      assert.equal((await rels(db, 'join_block')).get('joining')?.state, 'f');
    } finally {
      await holder.end();
    }
    await waitAllReady(pair.target, db, 'join_block', 2, 120_000);
    await waitCaughtUp(pair, db, 'join_block', 120_000, run);
    assert.ok(await sameContents(pair, db, 'joining'));
    assert.ok(await sameContents(pair, db, 'other'));
    assert.equal(await finish(run), 0, tail(run.output()));
  });
});
