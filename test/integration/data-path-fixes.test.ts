/**
 * Data path fixes (issue 10, items 1, 3 and 9) against real PostgreSQL 15 clusters: each table's
 * own publication in the state table, table names that only differ in where the dot is, and target
 * tables with GENERATED ALWAYS identity and stored generated columns.
 * One pair of clusters for the file, one database per test.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freshDatabases, runCli, sameContents, startPair, tail, trackRuns, waitCaughtUp, waitFor, type Pair } from '../harness/sync';

let pair: Pair;
const cli = trackRuns();
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

const runArgs = (sourceUrl: string, targetUrl: string, sub: string, pubs: string[]) =>
  ['run', '--source', sourceUrl, '--target', targetUrl, ...pubs.flatMap((p) => ['--publication', p]), '--subscription', sub];

/** schema, table -> state row, keyed without joining the two (the very ambiguity under test). */
type StateRow = { schemaname: string; tablename: string; pubname: string; state: string; last_error: string | null };
async function stateRows(db: string, sub: string): Promise<StateRow[]> {
  const r = await pair.target.query<StateRow>(db, `SELECT schemaname, tablename, pubname, state, last_error FROM _pg_live_sync.subscription_rel WHERE subname = $1 ORDER BY schemaname, tablename`, [sub]);
  return r.rows;
}

