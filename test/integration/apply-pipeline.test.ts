/**
 * Apply's per-table queues and pipelined statements (issue 11) against real PostgreSQL 15
 * clusters: a pgbench-like backlog with hot rows, deletes between inserts and key changes lands
 * exactly as on the source, also across kill -9; a table whose trigger runs on the apply
 * connection still sees every other table's changes in source order; and the first failing
 * statement of a pipelined group is the one reported.
 * One pair of clusters for the file, one database per test.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { exitWithin, freshDatabases, sameContents, startPair, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor, type Pair } from '../harness/sync';

let pair: Pair;
const cli = trackRuns();
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

const runArgs = (sourceUrl: string, targetUrl: string, sub: string) =>
  ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--copy-data', 'false'];

const MIX_SCHEMA = `CREATE TABLE accounts (aid int PRIMARY KEY, abalance int, note text);
  CREATE TABLE tellers (tid int PRIMARY KEY, tbalance int);
  CREATE TABLE branches (bid int PRIMARY KEY, bbalance int, spare text);
  CREATE TABLE history (hid int PRIMARY KEY, aid int, delta int);`;
const MIX_SEED = `INSERT INTO accounts SELECT g, 0, 'n' || g FROM generate_series(1, 200) g;
  INSERT INTO tellers SELECT g, 0 FROM generate_series(1, 3) g;
  INSERT INTO branches VALUES (1, 0, 'x');
  INSERT INTO history SELECT -g, 0, 0 FROM generate_series(1, 10) g;`;
/**
 * Transactions `from`..`to`: the same rows updated again and again (one teller of three, the one
 * branch, with a different set of columns every third time), an insert and a delete of an older
 * row in history, and every seventh transaction a key change and a reinsert of the old key.
 */
const mixTxns = (from: number, to: number) => `DO $$ BEGIN FOR i IN ${from}..${to} LOOP
    UPDATE accounts SET abalance = abalance + i WHERE aid = 1 + (i * 37) % 200;
    UPDATE tellers SET tbalance = tbalance + i WHERE tid = 1 + i % 3;
    IF i % 3 = 0 THEN UPDATE branches SET bbalance = bbalance - i, spare = 's' || i WHERE bid = 1;
    ELSE UPDATE branches SET bbalance = bbalance + i WHERE bid = 1; END IF;
    INSERT INTO history VALUES (i, 1 + (i * 37) % 200, i);
    DELETE FROM history WHERE hid = i - 5;
    IF i % 7 = 0 THEN
      UPDATE accounts SET aid = 100000 + i WHERE aid = 1 + (i * 11) % 200;
      INSERT INTO accounts VALUES (1 + (i * 11) % 200, i, 'again');
      UPDATE accounts SET note = 'after key change ' || i WHERE aid = 100000 + i;
    END IF;
    COMMIT;
  END LOOP; END $$;`;

async function seeded(sub: string) {
  const d = await freshDatabases(pair, sub, MIX_SCHEMA);
  await Promise.all([pair.source.query(d.db, MIX_SEED), pair.target.query(d.db, MIX_SEED)]);
  await pair.source.query(d.db, `CREATE PUBLICATION pub FOR TABLE accounts, tellers, branches, history`);
  return d;
}

async function assertSame(db: string): Promise<void> {
  for (const t of ['accounts', 'tellers', 'branches', 'history']) assert.ok(await sameContents(pair, db, t), `${t} matches the source`);
}

