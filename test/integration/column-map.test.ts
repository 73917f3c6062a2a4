/**
 * `--table-map` "columns" against real PostgreSQL 15 clusters: source columns renamed on the
 * target (a key column, a quoted Unicode one) or left out (null), through the copy, the stream
 * (insert, update with the key changed and with TOAST unchanged, delete, FULL identity), a table
 * joining later, schema drift (a column added keeps its name; the excluded one dropped and added
 * again stops nothing), verify, create-tables, sync-sequences, a map changed between runs, and
 * each bad map refused with one line before anything is created.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import type { Cluster } from '../harness/cluster';
import { freshDatabases, runCli, startPair, tableFingerprint, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor, type Pair } from '../harness/sync';

let pair: Pair;
const cli = trackRuns();
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

const map = (table: string, columns: Record<string, string | null>, target: { schema: string; table?: string } = { schema: 'public' }) =>
  JSON.stringify({ source: { schema: 'public', table }, target, columns });

/** The same rows on both sides, each side read through its own column names. */
async function sameRows(db: string, sourceSelect: string, targetSelect: string): Promise<void> {
  const [s, t] = await Promise.all([
    tableFingerprint(pair.source, db, `(${sourceSelect})`),
    tableFingerprint(pair.target, db, `(${targetSelect})`),
  ]);
  assert.ok(s.rows > 0, `no rows on the source for ${sourceSelect}`);
  assert.deepEqual(t, s, `${targetSelect} on the target differs from ${sourceSelect} on the source`);
}

async function slotCount(cluster: Cluster, db: string): Promise<number> {
  return (await cluster.query(db, `SELECT count(*)::int AS n FROM pg_replication_slots WHERE database = $1`, [db])).rows[0].n;
}

// A value of ~6 kB of hex: compressed it stays over the TOAST threshold, so it is stored out of line
// and an UPDATE that leaves it alone sends it as "unchanged TOAST".
const BIG = `(SELECT string_agg(md5(i::text || g::text), '') FROM generate_series(1, 200) i)`;

const SOURCE = `
  CREATE TABLE users (id int PRIMARY KEY, "Email" text, pw text, big text, note text);
  CREATE TABLE ledger (account text, amount int, secret text);
  ALTER TABLE ledger REPLICA IDENTITY FULL;
  CREATE TABLE "Größe ✓" ("ID ✓" int PRIMARY KEY, "Wert ✓" text);
  CREATE TABLE late (k int PRIMARY KEY, "Old" text, hidden text);
  INSERT INTO users SELECT g, 'U' || g || '@x', 'pw' || g, ${BIG}, 'n' || g FROM generate_series(1, 200) g;
  INSERT INTO ledger SELECT 'a' || (g % 7), g, 's' || g FROM generate_series(1, 50) g;
  INSERT INTO ledger VALUES ('dup', 1, 'x'), ('dup', 1, 'y');
  INSERT INTO "Größe ✓" SELECT g, 'w' || g FROM generate_series(1, 20) g;
  INSERT INTO late SELECT g, 'o' || g, 'h' || g FROM generate_series(1, 30) g;
  CREATE PUBLICATION pub FOR TABLE users, ledger, "Größe ✓";`;

// The target has the excluded columns too: that they stay NULL shows they are never written.
const TARGET = `
  CREATE TABLE users (user_id int PRIMARY KEY, email_address text, pw text, big text, note text);
  CREATE TABLE ledger (acct text, amount int, secret text);
  CREATE TABLE "Größe ✓" ("ID ✓" int PRIMARY KEY, "Wert ☆" text);
  CREATE TABLE late (k int PRIMARY KEY, new_name text, hidden text);`;

const MAPS = [
  map('users', { id: 'user_id', Email: 'email_address', pw: null }),
  map('ledger', { account: 'acct', secret: null }),
  map('Größe ✓', { 'Wert ✓': 'Wert ☆' }),
  map('late', { Old: 'new_name', hidden: null }),
];

const USERS_SOURCE = `SELECT id, "Email", big, note FROM users`;
const USERS_TARGET = `SELECT user_id, email_address, big, note FROM users`;
const LEDGER_SOURCE = `SELECT account, amount FROM ledger`;
const LEDGER_TARGET = `SELECT acct, amount FROM ledger`;
const GROESSE_SOURCE = `SELECT "ID ✓", "Wert ✓" FROM "Größe ✓"`;
const GROESSE_TARGET = `SELECT "ID ✓", "Wert ☆" FROM "Größe ✓"`;

