/**
 * Bad input to `pg-live-sync run`: each case fails fast with ONE line on stderr naming the problem
 * and the fix, exits non-zero, never shows a password and leaves no replication slot behind.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it, type TestContext } from 'node:test';
import { PASSWORD, freePort, startCluster, type Cluster } from '../harness/cluster';
import { freshDatabases, runCli, sameContents, startCli, startPair, waitAllReady, waitCaughtUp, type Pair } from '../harness/sync';

let pair: Pair;
let replica: Cluster;
before(async () => {
  [pair, replica] = await Promise.all([startPair(), startCluster({ name: 'replica', walLevel: 'replica' })]);
});
after(() => {
  pair?.stop();
  replica?.stop();
});

const WRONG_PASSWORD = 'wrong-pw-4711';
const SCHEMA = `CREATE TABLE t (id int PRIMARY KEY, v text)`;

function runArgs(sourceUrl: string, targetUrl: string, sub: string, ...extra: string[]): string[] {
  return ['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, ...extra];
}

async function slotExists(cluster: Cluster, sub: string, activeOnly = false): Promise<boolean> {
  const r = await cluster.query('postgres', `SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = $1 AND (active OR NOT $2)`, [`pg_live_sync_${sub}`, activeOnly]);
  return r.rows[0].n > 0;
}

/** A database on both clusters with `t` on both, rows and publication `pub` on the source. */
async function setup(prefix: string, schema = SCHEMA, sourceExtra = `INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g; CREATE PUBLICATION pub FOR TABLE t;`) {
  const dbs = await freshDatabases(pair, prefix, schema);
  if (sourceExtra) await pair.source.query(dbs.db, sourceExtra);
  return dbs;
}

/**
 * Runs the CLI and checks the failure contract; returns the one stderr line. `sourceCluster` is
 * where no slot for the subscription may exist afterwards.
 */
async function expectFailure(t: TestContext, args: string[], match: RegExp[], opts: { code?: number; sourceCluster?: Cluster } = {}): Promise<string> {
  const r = await runCli(args, {}, 45_000);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  t.diagnostic(`exit ${r.code} in ${r.ms} ms; stderr: ${r.stderr.trimEnd()}`);
  assert.equal(lines.length, 1, `exactly one stderr line, got:\n${r.stderr}`);
  const line = lines[0];
  assert.match(line, /^pg-live-sync:/);
  assert.equal(r.stdout, '', 'nothing on stdout');
  if (opts.code !== undefined) assert.equal(r.code, opts.code, line);
  else assert.ok(r.code !== 0 && r.code !== null, `non-zero exit, got ${r.code}: ${line}`);
  assert.ok(r.ms < 30_000, `took ${r.ms} ms`);
  for (const secret of [PASSWORD, WRONG_PASSWORD]) assert.ok(!(r.stdout + r.stderr).includes(secret), `output shows a password: ${line}`);
  for (const m of match) assert.match(line, m);
  const sub = args[args.indexOf('--subscription') + 1];
  assert.equal(await slotExists(opts.sourceCluster ?? pair.source, sub), false, 'a replication slot was left on the source');
  return line;
}

/** Runs to ready, optionally streams `change`, compares, and stops cleanly. */
async function runsToReady(db: string, sourceUrl: string, targetUrl: string, sub: string, tables: string[], publication = 'pub', change?: string): Promise<void> {
  const run = startCli(runArgs(sourceUrl, targetUrl, sub, '--publication', publication));
  try {
    await waitAllReady(pair.target, db, sub, tables.length, 90_000);
    for (const table of tables) assert.ok(await sameContents(pair, db, table), `${table} after copy`);
    if (change) {
      await pair.source.query(db, change);
      await waitCaughtUp(pair, db, sub, 90_000);
      for (const table of tables) assert.ok(await sameContents(pair, db, table), `${table} after streaming`);
    }
  } finally {
    assert.equal(await run.stop(), 0, run.output());
  }
}