describe('apply: per-table queues and pipelined statements', () => {
  it('drains a pgbench-like backlog with hot rows, deletes between inserts and key changes exactly as the source', { timeout: 180_000 }, async () => {
    const sub = 'mixdrain';
    const { db, sourceUrl, targetUrl } = await seeded(sub);
    let run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 4);
    await run.stop();
    await pair.source.query(db, mixTxns(1, 3000));
    run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitCaughtUp(pair, db, sub, 120_000, run);
    await assertSame(db);
    assert.doesNotMatch(run.output(), /found no row/, tail(run.output()));
    assert.equal(await run.stop(), 0, run.output());
  });

  it('kill -9 in the middle of a drain, restarted each time: nothing lost, nothing applied twice', { timeout: 240_000 }, async () => {
    const sub = 'mixkill';
    const { db, sourceUrl, targetUrl } = await seeded(sub);
    let run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 4);
    await run.stop();
    await pair.source.query(db, mixTxns(1, 40000));
    const applied = async () => (await pair.target.query(db, `SELECT applied_lsn::text AS l FROM _pg_live_sync.subscription WHERE subname = $1`, [sub])).rows[0]?.l as string | null;
    for (let kill = 0; kill < 3; kill++) {
      const before = await applied();
      run = cli(runArgs(sourceUrl, targetUrl, sub));
      await waitFor('the run to commit a group', async () => (await applied()) !== before, 60_000, 20);
      await new Promise((r) => setTimeout(r, Math.random() * 300));
      await run.kill9();
    }
    run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitCaughtUp(pair, db, sub, 120_000, run);
    await assertSame(db);
    assert.doesNotMatch(run.output(), /found no row/, tail(run.output()));
    assert.equal(await run.stop(), 0, run.output());
  });

  it('a target table with an ENABLE ALWAYS trigger sees the other tables\' changes in source order', { timeout: 120_000 }, async () => {
    const sub = 'ordered';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);`);
    // On the target only: each row of a records how many rows b had when it arrived.
    await pair.target.query(db, `CREATE TABLE seen (id int, b_rows bigint);
      CREATE FUNCTION record() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$ BEGIN INSERT INTO seen SELECT NEW.id, count(*) FROM b; RETURN NULL; END $$;
      CREATE TRIGGER record AFTER INSERT ON a FOR EACH ROW EXECUTE FUNCTION record();
      ALTER TABLE a ENABLE ALWAYS TRIGGER record;`);
    await pair.source.query(db, `CREATE PUBLICATION pub FOR TABLE a, b`);
    const run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 2);
    await pair.source.query(db, `DO $$ BEGIN FOR i IN 1..300 LOOP INSERT INTO a VALUES (i); INSERT INTO b VALUES (i); COMMIT; END LOOP; END $$;`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    const wrong = await pair.target.query(db, `SELECT id, b_rows FROM seen WHERE b_rows <> id - 1 ORDER BY id LIMIT 5`);
    assert.deepEqual(wrong.rows, [], 'a row of a arrived while b held other than the rows before it');
    assert.equal((await pair.target.query(db, `SELECT count(*)::int AS n FROM seen`)).rows[0].n, 300);
    assert.equal(await run.stop(), 0, run.output());
  });

  it('a failing statement early in a pipelined group is the one reported, and nothing of the group is committed', { timeout: 120_000 }, async () => {
    const sub = 'pipefail';
    const { db, sourceUrl, targetUrl } = await seeded(sub);
    const run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 4);
    await pair.target.query(db, `INSERT INTO history VALUES (2, 0, 0)`);
    // One source transaction: history's insert of 2 fails on the target, then many more statements follow it.
    await pair.source.query(db, `BEGIN;
      INSERT INTO history VALUES (1, 1, 1), (2, 2, 2);
      INSERT INTO accounts SELECT g, 0, 'late' FROM generate_series(1000, 1100) g;
      UPDATE tellers SET tbalance = 7;
      DELETE FROM accounts WHERE aid BETWEEN 1 AND 50;
      COMMIT;`);
    assert.equal(await exitWithin(run, 30_000), 1, tail(run.output()));
    const out = run.output();
    assert.match(out, /pg-live-sync: error: applying a source insert to "public"\."history" failed: duplicate key value violates unique constraint "history_pkey" \(Key \(hid\)=\(2\) already exists\.\)/, tail(out));
    assert.doesNotMatch(out, /current transaction is aborted/, tail(out));
    const late = await pair.target.query(db, `SELECT count(*)::int AS n FROM accounts WHERE note = 'late'`);
    assert.equal(late.rows[0].n, 0, 'nothing of the failed group is on the target');
  });
  it('inserts copied straight from pgoutput\'s bytes keep backslashes, tabs, newlines, CRs, nulls and non-ASCII exactly', { timeout: 120_000 }, async () => {
    const sub = 'copybytes';
    const cols = Array.from({ length: 12 }, (_, i) => `n${i} text`).join(', ');
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TABLE v (id int PRIMARY KEY, t text, j jsonb, a text[], b bytea, ${cols})`);
    await pair.source.query(db, `CREATE PUBLICATION pub FOR TABLE v`);
    const run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 1);
    const values = ['plain', 'back\\slash', 'tab\there', 'new\nline', 'cr\rlf\r\n', '\\.', '\\N', '', ' ', 'é日本🙂\t\\', '\\\\\t\t\n\n', 'x'.repeat(5000) + '\\'];
    // Several transactions of many rows, so some land in one COPY; most columns are NULL; one row
    // is wider than 64 kB, half of it bytes to escape.
    await pair.source.query(db, `DO $$ DECLARE vals text[] := $1; BEGIN FOR i IN 0..2999 LOOP
        INSERT INTO v (id, t, j, a, b, n0, n5, n11) VALUES (i, vals[1 + i % ${values.length}],
          jsonb_build_object('k', vals[1 + i % ${values.length}]), ARRAY[vals[1 + i % ${values.length}], NULL, '"q"'],
          convert_to(vals[1 + i % ${values.length}], 'UTF8'), CASE WHEN i % 2 = 0 THEN vals[1 + (i + 1) % ${values.length}] END, 'é', NULL);
        IF i % 500 = 499 THEN COMMIT; END IF;
      END LOOP; INSERT INTO v (id) VALUES (-1);
      INSERT INTO v (id, t, n3) VALUES (-2, repeat(E'\\t\\\\x\\n', 30000), repeat('é', 40000)); END $$`.replace('$1', `ARRAY[${values.map((v) => `'${v.replace(/'/g, "''")}'`).join(', ')}]`));
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.ok(await sameContents(pair, db, 'v'), 'v matches the source');
    const q = `SELECT id, t, j::text, a::text, encode(b, 'hex') AS b, n0, n3, n5, n11 FROM v ORDER BY id`;
    const [src, dst] = await Promise.all([pair.source.query(db, q), pair.target.query(db, q)]);
    assert.equal(dst.rows.length, 3002);
    assert.deepEqual(dst.rows, src.rows);
    assert.ok(src.rows.some((r) => r.t === 'tab\there') && src.rows.some((r) => r.t === '\\N') && src.rows.some((r) => r.t === ''), 'the awkward values were written');
    assert.equal(await run.stop(), 0, run.output());
  });

  it('a group that fails after the one before it was committed without waiting: nothing of it or later is kept, and a rerun applies the rest once', { timeout: 180_000 }, async () => {
    const sub = 'pipecommit';
    const { db, sourceUrl, targetUrl } = await seeded(sub);
    let run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 4);
    await run.stop();
    // More transactions than one group holds; one in the middle conflicts with a target row.
    await pair.source.query(db, `DO $$ BEGIN FOR i IN 1..9000 LOOP INSERT INTO history VALUES (i, i, i); COMMIT; END LOOP; END $$`);
    await pair.target.query(db, `INSERT INTO history VALUES (6000, 0, 0)`);
    run = cli(runArgs(sourceUrl, targetUrl, sub));
    assert.equal(await exitWithin(run, 60_000), 1, tail(run.output()));
    assert.match(run.output(), /applying a source insert to "public"\."history" failed: duplicate key value/, tail(run.output()));
    const kept = await pair.target.query(db, `SELECT count(*)::int AS n, coalesce(max(hid), 0) AS top FROM history WHERE hid > 0 AND hid <> 6000`);
    assert.ok(kept.rows[0].top < 6000, `rows of the failed transaction's group or later were kept: up to ${kept.rows[0].top}`);
    assert.equal(kept.rows[0].n, kept.rows[0].top, 'what was kept is a prefix of the source transactions');
    await pair.target.query(db, `DELETE FROM history WHERE hid = 6000`);
    run = cli(runArgs(sourceUrl, targetUrl, sub));
    await waitCaughtUp(pair, db, sub, 120_000, run);
    await assertSame(db);
    assert.equal(await run.stop(), 0, run.output());
  });
});
