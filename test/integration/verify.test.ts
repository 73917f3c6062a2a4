import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  commitLoop, freshDatabases, runCli, sameContents, startPair, tail, trackRuns, waitAllReady, waitCaughtUp, type CliRun, type Pair,
} from '../harness/sync';

const start = trackRuns();
let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

/** items: 20,000 rows keyed by id (20 chunks of 1,000); notes: no key (compared whole). */
const SCHEMA = `CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(12,2));
  CREATE TABLE notes (body text, n int);`;
const SEED = `ALTER TABLE notes REPLICA IDENTITY FULL;
  INSERT INTO items SELECT g, 'item ' || g, g * 1.25 FROM generate_series(1, 20000) g;
  INSERT INTO notes SELECT 'note ' || (g % 50), g FROM generate_series(1, 500) g;
  CREATE PUBLICATION pub FOR TABLE items, notes;`;

interface Synced {
  db: string;
  sourceUrl: string;
  targetUrl: string;
  sub: string;
  run: CliRun;
  verify(...extra: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>;
  resume(): Promise<void>;
}

async function synced(name: string, schema = SCHEMA, seed = SEED, tables = 2, ...runExtra: string[]): Promise<Synced> {
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, name, schema);
  await pair.source.query(db, seed);
  const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', name, ...runExtra];
  const s: Synced = {
    db, sourceUrl, targetUrl, sub: name,
    run: start(args),
    verify: (...extra) => runCli(['verify', '--source', sourceUrl, '--target', targetUrl, '--subscription', name, '--chunk-rows', '1000', ...extra], {}, 180_000),
    async resume() {
      s.run = start(args);
      await waitCaughtUp(pair, db, name, 60_000, s.run);
    },
  };
  await waitAllReady(pair.target, db, name, tables);
  await waitCaughtUp(pair, db, name, 60_000, s.run);
  return s;
}

const lines = (out: string, word: string) => out.split('\n').filter((l) => l.startsWith(`${word}:`));

/** Each row's physical identity on the target: a row re-written gets a new one. */
async function rowVersions(db: string, where: string): Promise<Map<number, string>> {
  const r = await pair.target.query(db, `SELECT id, ctid::text || '/' || xmin::text AS v FROM items WHERE ${where}`);
  return new Map(r.rows.map((row) => [row.id as number, row.v as string]));
}