describe('connection problems', () => {
  it('closed port, on the source and on the target', async (t) => {
    const { db, sourceUrl, targetUrl } = await setup('refused');
    const port = await freePort();
    const closed = `postgres://postgres:${encodeURIComponent(PASSWORD)}@127.0.0.1:${port}/${db}`;
    await expectFailure(t, runArgs(closed, targetUrl, 'refused_src', '--publication', 'pub'), [/cannot connect/, /connection refused/, new RegExp(`127\\.0\\.0\\.1:${port}`), /--source/]);
    await expectFailure(t, runArgs(sourceUrl, closed, 'refused_tgt', '--publication', 'pub'), [/cannot connect/, /connection refused/, /target/, /--target/]);
  });

  it('wrong password, for the source and for the target', async (t) => {
    const { db, sourceUrl, targetUrl } = await setup('wrongpw');
    await expectFailure(t, runArgs(pair.source.url(db, 'postgres', WRONG_PASSWORD), targetUrl, 'wrongpw_src', '--publication', 'pub'),
      [/password authentication failed/, /"postgres"/, /source/, /fix the password/]);
    await expectFailure(t, runArgs(sourceUrl, pair.target.url(db, 'postgres', WRONG_PASSWORD), 'wrongpw_tgt', '--publication', 'pub'),
      [/password authentication failed/, /"postgres"/, /target/, /fix the password/]);
  });
});

describe('source not ready for logical replication', () => {
  it('wal_level replica', async (t) => {
    const { db, targetUrl } = await setup('wal');
    await replica.createDatabase(db);
    await replica.query(db, `${SCHEMA}; CREATE PUBLICATION pub FOR TABLE t;`);
    await expectFailure(t, runArgs(replica.url(db), targetUrl, 'wal', '--publication', 'pub'),
      [/wal_level/, /"replica"/, /ALTER SYSTEM SET wal_level = logical/, /restart/], { sourceCluster: replica });
  });

  it('role without the REPLICATION privilege', async (t) => {
    const { db, targetUrl } = await setup('norepl');
    await pair.source.query(db, `CREATE ROLE "Sync User" LOGIN PASSWORD '${PASSWORD}'; GRANT SELECT ON t TO "Sync User";`);
    await expectFailure(t, runArgs(pair.source.url(db, 'Sync User', PASSWORD), targetUrl, 'norepl', '--publication', 'pub'),
      [/REPLICATION/, /ALTER ROLE "Sync User" WITH REPLICATION/]);
  });

  it('publication missing', async (t) => {
    const { sourceUrl, targetUrl } = await setup('nopub');
    await expectFailure(t, runArgs(sourceUrl, targetUrl, 'nopub', '--publication', 'pub', '--publication', 'no_such_pub'),
      [/"no_such_pub"/, /does not exist/, /CREATE PUBLICATION "?no_such_pub"? FOR TABLE/]);
  });
});

describe('target does not match', () => {
  it('target table missing', async (t) => {
    const { db, sourceUrl, targetUrl } = await setup('notable', '', '');
    await pair.source.query(db, `${SCHEMA}; CREATE PUBLICATION pub FOR TABLE t;`);
    await expectFailure(t, runArgs(sourceUrl, targetUrl, 'notable', '--publication', 'pub'), [/"public"\."t"/, /does not exist/, /create it/]);
  });

  it('target table missing a column', async (t) => {
    const { db, sourceUrl, targetUrl } = await setup('nocol', '', '');
    await pair.source.query(db, `CREATE TABLE t (id int PRIMARY KEY, v text, "Amount €" numeric(10,2)); CREATE PUBLICATION pub FOR TABLE t;`);
    await pair.target.query(db, `CREATE TABLE t (id int PRIMARY KEY, v text)`);
    await expectFailure(t, runArgs(sourceUrl, targetUrl, 'nocol', '--publication', 'pub'),
      [/"Amount €"/, /ALTER TABLE "public"\."t" ADD COLUMN "Amount €" numeric\(10,2\);/]);
  });
});