describe('column map', () => {
  it('copies and streams under the target names, never writes excluded columns, and verify compares through the map', { timeout: 240_000 }, async () => {
    const sub = 'cm_stream';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub);
    await pair.source.query(db, SOURCE);
    await pair.target.query(db, TARGET);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--apply-ddl', 'add-column', ...MAPS.flatMap((m) => ['--table-map', m])];
    let run = cli(args);
    await waitAllReady(pair.target, db, sub, 3, 90_000).catch((err) => assert.fail(`${err}\n${tail(run.output())}`));
    await sameRows(db, USERS_SOURCE, USERS_TARGET);
    await sameRows(db, LEDGER_SOURCE, LEDGER_TARGET);
    await sameRows(db, GROESSE_SOURCE, GROESSE_TARGET);

    await pair.source.query(db, `
      INSERT INTO users SELECT g, 'U' || g || '@x', 'pw' || g, ${BIG}, 'n' || g FROM generate_series(201, 260) g;
      UPDATE users SET note = 'toast unchanged' WHERE id BETWEEN 10 AND 40;
      UPDATE users SET "Email" = 'changed@x', pw = 'new secret' WHERE id = 50;
      UPDATE users SET id = 5005 WHERE id = 5;
      UPDATE users SET id = 6006, note = 'key and note' WHERE id = 6;
      DELETE FROM users WHERE id BETWEEN 100 AND 120;
      INSERT INTO ledger VALUES ('new', 999, 'never');
      UPDATE ledger SET amount = amount + 1000, secret = 'still never' WHERE amount = 3;
      DELETE FROM ledger WHERE amount = 4;
      DELETE FROM ledger WHERE ctid = (SELECT ctid FROM ledger WHERE account = 'dup' AND secret = 'x');
      INSERT INTO "Größe ✓" VALUES (21, 'w21');
      UPDATE "Größe ✓" SET "Wert ✓" = 'geändert' WHERE "ID ✓" = 3;
      DELETE FROM "Größe ✓" WHERE "ID ✓" = 4;`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    await sameRows(db, USERS_SOURCE, USERS_TARGET);
    await sameRows(db, LEDGER_SOURCE, LEDGER_TARGET);
    await sameRows(db, GROESSE_SOURCE, GROESSE_TARGET);
    const bigOnTarget = (await pair.target.query(db, `SELECT count(*)::int AS n FROM users WHERE note = 'toast unchanged' AND length(big) = 6400`)).rows[0].n;
    assert.equal(bigOnTarget, 31, 'an update leaving the TOASTed column alone kept its value on the target');

    // A table joining later is copied and streamed under its own map.
    await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE late`);
    await waitAllReady(pair.target, db, sub, 4, 90_000).catch((err) => assert.fail(`${err}\n${tail(run.output())}`));
    await pair.source.query(db, `INSERT INTO late VALUES (31, 'o31', 'h31'); UPDATE late SET "Old" = 'renamed old' WHERE k = 2`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    await sameRows(db, `SELECT k, "Old" FROM late`, `SELECT k, new_name FROM late`);

    // Drift: the excluded column dropped and added again on the source stops nothing; a new column keeps its name.
    await pair.source.query(db, `
      ALTER TABLE users DROP COLUMN pw;
      INSERT INTO users VALUES (300, 'after drop', ${BIG.replace('g::text', "'300'")}, 'n300');
      ALTER TABLE users ADD COLUMN pw text;
      ALTER TABLE users ADD COLUMN extra int;
      INSERT INTO users (id, "Email", big, note, pw, extra) VALUES (301, 'after add', 'small', 'n301', 'secret again', 7);
      UPDATE users SET pw = 'x', extra = 8 WHERE id = 7;`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    await sameRows(db, `SELECT id, "Email", big, note, extra FROM users`, `SELECT user_id, email_address, big, note, extra FROM users`);
    const leaked = await pair.target.query(db, `
      SELECT (SELECT count(*) FROM users WHERE pw IS NOT NULL) + (SELECT count(*) FROM ledger WHERE secret IS NOT NULL)
           + (SELECT count(*) FROM late WHERE hidden IS NOT NULL) AS n`);
    assert.equal(Number(leaked.rows[0].n), 0, 'an excluded column was written on the target');
    assert.doesNotMatch(run.output(), /secret again|pw\d|still never/, 'an excluded value reached the log');
    assert.equal(await run.stop(), 0, tail(run.output()));

    const verify = () => runCli(['verify', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--chunk-rows', '100'], {}, 120_000);
    const clean = await verify();
    assert.equal(clean.code, 0, clean.stdout + clean.stderr);
    assert.match(clean.stdout, /^ok: "public"\."users" -> "public"\."users": /m);
    assert.match(clean.stdout, /^ok: "public"\."Größe ✓" -> "public"\."Größe ✓": /m);
    // An excluded column is not compared: writing it on the target is no mismatch.
    await pair.target.query(db, `UPDATE users SET pw = 'target only' WHERE user_id = 30; UPDATE ledger SET secret = 'target only'`);
    const excluded = await verify();
    assert.equal(excluded.code, 0, excluded.stdout + excluded.stderr);
    // A renamed column is: a value changed on the target is found, in the key range of its row.
    await pair.target.query(db, `UPDATE users SET email_address = 'corrupted' WHERE user_id = 77; UPDATE "Größe ✓" SET "Wert ☆" = 'kaputt' WHERE "ID ✓" = 9`);
    const bad = await verify();
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stdout, /^mismatch: "public"\."users" -> "public"\."users" chunk \d+ of \d+, \("id"\) [^:]+: source \d+ rows, target \d+ rows, contents differ$/m);
    assert.match(bad.stdout, /^mismatch: "public"\."Größe ✓" -> "public"\."Größe ✓" /m);
    const fixed = await runCli(['verify', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--chunk-rows', '100', '--fix'], {}, 120_000);
    assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
    await sameRows(db, `SELECT id, "Email", big, note, extra FROM users`, `SELECT user_id, email_address, big, note, extra FROM users`);

    // Resumed with the same maps, it streams on.
    run = cli(args);
    await pair.source.query(db, `UPDATE users SET "Email" = 'resumed' WHERE id = 8`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    await sameRows(db, `SELECT id, "Email" FROM users`, `SELECT user_id, email_address FROM users`);
    assert.equal(await run.stop(), 0, tail(run.output()));
  });

  it('a partitioned root with a row filter, copied as text (an enum column), under renames and an exclusion', { timeout: 180_000 }, async () => {
    const sub = 'cm_part';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TYPE mood AS ENUM ('sad', 'ok')`);
    await pair.source.query(db, `
      CREATE TABLE m (id int, at date NOT NULL, v text, s text, md mood, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
      CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
      CREATE TABLE m_rest PARTITION OF m DEFAULT;
      INSERT INTO m SELECT g, DATE '2024-01-01' + g * 5, 'v' || g, 's' || g, 'ok' FROM generate_series(1, 120) g;
      CREATE PUBLICATION pub FOR TABLE m WHERE (id % 2 = 0) WITH (publish_via_partition_root = true);`);
    await pair.target.query(db, `CREATE TABLE m_t (ident int, at date, val text, s text, md mood, PRIMARY KEY (ident, at))`);
    const m = map('m', { id: 'ident', v: 'val', s: null }, { schema: 'public', table: 'm_t' });
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--table-map', m]);
    await waitAllReady(pair.target, db, sub, 1, 90_000).catch((err) => assert.fail(`${err}\n${tail(run.output())}`));
    assert.match(run.output(), /copied "public"\."m" -> "public"\."m_t": 60 rows, .*text\)/);
    await pair.source.query(db, `
      INSERT INTO m SELECT g, DATE '2030-01-01' + g, 'new' || g, 'secret', 'sad' FROM generate_series(200, 210) g;
      UPDATE m SET v = 'changed', s = 'changed secret' WHERE id IN (10, 11);
      UPDATE m SET id = 1000 WHERE id = 12;
      DELETE FROM m WHERE id IN (20, 21);`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    await sameRows(db, `SELECT id, at, v, md FROM m WHERE id % 2 = 0`, `SELECT ident, at, val, md FROM m_t`);
    assert.equal((await pair.target.query(db, `SELECT count(*)::int AS n FROM m_t WHERE s IS NOT NULL`)).rows[0].n, 0, 'the excluded column was written');
    assert.equal(await run.stop(), 0, tail(run.output()));
  });

  it('refuses a map changed for a copied table with the fix; after a resync the table is copied afresh under the new map', { timeout: 180_000 }, async () => {
    const sub = 'cm_change';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub);
    await pair.source.query(db, `
      CREATE TABLE t (id int PRIMARY KEY, a text, b text);
      INSERT INTO t SELECT g, 'a' || g, 'b' || g FROM generate_series(1, 100) g;
      CREATE PUBLICATION pub FOR TABLE t;`);
    await pair.target.query(db, `CREATE TABLE t (id int PRIMARY KEY, a_new text, b text, b_new text)`);
    const base = ['--source', sourceUrl, '--target', targetUrl, '--subscription', sub];
    const args = (m: string) => ['run', ...base, '--publication', 'pub', '--table-map', m];
    const first = map('t', { a: 'a_new' });
    let run = cli(args(first));
    await waitAllReady(pair.target, db, sub, 1);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.equal(await run.stop(), 0, tail(run.output()));

    const second = map('t', { a: 'a_new', b: 'b_new' });
    const refused = await runCli(args(second), {}, 45_000);
    const lines = refused.stderr.split('\n').filter((l) => l.trim() !== '');
    assert.notEqual(refused.code, 0);
    assert.equal(lines.length, 1, refused.stderr);
    assert.match(lines[0], /--table-map "columns" for "public"\."t" .* differ from those its target rows were copied under .*pg-live-sync resync --subscription cm_change --table '"public"\."t"', then run with the new map/);
    // Without its map at all is a change too.
    const bare = await runCli(['run', ...base, '--publication', 'pub'], {}, 45_000);
    assert.notEqual(bare.code, 0);
    assert.match(bare.stderr, /differ from those its target rows were copied under/);

    const resync = await runCli(['resync', '--target', targetUrl, '--subscription', sub, '--table', 'public.t']);
    assert.equal(resync.code, 0, resync.stderr);
    run = cli(args(second));
    await waitFor('t copied afresh under the new map', async () => (await pair.target.query(db, `SELECT count(*)::int AS n FROM t WHERE b_new IS NOT NULL`)).rows[0].n === 100, 90_000);
    await waitAllReady(pair.target, db, sub, 1);
    await pair.source.query(db, `UPDATE t SET b = 'streamed' WHERE id = 1`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    await sameRows(db, `SELECT id, a, b FROM t`, `SELECT id, a_new, b_new FROM t`);
    assert.equal(await run.stop(), 0, tail(run.output()));
  });

  it('create-tables builds the target under the mapped names with the key on the renamed column; sync-sequences follows the renamed serial', { timeout: 180_000 }, async () => {
    const sub = 'cm_create';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub);
    await pair.source.query(db, `
      CREATE TABLE items (id serial PRIMARY KEY, "Name ✓" text NOT NULL DEFAULT 'x', secret text NOT NULL, qty int);
      INSERT INTO items ("Name ✓", secret, qty) SELECT 'n' || g, 's' || g, g FROM generate_series(1, 40) g;
      CREATE PUBLICATION pub FOR TABLE items;`);
    const m = map('items', { id: 'item_id', 'Name ✓': 'label', secret: null }, { schema: 'shop', table: 'goods' });
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--table-map', m, '--create-tables']);
    await waitAllReady(pair.target, db, sub, 1, 90_000).catch((err) => assert.fail(`${err}\n${tail(run.output())}`));
    await pair.source.query(db, `INSERT INTO items ("Name ✓", secret, qty) VALUES ('streamed', 's', 41); UPDATE items SET id = 100 WHERE id = 2`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    await sameRows(db, `SELECT id, "Name ✓", qty FROM items`, `SELECT item_id, label, qty FROM shop.goods`);
    assert.equal(await run.stop(), 0, tail(run.output()));

    const q = async (sql: string) => (await pair.target.query(db, sql)).rows;
    const cols = (await q(`SELECT column_name, is_nullable, column_default FROM information_schema.columns WHERE table_schema = 'shop' AND table_name = 'goods' ORDER BY ordinal_position`));
    assert.deepEqual(cols.map((c) => c.column_name), ['item_id', 'label', 'qty'], 'renamed columns, the excluded one left out');
    assert.equal(cols[1].is_nullable, 'NO');
    assert.equal(cols[1].column_default, "'x'::text");
    assert.equal((await q(`SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint WHERE conrelid = 'shop.goods'::regclass AND contype = 'p'`))[0].d, 'PRIMARY KEY (item_id)');
    assert.equal((await q(`SELECT pg_get_serial_sequence('shop.goods', 'item_id') AS s`))[0].s, 'shop.items_id_seq', 'the serial\'s sequence is owned by the renamed column');

    const seqs = await runCli(['sync-sequences', '--subscription', sub, '--source', sourceUrl, '--target', targetUrl]);
    assert.equal(seqs.code, 0, seqs.stderr);
    // The source handed out 41; the target's column max is 100 (the key moved there): past both.
    assert.equal((await q(`INSERT INTO shop.goods (label, qty) VALUES ('after cutover', 0) RETURNING item_id`))[0].item_id, 101);
    await pair.source.query(db, `SELECT setval('items_id_seq', 500)`);
    const again = await runCli(['sync-sequences', '--subscription', sub, '--source', sourceUrl, '--target', targetUrl]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal((await q(`INSERT INTO shop.goods (label, qty) VALUES ('after source moved', 0) RETURNING item_id`))[0].item_id, 501, 'the source sequence of the renamed column counts');
  });

  describe('bad maps: one line, exit non-zero, nothing created', () => {
    const SCHEMA = `CREATE TABLE t (id int PRIMARY KEY, a text, b text, u int NOT NULL)`;
    async function refused(t: TestContext, prefix: string, m: string, match: RegExp, targetSchema = SCHEMA, extra: string[] = []): Promise<void> {
      const { db, sourceUrl, targetUrl } = await freshDatabases(pair, prefix);
      await pair.source.query(db, `${SCHEMA}; INSERT INTO t VALUES (1, 'a', 'b', 1); CREATE PUBLICATION pub FOR TABLE t;`);
      await pair.target.query(db, targetSchema);
      const r = await runCli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', prefix, '--table-map', m, ...extra], {}, 45_000);
      t.diagnostic(`exit ${r.code}; stderr: ${r.stderr.trimEnd()}`);
      const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
      assert.ok(r.code !== 0 && r.code !== null, `non-zero exit, got ${r.code}`);
      assert.equal(lines.length, 1, `exactly one stderr line, got:\n${r.stderr}`);
      assert.match(lines[0], match);
      assert.equal(await slotCount(pair.source, db), 0, 'a replication slot was created');
      const created = await pair.target.query(db, `SELECT count(*)::int AS n FROM pg_namespace WHERE nspname IN ('_pg_live_sync', 'other')`);
      assert.equal(created.rows[0].n, 0, 'state or tables were created on the target');
    }

    it('a mapped column the source table does not have', async (t) => {
      await refused(t, 'cm_bad_missing', map('t', { A: 'x' }), /"columns" names "A", which is not a published column of source table "public"\."t" \(names are exact: case and quotes matter\); fix the name or remove it from the map/);
    });
    it('two source columns onto one target name', async (t) => {
      await refused(t, 'cm_bad_two', map('t', { a: 'b' }), /source columns "a" and "b" of "public"\."t" both land on target column "b" through --table-map "columns"; give one of them another target name/);
    });
    it('two map entries onto one target name', async (t) => {
      await refused(t, 'cm_bad_dup', map('t', { a: 'z', b: 'z' }), /maps both "a" and "b" onto target column "z".*give each its own target name/);
    });
    it('excluding a column of the replica identity', async (t) => {
      await refused(t, 'cm_bad_key', map('t', { id: null }), /leaves out "id", a column of the replica identity of "public"\."t" .*map it to a target name instead of null/);
    });
    it('a renamed column missing on the target names the target name and the map', async (t) => {
      await refused(t, 'cm_bad_target', map('t', { a: 'a_renamed' }), /target table "public"\."t" has no column "a_renamed", the target name --table-map "columns" gives source column "a" of "public"\."t"; add it on the target \(ALTER TABLE "public"\."t" ADD COLUMN "a_renamed" text;\) or fix the name in the map/);
    });
    it('columns on a whole-schema map', async (t) => {
      await refused(t, 'cm_bad_schema', JSON.stringify({ source: { schema: 'public' }, target: { schema: 'other' }, columns: { a: 'x' } }), /"columns" on a whole-schema map.*give "source\.table"/);
    });
    it('a map naming a table the source does not have (a typo: names are exact)', async (t) => {
      await refused(t, 'cm_bad_table', JSON.stringify({ source: { schema: 'public', table: 'T' }, target: { schema: 'public', table: 't' } }),
        /--table-map names the source table "public"\."T", which the source does not have; fix the name/);
    });
    it('with --create-tables, a bad map creates no table', async (t) => {
      await refused(t, 'cm_bad_create', map('t', { nope: 'x' }, { schema: 'other' }), /"columns" names "nope", which is not a published column/, '', ['--create-tables']);
    });
  });
});
