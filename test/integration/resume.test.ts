/**
 * Resuming from anywhere, against the real CLI and real PostgreSQL 15 clusters: kill -9 at random
 * points (slot creation and copy, between copy and streaming, during apply) under a concurrent
 * workload, restarting each time, then an exact comparison; a copy cut short restarts cleanly;
 * and `check` (every finding, one line each) with `run` refusing on a fatal one.
 * One pair of clusters for the file, one database per test.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startProxy } from '../harness/proxy';
import {
  alive, commitLoop, finish, freshDatabases, rnd, runCli, sameContents, sleep, startPair, tableStates, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor,
  whileAlive, WORKLOAD_SCHEMA, WORKLOAD_SEED, workloadTxn, type CliRun, type Pair,
} from '../harness/sync';

let pair: Pair;
const cli = trackRuns();
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

const copiedTables = (output: string) => [...output.matchAll(/copied "public"\."(\w+)"/g)].map((m) => m[1]);

describe('resume anywhere', () => {
  it('kill -9 at random points (copy, handover to streaming, apply) x12 under a workload: exact, ready tables never recopied', { timeout: 420_000 }, async (t) => {
    const sub = 'resume_any';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `${WORKLOAD_SCHEMA} CREATE TABLE big (id bigint PRIMARY KEY, v bigint, pad text);`);
    await pair.source.query(db, `${WORKLOAD_SEED}
      INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(1, 200000) g;
      CREATE PUBLICATION pub FOR TABLE accounts, ledger, big;`);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub];
    const load = commitLoop(sourceUrl, (i) => {
      const [r1, r2] = [rnd(200_000), rnd(200_000)];
      return workloadTxn(i, {
        rows: 20,
        modulus: 97,
        extra: `UPDATE big SET v = v + 1 WHERE id BETWEEN ${r1} AND ${r1 + 20};
          INSERT INTO big VALUES (1000000 + ${i}, ${i}, 'new');
          DELETE FROM big WHERE id = ${r2};`,
      });
    });
    const appliedLsn = async () => (await pair.target.query(db, `SELECT applied_lsn::text AS l FROM _pg_live_sync.subscription WHERE subname = $1`, [sub]).catch(() => null))?.rows[0]?.l ?? null;
    // start: right after start (slot creation, copy); copied: right after a table's copy (or,
    // with nothing left to copy, once streaming starts); streaming: as streaming starts;
    // apply: a random moment after the applied position moves.
    const plan = ['start', 'copied', 'start', 'streaming', 'apply', 'start', 'copied', 'apply', 'streaming', 'apply', 'start', 'apply'] as const;
    const history: { kind: string; before: Record<string, string>; copied: string[]; ms: number }[] = [];
    let stopped = false;
    let run: CliRun | null = null;
    try {
      for (const kind of plan) {
        const before = await tableStates(pair.target, db, sub).catch(() => ({}));
        const started = Date.now();
        const current = (run = cli(args));
        if (kind === 'start') await sleep(Math.random() * 1500);
        else if (kind === 'copied') {
          // Right after a table's copy commits (f), before it is handed to the stream; with
          // nothing left to copy, as streaming starts.
          const needsCopy = Object.keys(before).length === 0 || Object.values(before).some((s) => s === 'i' || s === 'd');
          const re = needsCopy ? /copied "public"/ : /streaming from/;
          await whileAlive(current, `${re}`, async () => re.test(current.output()), 120_000, 5);
        }
        else if (kind === 'streaming') await whileAlive(current, 'streaming', async () => /streaming from/.test(current.output()), 120_000, 5);
        else {
          const from = await appliedLsn();
          await whileAlive(current, 'the applied position to move', async () => (await appliedLsn()) !== from, 120_000);
          await sleep(Math.random() * 600);
        }
        assert.ok(alive(current), `run ${history.length + 1} (${kind}) exited by itself (code ${current.proc.exitCode}):\n${tail(current.output())}`);
        await current.kill9();
        history.push({ kind, before, copied: copiedTables(current.output()), ms: Date.now() - started });
      }
      const before = await tableStates(pair.target, db, sub);
      const last = (run = cli(args));
      await waitAllReady(pair.target, db, sub, 3, 180_000).catch((err) => assert.fail(`${err}\n${tail(last.output())}`));
      t.diagnostic(`workload: ${await load.stop()} transactions`);
      stopped = true;
      await waitCaughtUp(pair, db, sub, 180_000);
      for (const table of ['accounts', 'ledger', 'big']) assert.ok(await sameContents(pair, db, table), `${table} matches`);
      assert.equal(await finish(last), 0, tail(last.output()));
      history.push({ kind: 'final', before, copied: copiedTables(last.output()), ms: 0 });
      for (const [n, h] of history.entries()) {
        t.diagnostic(`run ${n + 1} ${h.kind} after ${h.ms} ms: before ${JSON.stringify(h.before)}, copied [${h.copied.join(', ')}]`);
        const recopied = h.copied.filter((table) => h.before[`public.${table}`] === 'r');
        assert.deepEqual(recopied, [], `run ${n + 1} copied tables that were already ready`);
      }
      assert.ok(history.some((h) => h.copied.length > 0), 'some run copied');
      assert.ok(history.filter((h) => h.kind !== 'final').length >= 10);
    } finally {
      if (!stopped) await load.stop().catch(() => undefined);
      if (run) await finish(run);
    }
  });

  it('a copy cut short by kill -9 restarts cleanly: junk rows gone, no duplicates', { timeout: 240_000 }, async () => {
    const sub = 'resume_copy';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TABLE big (id bigint PRIMARY KEY, v bigint, pad text); CREATE TABLE small (id int PRIMARY KEY);`);
    await pair.source.query(db, `INSERT INTO big SELECT g, g, md5(g::text) FROM generate_series(1, 300000) g;
      INSERT INTO small SELECT generate_series(1, 10); CREATE PUBLICATION pub FOR TABLE big, small;`);
    await pair.target.query(db, `INSERT INTO big SELECT g, -1, 'junk' FROM generate_series(1, 1000) g;
      INSERT INTO big SELECT g, -1, 'junk' FROM generate_series(5000001, 5000100) g;`);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub];
    const first = cli(args);
    try {
      await whileAlive(first, 'big copying', async () => (await tableStates(pair.target, db, sub).catch(() => ({} as Record<string, string>)))['public.big'] === 'd', 120_000);
      await first.kill9();
    } finally {
      await finish(first);
    }
    const junk = await pair.target.query(db, `SELECT count(*)::int AS n, count(*) FILTER (WHERE pad = 'junk')::int AS junk FROM big`);
    assert.deepEqual(junk.rows[0], { n: 1100, junk: 1100 }, 'the interrupted copy left nothing behind');
    assert.equal((await tableStates(pair.target, db, sub))['public.big'], 'd');

    await pair.source.query(db, `UPDATE big SET v = 0 WHERE id <= 100; DELETE FROM big WHERE id BETWEEN 200 AND 300; INSERT INTO big VALUES (400000, 1, 'late');`);
    const second = cli(args);
    try {
      // Handed over to the stream (s or r); the writes below then take it to r.
      await whileAlive(second, 'both tables handed over', async () => {
        const states = Object.values(await tableStates(pair.target, db, sub));
        return states.length === 2 && states.every((s) => s === 's' || s === 'r');
      }, 180_000, 50);
      await pair.source.query(db, `UPDATE big SET v = 1 WHERE id BETWEEN 500 AND 510; INSERT INTO small VALUES (11);`);
      await waitCaughtUp(pair, db, sub, 120_000);
      assert.deepEqual(await tableStates(pair.target, db, sub), { 'public.big': 'r', 'public.small': 'r' });
      assert.ok(await sameContents(pair, db, 'big'), 'big matches');
      assert.ok(await sameContents(pair, db, 'small'), 'small matches');
      const left = await pair.target.query(db, `SELECT count(*)::int AS n FROM big WHERE pad = 'junk'`);
      assert.equal(left.rows[0].n, 0);
      assert.equal(await finish(second), 0, tail(second.output()));
    } finally {
      await finish(second);
    }
  });
});

describe('check', () => {
  const lines = (out: string) => out.split('\n').filter((l) => l.length > 0);
  async function check(sourceUrl: string, targetUrl: string, ...extra: string[]) {
    const r = await runCli(['check', '--source', sourceUrl, '--target', targetUrl, ...extra]);
    const out = lines(r.stdout);
    assert.match(out.at(-1) ?? '', /^check: \d+ tables?, \d+ errors?, \d+ warnings?/, r.stdout + r.stderr);
    for (const l of out.slice(0, -1)) assert.match(l, /^(error|warning): /);
    return { ...r, out };
  }

  it('--create-tables: a missing target table is one run would create, not an error', { timeout: 120_000 }, async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'chk_create');
    await pair.source.query(db, `CREATE TABLE made_later (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR TABLE made_later;`);
    const plain = await check(sourceUrl, targetUrl, '--publication', 'pub');
    assert.equal(plain.code, 1, plain.stdout);
    assert.ok(plain.out.some((l) => /^error: target table "public"\."made_later" .*does not exist.*--create-tables/.test(l)), plain.stdout);
    const create = await check(sourceUrl, targetUrl, '--publication', 'pub', '--create-tables');
    assert.equal(create.code, 0, create.stdout + create.stderr);
    assert.ok(create.out.some((l) => /^warning: target table "public"\."made_later" .*does not exist on the target .* yet; run --create-tables creates it/.test(l)), create.stdout);
    const tables = await pair.target.query(db, `SELECT count(*)::int AS n FROM pg_tables WHERE tablename = 'made_later'`);
    assert.equal(tables.rows[0].n, 0, 'check created a table');
  });

  it('all well: exit 0, ready to run; wal_sender_timeout = 0 is a warning; a slot in use is an error', { timeout: 180_000 }, async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'chk_ok', `CREATE TABLE ok1 (id int PRIMARY KEY, v text)`);
    await pair.source.query(db, `INSERT INTO ok1 SELECT g, 'v' FROM generate_series(1, 10) g; CREATE PUBLICATION pub FOR TABLE ok1;`);
    const ok = await check(sourceUrl, targetUrl, '--publication', 'pub');
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.out.at(-1)!, /^check: 1 table, 0 errors, \d+ warnings?; ready to run$/);
    assert.ok(!ok.out.some((l) => /pooler/.test(l)), ok.stdout);

    // Through something that answers on another port than PostgreSQL's own (a pooler, say).
    const proxy = await startProxy(pair.source.port);
    try {
      const pooled = await check(sourceUrl.replace(`:${pair.source.port}/`, `:${proxy.port}/`), targetUrl, '--publication', 'pub');
      assert.ok(pooled.out.some((l) => new RegExp(`^warning: the source URL uses port ${proxy.port} but PostgreSQL there listens on ${pair.source.port}.*pooler`).test(l)), pooled.stdout);
    } finally {
      await proxy.close();
    }

    const setTimeoutTo = async (value: string | null, shows: string) => {
      await pair.source.query('postgres', value === null ? 'ALTER SYSTEM RESET wal_sender_timeout' : `ALTER SYSTEM SET wal_sender_timeout = ${value}`);
      await pair.source.query('postgres', 'SELECT pg_reload_conf()');
      await waitFor(`wal_sender_timeout ${shows}`, async () => (await pair.source.query('postgres', 'SHOW wal_sender_timeout')).rows[0].wal_sender_timeout === shows);
    };
    try {
      await setTimeoutTo('0', '0');
      const zero = await check(sourceUrl, targetUrl, '--publication', 'pub');
      assert.equal(zero.code, 0, zero.stdout);
      assert.ok(zero.out.some((l) => /^warning: wal_sender_timeout is 0\b.*ALTER SYSTEM SET wal_sender_timeout/.test(l)), zero.stdout);
    } finally {
      await setTimeoutTo(null, '1min');
    }

    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', 'chk_busy']);
    try {
      await waitAllReady(pair.target, db, 'chk_busy', 1, 120_000);
      const busy = await check(sourceUrl, targetUrl, '--publication', 'pub', '--subscription', 'chk_busy');
      assert.equal(busy.code, 1, busy.stdout);
      assert.ok(busy.out.some((l) => /^error: subscription "chk_busy" is already running.*stop that run/.test(l)), busy.stdout);
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      await finish(run);
    }
  });

  it('every problem found, one line each with its fix; run refuses naming every error, creating no slot', { timeout: 180_000 }, async (t) => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'chk_bad');
    await pair.source.query(db, `CREATE EXTENSION citext;
      CREATE TABLE noident (id int, v int); CREATE TABLE missing_t (id int PRIMARY KEY);
      CREATE TABLE missing_col (id int PRIMARY KEY, v int, extra text); CREATE TABLE mistyped (id int PRIMARY KEY, v bigint);
      CREATE TABLE notempty (id int PRIMARY KEY); CREATE TABLE ext_t (id int PRIMARY KEY, c citext); CREATE TABLE secret (id int PRIMARY KEY);
      CREATE PUBLICATION pub_bad FOR TABLE noident, missing_t, missing_col, mistyped, notempty, ext_t;
      CREATE PUBLICATION pub_sel FOR TABLE secret, notempty;
      CREATE ROLE pgls_limited LOGIN REPLICATION PASSWORD 'limited-pw'; GRANT SELECT ON notempty TO pgls_limited;`);
    await pair.target.query(db, `CREATE TABLE noident (id int, v int); CREATE TABLE missing_col (id int PRIMARY KEY, v int);
      CREATE TABLE mistyped (id int PRIMARY KEY, v int); CREATE TABLE notempty (id int PRIMARY KEY); INSERT INTO notempty VALUES (1);
      CREATE TABLE ext_t (id int PRIMARY KEY, c text); CREATE TABLE secret (id int PRIMARY KEY);`);

    const bad = await check(sourceUrl, targetUrl, '--publication', 'pub_bad');
    t.diagnostic(bad.stdout);
    assert.equal(bad.code, 1, bad.stdout);
    const has = (re: RegExp) => assert.ok(bad.out.some((l) => re.test(l)), `no line matches ${re}:\n${bad.stdout}`);
    has(/^warning: table "public"\."noident" has no usable replica identity: its INSERTs and TRUNCATEs are synced.*ALTER TABLE "public"\."noident" REPLICA IDENTITY FULL;/);
    has(/^error: target table "public"\."missing_t" .*does not exist on the target/);
    has(/^error: target table "public"\."missing_col" has no column "extra".*ALTER TABLE "public"\."missing_col" ADD COLUMN "extra" text;/);
    has(/^warning: column "v" is bigint on the source but integer on the target "public"\."mistyped"/);
    has(/^warning: target table "public"\."notempty" is not empty/);
    has(/^error: .*"public"\."ext_t".*citext.*CREATE EXTENSION "citext";/);
    const errors = bad.out.filter((l) => l.startsWith('error: ')).length;
    assert.equal(errors, 3, bad.stdout);
    assert.match(bad.out.at(-1)!, new RegExp(`^check: 6 tables, ${errors} errors, ${bad.out.length - 1 - errors} warnings$`));

    const limited = pair.source.url(db, 'pgls_limited', 'limited-pw');
    const sel = await check(limited, targetUrl, '--publication', 'pub_sel');
    assert.equal(sel.code, 1, sel.stdout);
    assert.ok(sel.out.some((l) => /^error: role "pgls_limited" cannot SELECT from "public"\."secret".*GRANT SELECT ON "public"\."secret" TO "?pgls_limited"?;/.test(l)), sel.stdout);
    assert.ok(!sel.out.some((l) => l.includes('"public"."notempty"') && l.startsWith('error: ')), sel.stdout);

    const refused = await runCli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub_bad', '--subscription', 'chk_refuse']);
    assert.equal(refused.code, 1, refused.stderr);
    const errLines = lines(refused.stderr);
    // The same errors check printed, one line each, then how many.
    const checkErrors = bad.out.filter((l) => l.startsWith('error: ')).map((l) => l.slice('error: '.length)).sort();
    assert.deepEqual(errLines.slice(0, -1).map((l) => l.replace(/^pg-live-sync: error: /, '')).sort(), checkErrors, refused.stderr);
    assert.match(errLines.at(-1)!, /^pg-live-sync: 3 checks failed/);
    assert.ok(!refused.stderr.includes('sync-test-pw'));
    const slots = await pair.source.query(db, `SELECT slot_name FROM pg_replication_slots WHERE database = $1`, [db]);
    assert.deepEqual(slots.rows, [], 'run created no slot');
  });
});
