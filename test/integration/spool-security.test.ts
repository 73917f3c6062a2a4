/**
 * The spool (spool.ts) against another local user: the folders it keeps open source transactions
 * in are the user's own, so nobody else can read the rows there, plant rows to be applied, or make
 * a run write or delete through a link; `drop` removes what a killed run left there. The source
 * runs with logical_decoding_work_mem 64kB, so a transaction of a few thousand rows is streamed
 * (and spooled) while still open. The tests run as root: "another user" is `nobody`.
 */
import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startCluster } from '../harness/cluster';
import { freshDatabases, pg, runCli, sameContents, trackRuns, waitAllReady, waitCaughtUp, waitFor, type CliRun, type Pair } from '../harness/sync';
import { spoolDirFor } from '../../src/engine/spool';

// The runs' default spool base is what these tests look at: none from the environment.
delete process.env.PG_LIVE_SYNC_SPOOL_DIR;
delete process.env.XDG_CACHE_HOME;

const NOBODY = 65534;
let pair: Pair;
const startRun = trackRuns();
const scratch = mkdtempSync(path.join(tmpdir(), 'pgls-spool-security-'));
before(async () => {
  const [source, target] = await Promise.all([
    startCluster({ name: 'spsrc', settings: { logical_decoding_work_mem: "'64kB'" } }),
    startCluster({ name: 'sptgt' }),
  ]);
  pair = { source, target, stop: () => [source, target].forEach((c) => c.stop()) };
});
after(() => {
  pair?.stop();
  rmSync(scratch, { recursive: true, force: true });
});

const SCHEMA = `CREATE TABLE big (id int PRIMARY KEY, v text)`;

function spoolFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.spool')).map((f) => path.join(dir, f));
}

async function database(sub: string): Promise<{ db: string; sourceUrl: string; targetUrl: string; args: string[] }> {
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, SCHEMA);
  await pair.source.query(db, `INSERT INTO big VALUES (0, 'copied'); CREATE PUBLICATION pub FOR ALL TABLES`);
  return { db, sourceUrl, targetUrl, args: ['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--publication', 'pub'] };
}

/** The run ready and caught up, or its output if it exited first. */
async function streaming(run: CliRun, db: string, sub: string): Promise<void> {
  await Promise.race([
    waitAllReady(pair.target, db, sub, 1, 120_000).then(() => waitCaughtUp(pair, db, sub, 120_000, run)),
    run.exited.then((code) => Promise.reject(new Error(`the sync exited (${code}) before streaming:\n${run.output()}`))),
  ]);
}

/** A source transaction left open once the run has spooled some of it under `dir`. */
async function openTransaction(db: string, dir: string): Promise<pg.Client> {
  const open = new pg.Client({ connectionString: pair.source.url(db) });
  await open.connect();
  try {
    await open.query(`BEGIN; INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 40000) g`);
    await waitFor(`the open transaction spooled under ${dir}`, async () => spoolFiles(dir).some((f) => statSync(f).size > 100_000), 90_000);
    return open;
  } catch (err) {
    await open.end();
    throw err;
  }
}

describe('the spool and other local users', () => {
  it('a spool folder another user made first is refused: one line naming it and the fix, nothing written there', async () => {
    const sub = 'sp_theirs';
    const { db, sourceUrl, args } = await database(sub);
    // What they would do: make the base and the (computable) slot folder, open to everyone.
    const theirs = path.join(scratch, 'theirs');
    const slotDir = spoolDirFor(sourceUrl, `pg_live_sync_${sub}`, theirs);
    for (const dir of [theirs, slotDir]) {
      mkdirSync(dir, { recursive: true });
      chmodSync(dir, 0o777);
      chownSync(dir, NOBODY, NOBODY);
    }
    const run = startRun([...args, '--spool-dir', theirs]);
    const code = await Promise.race([run.exited, new Promise<string>((r) => setTimeout(() => r('still running'), 90_000))]);
    if (code === 'still running') await run.kill9();
    assert.equal(code, 1, run.output());
    const errors = run.output().split('\n').filter((l) => l.startsWith('pg-live-sync: error:'));
    assert.equal(errors.length, 1, run.output());
    assert.ok(errors[0].includes(`spool folder ${theirs} belongs to user id ${NOBODY}, not to you`), errors[0]);
    assert.match(errors[0], /run with --spool-dir set to a folder of your own with mode 0700/);
    assert.equal(await pair.target.query(db, `SELECT count(*)::int AS n FROM big`).then((r) => r.rows[0].n), 1, 'the copy is kept');
    assert.deepEqual(readdirSync(theirs), [path.basename(slotDir)], 'nothing added');
    assert.deepEqual(readdirSync(slotDir), [], 'nothing added');
  });

  it("by default the spool is in the user's cache folder, private (0700 folders, 0600 files), not in the shared temp folder", async () => {
    const sub = 'sp_default';
    const { db, sourceUrl, args } = await database(sub);
    const home = path.join(scratch, 'home');
    mkdirSync(home, { mode: 0o700 });
    const base = path.join(home, '.cache', 'pg-live-sync', 'spool');
    const run = startRun(args, { HOME: home });
    let open: pg.Client | undefined;
    try {
      await streaming(run, db, sub);
      open = await openTransaction(db, base);
      const [file] = spoolFiles(base);
      assert.equal(path.dirname(path.dirname(file)), spoolDirFor(sourceUrl, `pg_live_sync_${sub}`, base));
      for (let dir = path.dirname(file); dir.length >= base.length; dir = path.dirname(dir)) assert.equal(statSync(dir).mode & 0o777, 0o700, dir);
      assert.equal(statSync(file).mode & 0o777, 0o600);
      assert.deepEqual(spoolFiles(path.join(tmpdir(), 'pg-live-sync-spool')).filter((f) => f.includes(`pg_live_sync_${sub}`)), []);
      await open.query('COMMIT');
      await waitCaughtUp(pair, db, sub, 120_000, run);
      assert.ok(await sameContents(pair, db, 'big'));
      assert.deepEqual(spoolFiles(base), [], 'the file is gone at the commit');
    } finally {
      await open?.end();
      assert.equal(await run.stop(), 0, run.output());
    }
    assert.deepEqual(readdirSync(base), [], 'the slot folder is gone when the run stops');
  });

  it("drop removes the spool folders a killed run left (its open transaction's rows)", async () => {
    const sub = 'sp_drop';
    const { db, sourceUrl, targetUrl, args } = await database(sub);
    const base = path.join(scratch, 'dropbase');
    const env = { PG_LIVE_SYNC_SPOOL_DIR: base };
    const run = startRun(args, env);
    let open: pg.Client | undefined;
    try {
      await streaming(run, db, sub);
      open = await openTransaction(db, base);
      await run.kill9();
    } finally {
      await open?.end(); // its transaction rolls back
    }
    assert.ok(spoolFiles(base).length > 0, 'the killed run left its rows on disk');
    const r = await runCli(['drop', '--subscription', sub, '--source', sourceUrl, '--target', targetUrl], env);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, new RegExp(`removed 1 local spool folder of subscription "${sub}".*${spoolDirFor(sourceUrl, `pg_live_sync_${sub}`, base)}`));
    assert.deepEqual(readdirSync(base), []);
  });
});
