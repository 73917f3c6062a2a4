/**
 * Additive schema drift against real PostgreSQL 15 clusters: a column added on the source stops
 * only that table (with the exact ALTER) while the others stream, and the table is copied afresh
 * once the target has the column; with --apply-ddl add-column the column is added as it streams
 * by (existing rows filled as on the source), a volatile DEFAULT triggering a fresh copy; the same
 * when the column was added while no run was streaming.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { freshDatabases, runCli, sameContents, startPair, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor, type Pair } from '../harness/sync';

let pair: Pair;
const cli = trackRuns();
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

const SCHEMA = `CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);`;
const SEED = `INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 200) g; INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 200) g;
  CREATE PUBLICATION pub FOR TABLE a, b;`;

async function rel(db: string, sub: string, table: string): Promise<{ state: string; last_error: string | null } | undefined> {
  const r = await pair.target.query<{ state: string; last_error: string | null }>(db, `SELECT state, last_error FROM _pg_live_sync.subscription_rel WHERE subname = $1 AND tablename = $2`, [sub, table]);
  return r.rows[0];
}

describe('schema drift: a column added on the source', () => {
  it('stops only that table with the exact ALTER, the others stream, and it is copied afresh once the target has the column', { timeout: 180_000 }, async () => {
    const sub = 'drift_stop';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, SCHEMA);
    await pair.source.query(db, SEED);
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub]);
    await waitAllReady(pair.target, db, sub, 2);
    await pair.source.query(db, `ALTER TABLE a ADD COLUMN "Größe" numeric(6,2) DEFAULT 1.5; INSERT INTO a VALUES (201, 'after', 7.25); UPDATE a SET v = 'changed' WHERE id = 1`);
    await waitFor('a to stop with the ALTER', async () => /has new column\(s\) "Größe" .*run on the target: ALTER TABLE "public"\."a" ADD COLUMN IF NOT EXISTS "Größe" numeric\(6,2\);/.test((await rel(db, sub, 'a'))?.last_error ?? ''),
      60_000, 100, { describe: async () => tail(run.output()) });
    // b keeps streaming meanwhile.
    await pair.source.query(db, `INSERT INTO b VALUES (201, 'still streaming'); DELETE FROM b WHERE id = 2`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.ok(await sameContents(pair, db, 'b'), 'b streams on');
    assert.equal((await rel(db, sub, 'b'))?.state, 'r');
    const status = await runCli(['status', '--subscription', sub, '--target', targetUrl]);
    assert.match(status.stdout, /"public"\."a" .*\(error\).*has new column\(s\) "Größe"/, status.stdout);

    await pair.target.query(db, `ALTER TABLE a ADD COLUMN "Größe" numeric(6,2)`);
    await pair.source.query(db, `INSERT INTO a VALUES (202, 'later', 2)`);
    await waitFor('a copied afresh and ready', async () => (await rel(db, sub, 'a'))?.state === 'r', 150_000, 200, { describe: async () => tail(run.output()) });
    await pair.source.query(db, `UPDATE a SET "Größe" = 9 WHERE id = 3`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.ok(await sameContents(pair, db, 'a'), 'a matches the source, new column included');
    assert.ok(await sameContents(pair, db, 'b'));
    await run.stop();
  });

  it('--apply-ddl add-column adds it as it streams by, filled as on the source; a volatile DEFAULT is copied afresh', { timeout: 180_000 }, async () => {
    const sub = 'drift_apply';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, SCHEMA);
    await pair.source.query(db, SEED);
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--apply-ddl', 'add-column']);
    await waitAllReady(pair.target, db, sub, 2);
    await pair.source.query(db, `ALTER TABLE a ADD COLUMN flag text DEFAULT 'it''s, {odd}'; ALTER TABLE a ADD COLUMN n int;
      INSERT INTO a VALUES (201, 'after', 'x', 5); UPDATE a SET n = 1 WHERE id <= 10`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.ok(await sameContents(pair, db, 'a'), 'existing rows got the source\'s default, new ones their values');
    assert.equal((await rel(db, sub, 'a'))?.state, 'r');
    assert.doesNotMatch(run.output(), /copying it afresh/);

    await pair.source.query(db, `ALTER TABLE b ADD COLUMN stamp timestamptz DEFAULT clock_timestamp(); INSERT INTO b VALUES (201, 'after')`);
    await waitFor('b copied afresh', async () => /"public"\."b": the source filled its new column/.test(run.output()), 60_000, 100, { describe: async () => tail(run.output()) });
    await waitFor('b ready again', async () => (await rel(db, sub, 'b'))?.state === 'r', 120_000, 200);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.ok(await sameContents(pair, db, 'b'), 'per-row volatile values arrive through the fresh copy');
    assert.ok(await sameContents(pair, db, 'a'));
    await run.stop();
  });

  it('a column added while no run streams: the next run stops only that table (or adds it with --apply-ddl)', { timeout: 180_000 }, async () => {
    const sub = 'drift_start';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, SCHEMA);
    await pair.source.query(db, SEED);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub];
    const first = cli(args);
    await waitAllReady(pair.target, db, sub, 2);
    assert.equal(await first.stop(), 0, tail(first.output()));
    await pair.source.query(db, `ALTER TABLE a ADD COLUMN c int DEFAULT 3; ALTER TABLE b ADD COLUMN c int DEFAULT 4; INSERT INTO b VALUES (300, 'x', 5)`);

    const second = cli(args);
    await waitFor('a and b to stop with their ALTERs', async () =>
      /ADD COLUMN IF NOT EXISTS "c" integer/.test((await rel(db, sub, 'a'))?.last_error ?? '') && /ADD COLUMN IF NOT EXISTS "c" integer/.test((await rel(db, sub, 'b'))?.last_error ?? ''),
      60_000, 100, { describe: async () => tail(second.output()) });
    assert.equal(second.proc.exitCode, null, 'run goes on');
    assert.equal(await second.stop(), 0, tail(second.output()));

    // With --apply-ddl the waiting tables get their columns before they are copied afresh.
    const third = cli([...args, '--apply-ddl', 'add-column']);
    await waitFor('both copied afresh and ready', async () => (await rel(db, sub, 'a'))?.state === 'r' && (await rel(db, sub, 'b'))?.state === 'r', 150_000, 200,
      { describe: async () => tail(third.output()) });
    await waitCaughtUp(pair, db, sub, 60_000, third);
    assert.ok(await sameContents(pair, db, 'a'));
    assert.ok(await sameContents(pair, db, 'b'));
    assert.equal(await third.stop(), 0);
  });

  it('a column renamed on the target is not taken for one added on the source: with --apply-ddl add-column the table stops with the RENAME to run, in the stream and at the next start', { timeout: 240_000 }, async () => {
    const sub = 'drift_renamed';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, SCHEMA);
    await pair.source.query(db, SEED);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--apply-ddl', 'add-column'];
    const hasV = async () => (await pair.target.query(db, `SELECT 1 FROM information_schema.columns WHERE table_name = 'a' AND column_name = 'v'`)).rowCount === 1;
    const run = cli(args);
    await waitAllReady(pair.target, db, sub, 2);
    // In the stream: the source's next Relation message for a (a column really added, n) meets a
    // target whose "v" was renamed "w": only n is new.
    await pair.target.query(db, `ALTER TABLE a RENAME COLUMN v TO w`);
    await pair.source.query(db, `ALTER TABLE a ADD COLUMN n int; INSERT INTO a VALUES (201, 'after', 1); UPDATE a SET v = 'changed' WHERE id <= 10`);
    const renameHint = /target table "public"\."a" has lost column\(s\) "v" .*run on the target: ALTER TABLE "public"\."a" RENAME COLUMN "w" TO "v";/;
    await waitFor('a to stop with the RENAME', async () => renameHint.test((await rel(db, sub, 'a'))?.last_error ?? ''), 60_000, 100, { describe: async () => tail(run.output()) });
    assert.equal(await hasV(), false, '"v" is not added back empty');
    await pair.source.query(db, `INSERT INTO b VALUES (201, 'still streaming')`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.ok(await sameContents(pair, db, 'b'), 'b streams on');
    assert.equal(run.proc.exitCode, null, 'run goes on');
    assert.equal(await run.stop(), 0, tail(run.output()));

    // At the next start: still the RENAME, never an empty "v".
    const second = cli(args);
    await waitFor('a to stop with the RENAME at start', async () => renameHint.test((await rel(db, sub, 'a'))?.last_error ?? '') && /copied "public"\."a"|lost column/.test(second.output()),
      60_000, 100, { describe: async () => tail(second.output()) });
    assert.equal(await hasV(), false, '"v" is not added back empty at the next start');
    // Once renamed back (and given n), a is copied afresh with its values.
    await pair.target.query(db, `ALTER TABLE a RENAME COLUMN w TO v; ALTER TABLE a ADD COLUMN n int`);
    await waitFor('a copied afresh and ready', async () => (await rel(db, sub, 'a'))?.state === 'r' && (await rel(db, sub, 'a'))?.last_error === null, 150_000, 200,
      { describe: async () => tail(second.output()) });
    await waitCaughtUp(pair, db, sub, 60_000, second);
    assert.ok(await sameContents(pair, db, 'a'), 'a matches the source, its values kept');
    assert.equal(await second.stop(), 0, tail(second.output()));
  });

  it('a column renamed on the target while no run streams: the next run with --apply-ddl add-column stops that table with the RENAME, the others stream', { timeout: 180_000 }, async () => {
    const sub = 'drift_renamed_start';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, SCHEMA);
    await pair.source.query(db, SEED);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub, '--apply-ddl', 'add-column'];
    const first = cli(args);
    await waitAllReady(pair.target, db, sub, 2);
    assert.equal(await first.stop(), 0, tail(first.output()));
    await pair.target.query(db, `ALTER TABLE a RENAME COLUMN v TO w`);
    await pair.source.query(db, `UPDATE a SET v = 'changed' WHERE id <= 10; INSERT INTO b VALUES (201, 'x')`);
    const second = cli(args);
    await waitFor('a to stop with the RENAME', async () => /has lost column\(s\) "v" .*RENAME COLUMN "w" TO "v";/.test((await rel(db, sub, 'a'))?.last_error ?? ''),
      60_000, 100, { describe: async () => tail(second.output()) });
    await waitCaughtUp(pair, db, sub, 60_000, second);
    assert.ok(await sameContents(pair, db, 'b'), 'b streams on');
    assert.equal((await pair.target.query(db, `SELECT 1 FROM information_schema.columns WHERE table_name = 'a' AND column_name = 'v'`)).rowCount, 0, '"v" is not added back empty');
    const status = await runCli(['status', '--subscription', sub, '--target', targetUrl]);
    assert.match(status.stdout, /"public"\."a" .*\(error\).*RENAME COLUMN "w" TO "v"/, status.stdout);
    assert.equal(await second.stop(), 0, tail(second.output()));
  });
});
