/**
 * What a connection string means to the engine, in the CLI and the extension alike: libpq's
 * sslmode (prefer by default, PGSSLMODE, require without verifying, verify-ca and verify-full
 * checking) against a server with TLS and one without; a URL's `options` merged under the
 * engine's own session settings; libpq's keyword/value strings, whose password never shows.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '../../src/engine/connection';
import { SyncError } from '../../src/engine/errors';
import { connectionUrl } from '../../src/extension/connectionModel';
import { PASSWORD, SUPERUSER, freePort, startCluster, type Cluster } from '../harness/cluster';
import {
  finish, freshDatabases, runCli, tableFingerprint, trackRuns, waitAllReady, waitCaughtUp, whileAlive, type Pair,
} from '../harness/sync';

const cli = trackRuns();
let pair: Pair;
let tlsSource: Cluster;
let plainTarget: Cluster;
before(async () => {
  [tlsSource, plainTarget] = await Promise.all([startCluster({ name: 'tls-source', ssl: true }), startCluster({ name: 'plain-target' })]);
  pair = { source: tlsSource, target: plainTarget, stop: () => undefined };
});
after(() => {
  tlsSource?.stop();
  plainTarget?.stop();
});

const withParams = (url: string, params: Record<string, string>) => `${url}?${new URLSearchParams(params).toString()}`;

/** The engine's sessions on `cluster` (its application names all start pg_live_sync) and whether each uses TLS. */
async function engineSessions(cluster: Cluster): Promise<{ app: string; ssl: boolean }[]> {
  const r = await cluster.query(
    'postgres',
    `SELECT a.application_name AS app, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'pg_live_sync%' ORDER BY 1`,
  );
  return r.rows as { app: string; ssl: boolean }[];
}

/** Connects as the engine does and asks the server whether this session is encrypted. */
async function sessionUsesTls(url: string): Promise<boolean> {
  const client = await connect({ url, role: 'source' });
  try {
    return (await client.query('SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()')).rows[0].ssl === true;
  } finally {
    await client.end();
  }
}

const SCHEMA = `CREATE TABLE t (id int PRIMARY KEY, at timestamptz, d date, f float8, iv interval)`;
const ROWS = (from: number, to: number) => `INSERT INTO t SELECT g, '2025-03-04 05:06:07.123456+02'::timestamptz + g * interval '1 day 1 microsecond',
  date '2025-03-04' + g, 0.1 + 0.2 + g, g * interval '1 day 2 hours 3.000004 seconds' FROM generate_series(${from}, ${to}) g`;
/** The published columns only: the target may have more. */
const PUBLISHED = '(SELECT id, at, d, f, iv FROM t)';