describe('several problems at once', () => {
  it('run names every failed check, one line each, the same ones check prints', async (t) => {
    const { db, sourceUrl, targetUrl } = await setup('several', `CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE nokey (v int);`,
      `CREATE TABLE only_on_source (id int PRIMARY KEY); CREATE TABLE wider (id int PRIMARY KEY, extra text);
       CREATE PUBLICATION pub FOR TABLE t, nokey, only_on_source, wider;`);
    await pair.target.query(db, `CREATE TABLE wider (id int PRIMARY KEY)`);
    const r = await runCli(runArgs(sourceUrl, targetUrl, 'several', '--publication', 'pub'), {}, 45_000);
    t.diagnostic(`exit ${r.code} in ${r.ms} ms; stderr: ${r.stderr.trimEnd()}`);
    assert.equal(r.code, 1, r.stderr);
    const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
    const errors = lines.filter((l) => l.startsWith('pg-live-sync: error: ')).map((l) => l.slice('pg-live-sync: error: '.length));
    assert.equal(errors.length, 2, r.stderr);
    assert.ok(errors.some((e) => /"public"\."wider" has no column "extra"/.test(e)), r.stderr);
    assert.ok(errors.some((e) => /only_on_source/.test(e)), r.stderr);
    assert.match(lines.at(-1) ?? '', /^pg-live-sync: 2 checks failed/);
    assert.equal(lines.length, 3, r.stderr);
    assert.equal(await slotExists(pair.source, 'several'), false, 'a replication slot was left on the source');
    const check = await runCli(['check', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub']);
    assert.equal(check.code, 1);
    assert.deepEqual(check.stdout.split('\n').filter((l) => l.startsWith('error: ')).map((l) => l.slice('error: '.length)).sort(), [...errors].sort());
  });
});

describe('replica identity', () => {
  /**
   * As PostgreSQL's own subscriber: a table without a usable replica identity is synced (copy,
   * INSERTs, TRUNCATE) with a warning naming the fix; the source itself refuses its UPDATEs and
   * DELETEs while published. The fix from the warning, run on the source, lets them through.
   */
  const fixCase = async (t: TestContext, prefix: string, schema: string, expected: RegExp) => {
    const { db, sourceUrl, targetUrl } = await setup(prefix, schema, `INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g; CREATE PUBLICATION pub FOR TABLE t;`);
    const checked = await runCli(['check', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub']);
    assert.equal(checked.code, 0, checked.stdout + checked.stderr);
    const line = checked.stdout.split('\n').find((l) => /^warning: table "public"\."t" has no usable replica identity/.test(l)) ?? '';
    t.diagnostic(line);
    assert.match(line, /INSERTs and TRUNCATEs are synced, but the source refuses every UPDATE and DELETE/);
    assert.match(line, expected);
    const fix = /on the source run: (ALTER TABLE .*;)$/.exec(line)?.[1];
    assert.ok(fix, `no statement in: ${line}`);

    const run = startCli(runArgs(sourceUrl, targetUrl, prefix, '--publication', 'pub'));
    try {
      await waitAllReady(pair.target, db, prefix, 1, 90_000);
      assert.match(run.output(), /warn.*"public"\."t" has no usable replica identity/);
      await pair.source.query(db, `INSERT INTO t SELECT g, 'new' FROM generate_series(51, 60) g`);
      await assert.rejects(pair.source.query(db, `UPDATE t SET v = 'refused' WHERE id = 1`), /cannot update table "t" because it does not have a replica identity and publishes updates/);
      await waitCaughtUp(pair, db, prefix, 90_000);
      assert.ok(await sameContents(pair, db, 't'), 'copy and streamed inserts');
      await pair.source.query(db, fix);
      await pair.source.query(db, `UPDATE t SET v = 'changed' WHERE id <= 10; DELETE FROM t WHERE id > 40;`);
      await waitCaughtUp(pair, db, prefix, 90_000);
      assert.ok(await sameContents(pair, db, 't'), 'updates and deletes after the fix');
    } finally {
      assert.equal(await run.stop(), 0, run.output());
    }
  };

  it('no primary key: synced with a warning suggesting REPLICA IDENTITY FULL, which then lets updates through', (t) =>
    fixCase(t, 'ident_full', `CREATE TABLE t (id int, v text)`, /ALTER TABLE "public"\."t" REPLICA IDENTITY FULL;$/));

  it('unique index over NOT NULL columns: the warning suggests REPLICA IDENTITY USING INDEX, which then works', (t) =>
    fixCase(t, 'ident_index', `CREATE TABLE t (id int NOT NULL, v text); CREATE UNIQUE INDEX "T Key ü" ON t (id);`,
      /ALTER TABLE "public"\."t" REPLICA IDENTITY USING INDEX "T Key ü";$/));

  it('index name containing a dot is still quoted correctly', (t) =>
    fixCase(t, 'ident_dot', `CREATE TABLE t (id int NOT NULL, v text); CREATE UNIQUE INDEX "t.id_key" ON t (id);`,
      /ALTER TABLE "public"\."t" REPLICA IDENTITY USING INDEX "t\.id_key";$/));

  it('REPLICA IDENTITY NOTHING: synced the same way, with the same warning', (t) =>
    fixCase(t, 'ident_nothing', `CREATE TABLE t (id int, v text); ALTER TABLE t REPLICA IDENTITY NOTHING`, /ALTER TABLE "public"\."t" REPLICA IDENTITY FULL;$/));
});

describe('not bad input', () => {
  it('quoted and Unicode identifiers sync: copy and a streamed insert', async () => {
    const table = `"Sales Ünïcode"."Order ""Items"""`;
    const schema = `CREATE SCHEMA "Sales Ünïcode"; CREATE TABLE ${table} (id int PRIMARY KEY, "Prix €" numeric(10,2), "Naïve ""Note""" text);`;
    const { db, sourceUrl, targetUrl } = await setup('unicode', schema,
      `INSERT INTO ${table} SELECT g, g * 1.5, 'ñ ' || g FROM generate_series(1, 200) g; CREATE PUBLICATION "Pub Ü" FOR TABLE ${table};`);
    await runsToReady(db, sourceUrl, targetUrl, 'unicode', [table], 'Pub Ü',
      `INSERT INTO ${table} VALUES (1000, 9.99, 'streamed €'); UPDATE ${table} SET "Prix €" = 0 WHERE id = 1;`);
  });
});

describe('usage errors', () => {
  it('exit 2 with one line', async (t) => {
    const { sourceUrl, targetUrl } = await setup('usage');
    const cases: [string[], RegExp][] = [
      [runArgs(sourceUrl, targetUrl, 'usage'), /missing --publication/],
      [runArgs(sourceUrl, targetUrl, 'usage', '--publication', 'pub', '--table-map', '{"source":'), /--table-map is not valid JSON/],
      [runArgs(sourceUrl, targetUrl, 'usage', '--publication', 'pub', '--table-map', '{"source":{"table":"x"}}'), /--table-map needs "source" and "target"/],
      [runArgs(sourceUrl, targetUrl, 'usage', '--publication', 'pub', '--copy-data', 'maybe'), /--copy-data takes true or false, not "maybe"/],
      [runArgs(sourceUrl, targetUrl, 'usage', '--publication', 'pub', '--table-sync-workers', '0'), /--table-sync-workers must be/],
      [runArgs(sourceUrl, targetUrl, 'usage', '--publication', 'pub', '--bogus'), /--bogus/],
      [['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', 'Bad-Name'], /subscription name "Bad-Name"/],
    ];
    for (const [args, match] of cases) await expectFailure(t, args, [match, /--help/], { code: 2 });
  });

  it('numbers are decimal digits only, sizes have minimums, names are not empty: exit 2 naming the flag', async (t) => {
    const { sourceUrl, targetUrl } = await setup('strict');
    const run = (...extra: string[]) => runArgs(sourceUrl, targetUrl, 'strict', '--publication', 'pub', ...extra);
    const both = ['--source', sourceUrl, '--target', targetUrl];
    const quoted = (n: string) => `"${n.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}"`;
    const cases: [string[], RegExp][] = [
      // Number() would run these as 10, 16, 1.5 (refused as not whole) and 3.
      ...['1e1', '0x10', '1.5', ' 3', '3 ', '+3', ''].map((n): [string[], RegExp] => [run('--table-sync-workers', n), new RegExp(`--table-sync-workers must be a whole number from 1 to 64, in decimal digits only, not ${quoted(n)}`)]),
      [['verify', '--subscription', 'strict', ...both, '--chunk-rows', '1e3'], /--chunk-rows must be a whole number from 100 to 10000000, in decimal digits only, not "1e3"/],
      // One chunk per 8 KiB page would be a target transaction and a state row per page.
      ...['1', '8kB', '1023KiB'].map((n): [string[], RegExp] => [run('--copy-chunk-size', n), new RegExp(`--copy-chunk-size must be 0 \\(copy each table in one stream\\) or at least 1MiB, not ${quoted(n)}`)]),
      [run('--copy-chunk-size', ' 64MiB'), /--copy-chunk-size takes a size such as 256MiB or 0, not " 64MiB"/],
      // The sizes that are fine get past it to the next flag's error.
      [run('--copy-chunk-size', '1MiB', '--spool-dir', ''), /--spool-dir needs a folder/],
      [run('--copy-chunk-size', '0', '--spool-dir', ''), /--spool-dir needs a folder/],
      [['drop', '--subscription', 'strict', ...both, '--spool-dir', ''], /--spool-dir needs the folder the runs used/],
      [runArgs(sourceUrl, targetUrl, 'strict', '--publication', ''), /--publication needs a publication name, not an empty string/],
      [runArgs(sourceUrl, targetUrl, 'strict', '--publication', 'pub', '--publication', ' '), /--publication needs a publication name/],
      [['check', ...both, '--publication', ''], /--publication needs a publication name/],
      [['create-tables', ...both, '--publication', ''], /--publication needs a publication name/],
      [['sql', 'replica-identity', '--source', sourceUrl, '--publication', ''], /--publication needs a publication name \(leave the flag out for every table\)/],
      [['sql', 'role', '--source', sourceUrl, '--role', 'r', '--schema', ''], /--schema needs a schema name/],
      [['status', '--subscription', 'Bad-Name', '--target', targetUrl], /subscription name "Bad-Name"/],
      [['drop', '--subscription', 'Bad-Name', ...both], /subscription name "Bad-Name"/],
      [['sync-sequences', '--subscription', 'Bad-Name', ...both], /subscription name "Bad-Name"/],
    ];
    for (const [args, match] of cases) await expectFailure(t, args, [match, /--help/], { code: 2 });
  });

  it('sql replica-identity with a publication the source lacks: one line with the fix, exit 1', async (t) => {
    const { sourceUrl } = await setup('ri_nopub');
    await expectFailure(t, ['sql', 'replica-identity', '--source', sourceUrl, '--publication', 'nosuchpub'],
      [/publication "nosuchpub" does not exist on the source .*; fix --publication, or leave it out for every table/], { code: 1 });
    const ok = await runCli(['sql', 'replica-identity', '--source', sourceUrl, '--publication', 'pub']);
    assert.equal(ok.code, 0, ok.stderr);
    assert.match(ok.stdout, /publication "pub"/);
  });

  it('hold-snapshot run by hand says what it is: one line, exit 2', async (t) => {
    // runCli gives it an empty stdin, as a shell with </dev/null does; a terminal gets the same line at once.
    await expectFailure(t, ['hold-snapshot'], [/hold-snapshot is internal: pg-live-sync run starts it .*; copy with pg-live-sync run instead/], { code: 2 });
  });
});

describe('help', () => {
  it("COMMAND --help prints that command's flags and exits 0", async () => {
    const flags: Record<string, string[]> = {
      run: ['--source', '--target', '--publication', '--subscription', '--table-map', '--table-sync-workers', '--copy-data'],
      status: ['--subscription', '--target', '--source', '--json', '--warn-retained-wal'],
      drop: ['--subscription', '--source', '--target'],
      check: ['--source', '--target', '--publication', '--table-map', '--subscription'],
      sql: ['tuning', 'replica-identity', 'role', '--source', '--publication', '--role', '--schema'],
    };
    for (const [command, expected] of Object.entries(flags)) {
      const r = await runCli([command, '--help']);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, '');
      assert.match(r.stdout, new RegExp(`^usage: pg-live-sync ${command} `));
      for (const flag of expected) assert.match(r.stdout, new RegExp(`^  ${flag}\\b|pg-live-sync ${command} ${flag}\\b`, 'm'), `${command} --help lists ${flag}:\n${r.stdout}`);
      for (const other of Object.keys(flags).filter((c) => c !== command)) assert.doesNotMatch(r.stdout, new RegExp(`pg-live-sync ${other}\\b`));
      // Wherever --help stands, and as `help COMMAND`.
      assert.equal((await runCli([command, '--source', 'postgres://u@h/db', '-h'])).stdout, r.stdout);
      assert.equal((await runCli(['help', command])).stdout, r.stdout);
    }
    const all = await runCli(['--help']);
    assert.equal(all.code, 0);
    for (const command of Object.keys(flags)) assert.match(all.stdout, new RegExp(`^  pg-live-sync ${command} `, 'm'));
    assert.match(all.stdout, /COMMAND --help/);
  });
});

describe('concurrent runs', () => {
  it('a second run of the same subscription is refused; the first keeps working', async (t) => {
    const { db, sourceUrl, targetUrl } = await setup('twice');
    const first = startCli(runArgs(sourceUrl, targetUrl, 'twice', '--publication', 'pub'));
    try {
      await waitAllReady(pair.target, db, 'twice', 1, 90_000);
      const r = await runCli(runArgs(sourceUrl, targetUrl, 'twice', '--publication', 'pub'), {}, 45_000);
      t.diagnostic(`exit ${r.code} in ${r.ms} ms; stderr: ${r.stderr.trimEnd()}`);
      const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
      assert.equal(lines.length, 1, r.stderr);
      assert.match(lines[0], /^pg-live-sync:.*"twice".*already running.*stop that run first/);
      assert.ok(r.code !== 0 && r.code !== null && r.ms < 30_000, `exit ${r.code} after ${r.ms} ms`);
      assert.ok(!(r.stdout + r.stderr).includes(PASSWORD));
      assert.equal(first.proc.exitCode, null, 'first run still running');
      assert.equal(await slotExists(pair.source, 'twice', true), true, 'first run still holds its slot');
      const state = await pair.target.query(db, `SELECT last_error FROM _pg_live_sync.subscription WHERE subname = 'twice'`);
      assert.equal(state.rows[0].last_error, null, 'the refused run must not record an error on the running subscription');
      await pair.source.query(db, `INSERT INTO t VALUES (1000, 'after refusal'); UPDATE t SET v = 'x' WHERE id = 1;`);
      await waitCaughtUp(pair, db, 'twice', 90_000);
      assert.ok(await sameContents(pair, db, 't'));
    } finally {
      assert.equal(await first.stop(), 0, first.output());
    }
  });
});

describe('connection strings that do not parse', () => {
  it('a bad port, another scheme, an unencoded / in a password, a non-libpq parameter: exit 2, one line naming the flag and the fix, no password', async (t) => {
    const { sourceUrl, targetUrl } = await setup('badurl');
    const port = pair.source.port;
    const slashed = `postgres://postgres:${PASSWORD}/x@127.0.0.1:${port}/db`;
    const cases: [string[], RegExp[]][] = [
      [runArgs(sourceUrl.replace(`:${port}/`, ':notaport/'), targetUrl, 'badurl', '--publication', 'pub'), [/the port "notaport" in the --source URL is not a port number/]],
      [runArgs(sourceUrl, targetUrl.replace(`:${pair.target.port}/`, ':99999/'), 'badurl', '--publication', 'pub'), [/the port "99999" in the --target URL/]],
      [runArgs(`host=127.0.0.1 port=abc dbname=db user=postgres password=${PASSWORD}`, targetUrl, 'badurl', '--publication', 'pub'), [/the port "abc" in the --source URL/]],
      [runArgs(sourceUrl.replace(/^postgres(ql)?:/, 'mysql:'), targetUrl, 'badurl', '--publication', 'pub'), [/the --source URL is a mysql:\/\/ URL.*write postgresql:\/\//]],
      [runArgs(slashed, targetUrl, 'badurl', '--publication', 'pub'), [/the --source URL does not parse.*percent-encode.*\/ as %2F/]],
      [runArgs(sourceUrl, `${targetUrl}?statement_timeout=150`, 'badurl', '--publication', 'pub'), [/the --target URL has an unknown parameter "statement_timeout".*options=-c name=value/]],
      [['check', '--source', sourceUrl, '--target', targetUrl.replace(`:${pair.target.port}/`, ':x1/'), '--publication', 'pub', '--subscription', 'badurl'], [/the port "x1" in the --target URL/]],
      [['status', '--subscription', 'badurl', '--target', slashed], [/the --target URL does not parse/]],
    ];
    for (const [args, match] of cases) {
      const line = await expectFailure(t, args, [...match, /--help/], { code: 2 });
      assert.ok(!line.includes('/x@') && !line.includes(`${PASSWORD}/`), line);
    }
  });
});