describe('data path fixes', () => {
  it('records each table\'s own publication in subscription_rel.pubname (one and two publications)', { timeout: 120_000 }, async () => {
    const sub = 'pubnames';
    const schema = `CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE TABLE both_pubs (id int PRIMARY KEY);`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, schema);
    await pair.source.query(db, `INSERT INTO a VALUES (1); INSERT INTO b VALUES (2);
      CREATE PUBLICATION "pub A" FOR TABLE a, both_pubs; CREATE PUBLICATION pub_b FOR TABLE b, both_pubs;`);
    const run = cli(runArgs(sourceUrl, targetUrl, sub, ['pub A', 'pub_b']));
    await waitFor('three tables ready', async () => (await stateRows(db, sub).catch(() => [])).filter((r) => r.state === 'r').length === 3, 60_000);
    assert.deepEqual((await stateRows(db, sub)).map((r) => [r.tablename, r.pubname]), [['a', 'pub A'], ['b', 'pub_b'], ['both_pubs', 'pub A']]);
    await run.stop();

    const one = 'pubname_one';
    const single = await freshDatabases(pair, one, `CREATE TABLE t (id int PRIMARY KEY);`);
    await pair.source.query(single.db, `CREATE PUBLICATION only_pub FOR TABLE t;`);
    const run1 = cli(runArgs(single.sourceUrl, single.targetUrl, one, ['only_pub']));
    await waitFor('t ready', async () => (await stateRows(single.db, one).catch(() => []))[0]?.state === 'r', 60_000);
    assert.equal((await stateRows(single.db, one))[0].pubname, 'only_pub');
    await run1.stop();
  });

  it('tells "x.y".z from x."y.z": the second joins a running sync, and each streams to its own table', { timeout: 120_000 }, async () => {
    const sub = 'dotted';
    const schema = `CREATE SCHEMA "x.y"; CREATE SCHEMA x;
      CREATE TABLE "x.y".z (id int PRIMARY KEY, v text); CREATE TABLE x."y.z" (id int PRIMARY KEY, v text);`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, schema);
    await pair.source.query(db, `INSERT INTO "x.y".z VALUES (1, 'dotted schema'); INSERT INTO x."y.z" VALUES (2, 'dotted table');
      CREATE PUBLICATION pub FOR TABLE "x.y".z;`);
    const run = cli(runArgs(sourceUrl, targetUrl, sub, ['pub']));
    const state = async (schemaname: string, tablename: string) =>
      (await stateRows(db, sub).catch(() => [])).find((r) => r.schemaname === schemaname && r.tablename === tablename)?.state;
    const describe = async () => `state: ${JSON.stringify(await stateRows(db, sub).catch(() => []))}\n${tail(run.output())}`;
    await waitFor('"x.y".z ready', async () => (await state('x.y', 'z')) === 'r', 60_000, 100, { describe });
    await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE x."y.z"`);
    await waitFor('x."y.z" to join and be ready', async () => (await state('x', 'y.z')) === 'r', 60_000, 100, { describe });
    await pair.source.query(db, `INSERT INTO "x.y".z VALUES (3, 'streamed to the dotted schema'); INSERT INTO x."y.z" VALUES (4, 'streamed to the dotted table')`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.ok(await sameContents(pair, db, '"x.y".z'), '"x.y".z matches the source');
    assert.ok(await sameContents(pair, db, 'x."y.z"'), 'x."y.z" matches the source');
    const status = await runCli(['status', '--target', targetUrl, '--subscription', sub]);
    assert.match(status.stdout, /"x\.y"\."z"\s+"x\.y"\."z"\s+r ready/);
    assert.match(status.stdout, /"x"\."y\.z"\s+"x"\."y\.z"\s+r ready/);
    await run.stop();
  });

  it('applies UPDATEs (with and without a key change) and DELETEs to GENERATED ALWAYS identity columns and leaves stored generated columns to the target', { timeout: 120_000 }, async () => {
    const sub = 'identity';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub);
    // The source may set its identity columns (BY DEFAULT); the target's are ALWAYS, as after a schema-only dump of an ALWAYS source.
    await pair.source.query(db, `
      CREATE TABLE items (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, qty int, price numeric, note text);
      CREATE TABLE tagged (k int PRIMARY KEY, serial_no bigint GENERATED BY DEFAULT AS IDENTITY, label text);
      CREATE TABLE logged (seq bigint GENERATED BY DEFAULT AS IDENTITY, msg text);
      ALTER TABLE logged REPLICA IDENTITY FULL;
      INSERT INTO items (qty, price, note) SELECT g, g * 1.5, repeat('toast me ', 1000) || g FROM generate_series(1, 50) g;
      INSERT INTO tagged (k, label) SELECT g, 'l' || g FROM generate_series(1, 20) g;
      INSERT INTO logged (msg) SELECT 'm' || g FROM generate_series(1, 20) g;
      CREATE PUBLICATION pub FOR TABLE items, tagged, logged;`);
    await pair.target.query(db, `
      CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, qty int, price numeric, note text,
                          total numeric GENERATED ALWAYS AS (qty * price) STORED);
      CREATE TABLE tagged (k int PRIMARY KEY, serial_no bigint GENERATED ALWAYS AS IDENTITY, label text);
      CREATE TABLE logged (seq bigint GENERATED ALWAYS AS IDENTITY, msg text);`);

    const check = await runCli(['check', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub']);
    assert.equal(check.code, 0, tail(check.stdout + check.stderr));
    assert.match(check.stdout + check.stderr, /"id" of "public"\."items" is GENERATED ALWAYS AS IDENTITY/);
    assert.match(check.stdout + check.stderr, /"serial_no" of "public"\."tagged" is GENERATED ALWAYS AS IDENTITY/);

    const run = cli(runArgs(sourceUrl, targetUrl, sub, ['pub']));
    await waitFor('three tables ready', async () => (await stateRows(db, sub).catch(() => [])).filter((r) => r.state === 'r').length === 3, 60_000, 100,
      { describe: async () => tail(run.output()) });
    await pair.source.query(db, `
      UPDATE items SET qty = qty + 1 WHERE id <= 10;                    -- key unchanged, TOASTed note unchanged
      UPDATE items SET id = id + 1000 WHERE id BETWEEN 11 AND 15;       -- key change of an identity key
      UPDATE items SET note = 'short' WHERE id = 16;
      DELETE FROM items WHERE id BETWEEN 17 AND 20;
      INSERT INTO items (qty, price, note) VALUES (7, 2, 'streamed insert');
      UPDATE tagged SET label = 'relabelled' WHERE k <= 5;                  -- identity column sent unchanged
      UPDATE tagged SET serial_no = DEFAULT, label = 'renumbered' WHERE k = 6; -- identity column changed
      UPDATE logged SET msg = 'full identity' WHERE seq <= 3;
      UPDATE logged SET seq = DEFAULT WHERE seq = 4;
      DELETE FROM logged WHERE seq = 5;`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    const cols = 'id, qty, price, note';
    assert.deepEqual(
      (await pair.target.query(db, `SELECT ${cols} FROM items ORDER BY id`)).rows,
      (await pair.source.query(db, `SELECT ${cols} FROM items ORDER BY id`)).rows, 'items match the source');
    const wrongTotals = await pair.target.query(db, `SELECT count(*)::int AS n FROM items WHERE total IS DISTINCT FROM qty * price`);
    assert.equal(wrongTotals.rows[0].n, 0, 'the target computes its own generated column');
    assert.ok(await sameContents(pair, db, 'tagged'), 'tagged matches the source');
    assert.ok(await sameContents(pair, db, 'logged'), 'logged matches the source');
    assert.doesNotMatch(run.output(), /can only be updated to DEFAULT|error/i, tail(run.output()));
    await run.stop();
  });

  it('leaves out the columns a publication column list excludes (how a column is kept off the target): copy, stream and verify', { timeout: 120_000 }, async () => {
    const sub = 'col_list';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub);
    await pair.source.query(db, `CREATE TABLE people (id int PRIMARY KEY, name text, ssn text NOT NULL, note text);
      INSERT INTO people SELECT g, 'n' || g, 'secret' || g, 'x' FROM generate_series(1, 100) g;
      CREATE PUBLICATION pub FOR TABLE people (id, name, note);`);
    await pair.target.query(db, `CREATE TABLE people (id int PRIMARY KEY, name text, note text)`);
    const run = cli(runArgs(sourceUrl, targetUrl, sub, ['pub']));
    await waitFor('people ready', async () => (await stateRows(db, sub).catch(() => []))[0]?.state === 'r', 60_000, 100, { describe: async () => tail(run.output()) });
    await pair.source.query(db, `UPDATE people SET name = 'renamed', ssn = 'changed' WHERE id <= 10; INSERT INTO people VALUES (101, 'new', 'secret', 'y'); DELETE FROM people WHERE id = 50`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    const cols = 'id, name, note';
    assert.deepEqual(
      (await pair.target.query(db, `SELECT ${cols} FROM people ORDER BY id`)).rows,
      (await pair.source.query(db, `SELECT ${cols} FROM people ORDER BY id`)).rows, 'the published columns match');
    const verify = await runCli(['verify', '--subscription', sub, '--source', sourceUrl, '--target', targetUrl]);
    assert.equal(verify.code, 0, verify.stdout + verify.stderr);
    await run.stop();
  });

  it('refuses a source column that is a generated column on the target, with the fix', { timeout: 60_000 }, async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'gen_clash');
    await pair.source.query(db, `CREATE TABLE t (id int PRIMARY KEY, a int, b int); CREATE PUBLICATION pub FOR TABLE t;`);
    await pair.target.query(db, `CREATE TABLE t (id int PRIMARY KEY, a int, b int GENERATED ALWAYS AS (a * 2) STORED);`);
    const check = await runCli(['check', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub']);
    assert.notEqual(check.code, 0);
    assert.match(check.stdout + check.stderr, /column "b" of "public"\."t" is a generated column on the target.*ALTER TABLE "public"\."t" ALTER COLUMN "b" DROP EXPRESSION/);
  });
});