describe('sslmode', () => {
  it('without sslmode: TLS where the server offers it (pg_stat_ssl), plaintext where it does not (prefer); PGSSLMODE=disable is honoured', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'prefer', SCHEMA);
    await tlsSource.query(db, `${ROWS(1, 50)}; CREATE PUBLICATION pub FOR TABLE t`);
    const args = ['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', 'prefer_sub'];
    const run = cli(args);
    try {
      await waitAllReady(plainTarget, db, 'prefer_sub', 1);
      await whileAlive(run, 'the stream session on the source', async () => (await engineSessions(tlsSource)).some((s) => s.app === 'pg_live_sync_stream'));
      const onSource = await engineSessions(tlsSource);
      assert.ok(onSource.every((s) => s.ssl), `every engine session on the TLS source is encrypted: ${JSON.stringify(onSource)}`);
      const onTarget = await engineSessions(plainTarget);
      assert.ok(onTarget.length > 0 && onTarget.every((s) => !s.ssl), `the engine reached the plaintext target: ${JSON.stringify(onTarget)}`);
      await tlsSource.query(db, ROWS(51, 60));
      await waitCaughtUp(pair, db, 'prefer_sub', 60_000, run);
      assert.deepEqual(await tableFingerprint(plainTarget, db, PUBLISHED), await tableFingerprint(tlsSource, db, PUBLISHED));
    } finally {
      assert.equal(await finish(run), 0, run.output());
    }

    const plain = cli(args, { PGSSLMODE: 'disable' });
    try {
      await whileAlive(plain, 'the stream session on the source', async () => (await engineSessions(tlsSource)).some((s) => s.app === 'pg_live_sync_stream'));
      const onSource = await engineSessions(tlsSource);
      assert.ok(onSource.every((s) => !s.ssl), `PGSSLMODE=disable: no engine session uses TLS: ${JSON.stringify(onSource)}`);
    } finally {
      assert.equal(await finish(plain), 0, plain.output());
    }
  });

  it('require encrypts without checking the self-signed certificate, the same from a CLI URL and an extension connection; verify-ca checks the CA', async () => {
    const url = tlsSource.url();
    assert.equal(await sessionUsesTls(withParams(url, { sslmode: 'require' })), true);
    const fromExtension = connectionUrl({ name: 'src', host: '127.0.0.1', port: tlsSource.port, user: SUPERUSER, database: 'postgres', sslmode: 'require' }, PASSWORD);
    assert.equal(await sessionUsesTls(fromExtension), true);
    assert.equal(await sessionUsesTls(withParams(url, { sslmode: 'verify-ca', sslrootcert: tlsSource.certFile! })), true);
    assert.equal(await sessionUsesTls(withParams(url, { sslmode: 'disable' })), false);
    assert.equal(await sessionUsesTls(url), true, 'prefer, the default');

    const r = await runCli(['sql', 'tuning', '--source', withParams(url, { sslmode: 'require' })]);
    assert.equal(r.code, 0, r.stderr);
  });

  it('verify-full and verify-ca refuse what they cannot verify, require refuses a server without TLS: one line with the fix', async () => {
    const url = tlsSource.url();
    const cases: [string, RegExp][] = [
      [withParams(url, { sslmode: 'verify-full' }), /TLS certificate cannot be verified under sslmode=verify-full .*self-signed.*; set sslrootcert .* or use sslmode=require/],
      [withParams(url, { sslmode: 'verify-full', sslrootcert: tlsSource.certFile! }), /TLS certificate is not for that host .*127\.0\.0\.1.*; connect by a name the certificate holds, or use sslmode=verify-ca/],
      [withParams(url, { sslmode: 'verify-ca' }), /sslmode=verify-ca needs the CA certificate .*sslrootcert/],
      [withParams(plainTarget.url(), { sslmode: 'require' }), /does not accept TLS, which sslmode=require demands; turn ssl on .* or set sslmode=prefer/],
    ];
    for (const [source, expected] of cases) {
      const r = await runCli(['sql', 'tuning', '--source', source]);
      const lines = r.stderr.trim().split('\n');
      assert.equal(lines.length, 1, r.stderr);
      assert.notEqual(r.code, 0);
      assert.match(lines[0], expected);
      assert.ok(!r.stderr.includes(PASSWORD), r.stderr);
    }
    await assert.rejects(connect({ url: withParams(url, { sslmode: 'verify-full' }), role: 'source' }), (e: unknown) => e instanceof SyncError && e.code === 'tls');
  });
});

describe('a URL\'s options', () => {
  it('keep the user\'s settings in every engine session, while the engine\'s own (TimeZone, DateStyle, extra_float_digits, ...) win: values stay exact', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'options', SCHEMA);
    // Extra target columns are filled by their defaults in the session that writes the row: the copy's and the apply's.
    await plainTarget.query(db, `ALTER TABLE t ADD COLUMN marker text DEFAULT current_setting('pgls.marker', true), ADD COLUMN tz text DEFAULT current_setting('TimeZone'),
      ADD COLUMN style text DEFAULT current_setting('DateStyle') || ' ' || current_setting('extra_float_digits')`);
    await tlsSource.query(db, `${ROWS(1, 30)}; CREATE PUBLICATION pub FOR TABLE t`);
    const options = '-c pgls.marker=from-user -c TimeZone=America/New_York --DateStyle=SQL,DMY -cextra_float_digits=-3 -c IntervalStyle=sql_standard -c session_replication_role=origin';
    const run = cli(['run', '--source', withParams(sourceUrl, { options }), '--target', withParams(targetUrl, { options }), '--publication', 'pub', '--subscription', 'options_sub']);
    try {
      await waitAllReady(plainTarget, db, 'options_sub', 1);
      await tlsSource.query(db, ROWS(31, 40));
      await waitCaughtUp(pair, db, 'options_sub', 60_000, run);
      assert.deepEqual(await tableFingerprint(plainTarget, db, PUBLISHED), await tableFingerprint(tlsSource, db, PUBLISHED), 'timestamps, dates, floats and intervals exact');
      const seen = await plainTarget.query(db, `SELECT marker, tz, style, count(*)::int AS n FROM t GROUP BY 1, 2, 3`);
      assert.deepEqual(seen.rows, [{ marker: 'from-user', tz: 'UTC', style: 'ISO, MDY 3', n: 40 }], 'copied and streamed rows were written in sessions with the user\'s marker and the engine\'s settings');
    } finally {
      assert.equal(await finish(run), 0, run.output());
    }
  });
});