describe('verify', () => {
  it('matching tables exit 0; rows corrupted on the target are named by chunk; --fix re-copies only those chunks', async () => {
    const s = await synced('corrupt');
    const clean = await s.verify();
    assert.equal(clean.code, 0, clean.stdout + clean.stderr);
    assert.match(clean.stdout, /^ok: "public"\."items" -> "public"\."items": 21 chunks, 20,000 rows$/m);
    assert.match(clean.stdout, /^ok: "public"\."notes" -> "public"\."notes": 1 chunk, 500 rows$/m);
    assert.equal(await s.run.stop(), 0, s.run.output());

    // Behind the tool's back, with the sync stopped: a changed value, a lost row, an extra row, a changed keyless row.
    await pair.target.query(s.db, `
      UPDATE items SET name = 'corrupted' WHERE id = 1500;
      DELETE FROM items WHERE id = 7001;
      INSERT INTO items VALUES (25000, 'only on the target', 0);
      UPDATE notes SET n = -1 WHERE ctid = (SELECT ctid FROM notes WHERE n = 7);`);
    const bad = await s.verify();
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.deepEqual(lines(bad.stdout, 'mismatch'), [
      'mismatch: "public"."items" -> "public"."items" chunk 2 of 21, ("id") > 1000 and <= 2000: source 1,000 rows, target 1,000 rows, contents differ',
      'mismatch: "public"."items" -> "public"."items" chunk 8 of 21, ("id") > 7000 and <= 8000: source 1,000 rows, target 999 rows',
      'mismatch: "public"."items" -> "public"."items" chunk 21 of 21, ("id") > 20000: source 0 rows, target 1 rows',
      'mismatch: "public"."notes" -> "public"."notes" whole table (no primary key or replica identity index): source 500 rows, target 500 rows, contents differ',
    ], bad.stdout);
    assert.match(bad.stdout, /^verify: 2 tables, 4 chunks differing in 2 tables; pg-live-sync verify --fix re-copies them/m);

    const json = await s.verify('--json', '--table', 'public.items');
    assert.equal(json.code, 1);
    const report = JSON.parse(json.stdout);
    assert.equal(report.ok, false);
    assert.equal(report.tables.length, 1);
    assert.deepEqual(report.tables[0].problems.map((c: { range: unknown }) => c.range), [
      { after: ['1000'], upTo: ['2000'] }, { after: ['7000'], upTo: ['8000'] }, { after: ['20000'], upTo: null },
    ]);

    const outside = `NOT (id > 1000 AND id <= 2000 OR id > 7000 AND id <= 8000 OR id > 20000)`;
    const before = await rowVersions(s.db, outside);
    const inside = await rowVersions(s.db, `id > 1000 AND id <= 2000`);
    const fixed = await s.verify('--fix');
    assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
    assert.equal(lines(fixed.stdout, 'fixed').length, 4, fixed.stdout);
    assert.match(fixed.stdout, /^fixed: "public"\."items" -> "public"\."items" chunk 8 of 21, \("id"\) > 7000 and <= 8000: source 1,000 rows, target 999 rows; 1,000 rows re-copied$/m);
    assert.deepEqual(await rowVersions(s.db, outside), before, 'rows outside the bad chunks are untouched');
    const after = await rowVersions(s.db, `id > 1000 AND id <= 2000`);
    assert.ok([...after].every(([id, v]) => inside.get(id) !== v), 'the bad chunk was re-written');
    assert.ok(await sameContents(pair, s.db, 'items'));
    assert.ok(await sameContents(pair, s.db, 'notes'));
    const again = await s.verify();
    assert.equal(again.code, 0, again.stdout + again.stderr);

    // The sync resumes on top of the fixed rows: changes to them apply, nothing twice.
    await s.resume();
    await pair.source.query(s.db, `UPDATE items SET name = 'after fix' WHERE id BETWEEN 1495 AND 1505; INSERT INTO items VALUES (25000, 'now on the source', 1); DELETE FROM items WHERE id = 7002; INSERT INTO notes VALUES ('after', 1);`);
    await waitCaughtUp(pair, s.db, s.sub, 60_000, s.run);
    assert.ok(await sameContents(pair, s.db, 'items'), tail(s.run.output()));
    assert.ok(await sameContents(pair, s.db, 'notes'));
    assert.equal(await s.run.stop(), 0, s.run.output());
  });

  it('--fix is refused while the sync runs and while the target has changes left to apply', async () => {
    const s = await synced('refuse');
    await pair.target.query(s.db, `UPDATE items SET name = 'corrupted' WHERE id = 10`);
    const running = await s.verify('--fix');
    assert.equal(running.code, 1);
    assert.match(running.stderr, /^pg-live-sync: error: subscription "refuse" is running; verify --fix re-copies chunks only while the sync is stopped/m);
    assert.equal(await s.run.stop(), 0, s.run.output());

    await pair.source.query(s.db, `UPDATE items SET name = 'not applied yet' WHERE id = 5000`);
    const behind = await s.verify();
    assert.equal(behind.code, 1);
    assert.match(behind.stdout, /^warning: the sync is stopped and the source has changes the target has not applied yet/m);
    assert.equal(lines(behind.stdout, 'mismatch').length, 2, behind.stdout);
    const refused = await s.verify('--fix');
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /the source has changes that the target has not applied yet.*nothing was changed/);
    const kept = await pair.target.query(s.db, `SELECT name FROM items WHERE id IN (10, 5000) ORDER BY id`);
    assert.deepEqual(kept.rows.map((r) => r.name), ['corrupted', 'item 5000']);

    // Caught up (the change applied), stopped: now the fix goes through.
    await s.resume();
    assert.equal(await s.run.stop(), 0, s.run.output());
    const fixed = await s.verify('--fix');
    assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
    assert.ok(await sameContents(pair, s.db, 'items'));
  });

  it('while the sync runs under a source workload: no false differences, and a real one is still found', async () => {
    const s = await synced('streaming', SCHEMA, SEED.replace('items, notes', 'items'), 1);
    // Rows with ids up to 15,000 are updated, deleted and inserted again all the time, about thirty transactions a second.
    let n = 0;
    const work = commitLoop(s.sourceUrl, (i) => `BEGIN;
      UPDATE items SET price = price + 1 WHERE id = ${1 + ((i * 7919) % 15000)};
      DELETE FROM items WHERE id = ${1 + ((i * 104729) % 15000)};
      INSERT INTO items VALUES (${1 + ((i * 104729) % 15000)}, 'again ${i}', ${i});
      UPDATE items SET name = name || '.' WHERE id = ${1 + ((i * 7877) % 15000)};
      COMMIT; SELECT pg_sleep(0.03);`);
    try {
      await work.more(5);
      const from = work.committed;
      const clean = await s.verify();
      assert.ok(work.committed > from + 5, 'the workload ran during verify');
      assert.equal(clean.code, 0, clean.stdout + clean.stderr);
      assert.equal(lines(clean.stdout, 'mismatch').length, 0, clean.stdout);

      await pair.target.query(s.db, `UPDATE items SET name = 'corrupted' WHERE id = 18000`);
      const bad = await s.verify();
      assert.equal(bad.code, 1, bad.stdout + bad.stderr);
      assert.deepEqual(lines(bad.stdout, 'mismatch'), [
        'mismatch: "public"."items" -> "public"."items" chunk 18 of 21, ("id") > 17000 and <= 18000: source 1,000 rows, target 1,000 rows, contents differ',
      ], bad.stdout);
      assert.equal(lines(bad.stdout, 'changing').length + lines(bad.stdout, 'behind').length, 0, bad.stdout);
      n = work.committed;
    } finally {
      await work.stop();
    }
    assert.ok(n > 0);
    assert.equal(await s.run.stop(), 0, s.run.output());
  });

  it('quoted and Unicode names, a table map, a composite text key sorted differently on the target', async () => {
    const table = `"Sch.ema ü"."Tä""ble"`;
    const schema = `CREATE SCHEMA "Sch.ema ü"; CREATE SCHEMA "Zïel";`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'unicode', schema);
    // On the target the key's text column sorts by ICU rules ('a' < 'B'), on the source by bytes ('B' < 'a').
    await pair.source.query(db, `CREATE TABLE ${table} ("Ké y" text, n int, "vål" text, PRIMARY KEY ("Ké y", n));
      INSERT INTO ${table} SELECT chr(65 + g % 26) || chr(97 + g % 26) || (g % 7), g, 'v ' || g FROM generate_series(1, 3000) g;
      INSERT INTO ${table} SELECT chr(97 + g % 26) || (g % 5), g, E'new\\nline ''' || g FROM generate_series(1, 3000) g;
      CREATE PUBLICATION pub FOR TABLE ${table};`);
    await pair.target.query(db, `CREATE TABLE "Zïel"."Tä""ble" ("Ké y" text COLLATE "und-x-icu", n int, "vål" text, PRIMARY KEY ("Ké y", n))`);
    const map = JSON.stringify({ source: { schema: 'Sch.ema ü', table: 'Tä"ble' }, target: { schema: 'Zïel', table: 'Tä"ble' } });
    const run = start(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', 'unicode', '--table-map', map]);
    await waitAllReady(pair.target, db, 'unicode', 1);
    await waitCaughtUp(pair, db, 'unicode', 60_000, run);
    const verify = (...extra: string[]) => runCli(['verify', '--source', sourceUrl, '--target', targetUrl, '--subscription', 'unicode', '--chunk-rows', '500', '--table', table, ...extra]);
    const clean = await verify();
    assert.equal(clean.code, 0, clean.stdout + clean.stderr);
    assert.match(clean.stdout, /^ok: "Sch\.ema ü"\."Tä""ble" -> "Zïel"\."Tä""ble": 13 chunks, 6,000 rows$/m);
    assert.equal(await run.stop(), 0, run.output());

    // The 3,201st row in the source's order, in chunk 7 (rows 3,001 to 3,500).
    const row = (await pair.source.query(db, `SELECT "Ké y" AS k, n FROM ${table} ORDER BY "Ké y" COLLATE "C", n OFFSET 3200 LIMIT 1`)).rows[0];
    await pair.target.query(db, `UPDATE "Zïel"."Tä""ble" SET "vål" = 'x' WHERE "Ké y" = $1 AND n = $2`, [row.k, row.n]);
    const bad = await verify();
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    const mismatches = lines(bad.stdout, 'mismatch');
    assert.equal(mismatches.length, 1, bad.stdout);
    assert.match(mismatches[0], /^mismatch: "Sch\.ema ü"\."Tä""ble" -> "Zïel"\."Tä""ble" chunk 7 of 13, \("Ké y", "n"\) > \('[^']+', \d+\) and <= \('[^']+', \d+\): source 500 rows, target 500 rows, contents differ$/);
    const [, lo, hi] = /> \('([^']+)', \d+\) and <= \('([^']+)', \d+\)/.exec(mismatches[0])!;
    assert.ok(Buffer.compare(Buffer.from(lo), Buffer.from(row.k)) <= 0 && Buffer.compare(Buffer.from(row.k), Buffer.from(hi)) <= 0, `${row.k} within ${lo}..${hi}`);
    const fixed = await verify('--fix');
    assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
    assert.ok(await sameContents(pair, db, table, `"Zïel"."Tä""ble"`));
  });

  it('a partitioned table published through its root, and a table with a row filter', async () => {
    const schema = `CREATE TABLE m (id int, at int, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
      CREATE TABLE m1 PARTITION OF m FOR VALUES FROM (0) TO (500); CREATE TABLE m2 PARTITION OF m FOR VALUES FROM (500) TO (1000);
      CREATE TABLE f (id int PRIMARY KEY, keep boolean, v text);`;
    const s = await synced('parts', schema, `INSERT INTO m SELECT g, g % 1000, 'v' FROM generate_series(1, 3000) g;
      INSERT INTO f SELECT g, g % 2 = 0, 'v' FROM generate_series(1, 3000) g;
      CREATE PUBLICATION pub FOR TABLE m, f WHERE (keep) WITH (publish_via_partition_root = true);`);
    const clean = await s.verify();
    assert.equal(clean.code, 0, clean.stdout + clean.stderr);
    assert.match(clean.stdout, /^ok: "public"\."f" -> "public"\."f": 2 chunks, 1,500 rows$/m);
    assert.match(clean.stdout, /^ok: "public"\."m" -> "public"\."m": 4 chunks, 3,000 rows$/m);
    assert.equal(await s.run.stop(), 0, s.run.output());
    await pair.target.query(s.db, `UPDATE m SET v = 'x' WHERE id = 1700; DELETE FROM f WHERE id = 2000`);
    const bad = await s.verify();
    assert.deepEqual(lines(bad.stdout, 'mismatch'), [
      'mismatch: "public"."f" -> "public"."f" chunk 1 of 2, ("id") <= 2000: source 1,000 rows, target 999 rows',
      'mismatch: "public"."m" -> "public"."m" chunk 2 of 4, ("id", "at") > (1000, 0) and <= (2000, 0): source 1,000 rows, target 1,000 rows, contents differ',
    ], bad.stdout);
    const fixed = await s.verify('--fix');
    assert.equal(fixed.code, 0, fixed.stdout + fixed.stderr);
    assert.ok(await sameContents(pair, s.db, 'm'));
    assert.ok(await sameContents(pair, s.db, '(SELECT * FROM f WHERE keep)', 'f'));
  });

  it('usage: an unknown table, a bad --chunk-rows, a table name to quote', async () => {
    const { sourceUrl, targetUrl } = await freshDatabases(pair, 'usage');
    const base = ['verify', '--source', sourceUrl, '--target', targetUrl, '--subscription', 'usage'];
    const cases: [string[], RegExp][] = [
      [[...base, '--chunk-rows', '5'], /--chunk-rows must be a whole number from 100/],
      [[...base, '--table', 'a.b.c'], /--table "a\.b\.c" has more than two parts; give SCHEMA\.TABLE as in SQL, double-quoting a part/],
    ];
    for (const [args, match] of cases) {
      const r = await runCli(args);
      assert.equal(r.code, 2, r.stderr);
      assert.match(r.stderr, match);
    }
    const missing = await runCli(base);
    assert.equal(missing.code, 1);
    assert.match(missing.stderr, /the target has no state for subscription "usage"/);
  });
});