describe('keyword/value connection strings', () => {
  const SECRET = 'kw secret\'pw';
  const keywords = (c: Cluster, db: string, password = PASSWORD) => `host=127.0.0.1 port=${c.port} dbname='${db}' user=${SUPERUSER} password='${password.replace(/[\\']/g, '\\$&')}'`;

  it('connect as libpq reads them', async () => {
    const { db } = await freshDatabases(pair, 'keywords', SCHEMA);
    await tlsSource.query(db, 'CREATE PUBLICATION pub FOR TABLE t');
    const r = await runCli(['check', '--source', keywords(tlsSource, db), '--target', keywords(plainTarget, db), '--publication', 'pub']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /ready to run/);
  });

  it('a wrong host, port or password in run and check: one line naming host:port/database, never the password', async () => {
    const { db } = await freshDatabases(pair, 'keywords_bad', SCHEMA);
    const closed = await freePort();
    const bad = [
      [`host=127.0.0.1 port=${closed} dbname=${db} user=${SUPERUSER} password='${SECRET.replace("'", "\\'")}'`, new RegExp(`127\\.0\\.0\\.1:${closed}/${db}: connection refused`)],
      [`host=no-such-host.invalid dbname=${db} password='${SECRET.replace("'", "\\'")}' user=${SUPERUSER}`, new RegExp(`host of no-such-host\\.invalid:5432/${db} not found`)],
      [keywords(tlsSource, db, SECRET), new RegExp(`password authentication failed for user "${SUPERUSER}" on the source 127\\.0\\.0\\.1:${tlsSource.port}/${db}`)],
    ] as const;
    for (const [source, expected] of bad) {
      for (const command of [['check'], ['run', '--subscription', 'kw_sub']]) {
        const r = await runCli([...command, '--source', source, '--target', keywords(plainTarget, db), '--publication', 'pub'], {}, 30_000);
        const lines = r.stderr.trim().split('\n');
        assert.equal(lines.length, 1, r.stderr);
        assert.equal(r.code, 1, r.stderr);
        assert.match(lines[0], expected);
        for (const secret of [SECRET, 'kw secret', "secret'pw", PASSWORD]) assert.ok(!(r.stdout + r.stderr).includes(secret), `${command[0]} shows a password: ${r.stderr}`);
      }
    }
  });
});

describe('URL parameters and the engine\'s sessions', () => {
  it('application_name in the URLs does not rename the engine\'s sessions, nor replication make them walsenders; the server keeps them alive with keepalives', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'appname', SCHEMA);
    await tlsSource.query(db, `${ROWS(1, 20)}; CREATE PUBLICATION pub FOR TABLE t`);
    const params = { application_name: 'mine' };
    const run = cli(['run', '--source', withParams(sourceUrl, params), '--target', withParams(targetUrl, params), '--publication', 'pub', '--subscription', 'appname_sub']);
    try {
      await waitAllReady(plainTarget, db, 'appname_sub', 1);
      await whileAlive(run, 'the stream session on the source', async () => (await engineSessions(tlsSource)).some((s) => s.app === 'pg_live_sync_stream'));
      for (const cluster of [tlsSource, plainTarget]) {
        const named = await cluster.query(db, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name = 'mine'`, [db]);
        assert.equal(named.rows[0].n, 0, 'no engine session took the URL\'s application_name');
      }
      assert.ok((await engineSessions(plainTarget)).some((s) => s.app === 'pg_live_sync'), 'the main target session keeps its name, which the run lock and drop look for');
      await tlsSource.query(db, ROWS(21, 30));
      await waitCaughtUp(pair, db, 'appname_sub', 60_000, run);
      assert.deepEqual(await tableFingerprint(plainTarget, db, PUBLISHED), await tableFingerprint(tlsSource, db, PUBLISHED));
    } finally {
      assert.equal(await finish(run), 0, run.output());
    }
    const client = await connect({ url: withParams(plainTarget.url(db), { options: '-c tcp_keepalives_count=4', replication: 'database' }), role: 'target' });
    try {
      // A replication session would refuse parameters (the extended query protocol).
      assert.equal((await client.query('SELECT $1::int AS one', [1])).rows[0].one, 1);
      const r = await client.query(`SELECT current_setting('tcp_keepalives_idle') AS idle, current_setting('tcp_keepalives_interval') AS intvl, current_setting('tcp_keepalives_count') AS cnt`);
      assert.deepEqual(r.rows[0], { idle: '30', intvl: '10', cnt: '4' }, 'our keepalive defaults, the user\'s options winning');
    } finally {
      await client.end();
    }
  });

  it('statement_timeout in a URL is refused before anything starts (exit 2), instead of failing every copy', async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'stmt_timeout', SCHEMA);
    await tlsSource.query(db, `${ROWS(1, 20)}; CREATE PUBLICATION pub FOR TABLE t`);
    const r = await runCli(['run', '--source', sourceUrl, '--target', withParams(targetUrl, { statement_timeout: '150' }), '--publication', 'pub', '--subscription', 'stmt_sub'], {}, 30_000);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr.trim(), /^pg-live-sync: the --target URL has an unknown parameter "statement_timeout"; .*options=-c name=value.*; run pg-live-sync run --help for usage$/);
    const slots = await tlsSource.query(db, `SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = 'pg_live_sync_stmt_sub'`);
    assert.equal(slots.rows[0].n, 0);
  });
});
