/** Connection strings as the engine reads them, without a server: keywords, options, redaction. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { connect, describeEndpoint, endpointAddress, parseConninfo, parseUrl, sessionOptions } from '../../src/engine/connection';
import { errorMessage, redactPasswords, SyncError } from '../../src/engine/errors';

describe('keyword/value connection strings', () => {
  it('parse as libpq does: spaces around =, quoted values with escapes, backslashes in bare values', () => {
    assert.deepEqual(parseConninfo(`host = db.example.com port=6432 dbname='my db' user=repl password='it\\'s a \\\\secret' options=-c\\ work_mem=8MB`), {
      host: 'db.example.com', port: '6432', dbname: 'my db', user: 'repl', password: "it's a \\secret", options: '-c work_mem=8MB',
    });
    assert.deepEqual(parseConninfo('  '), {});
  });

  it('reject a missing =, an open quote and unknown keywords with a usage error that never shows the password', () => {
    for (const bad of ['host=h password=hunter2 dbname', "host=h password='hunter2", 'host=h pasword=hunter2']) {
      assert.throws(() => parseConninfo(bad), (e: unknown) => e instanceof SyncError && e.code === 'usage' && !e.message.includes('hunter2'), bad);
    }
  });

  it('describe as host:port/database, like URLs', () => {
    assert.equal(describeEndpoint('host=db.example.com port=6432 dbname=app user=repl password=hunter2'), 'db.example.com:6432/app');
    assert.equal(describeEndpoint('postgres://repl:hunter2@db.example.com:6432/app?sslmode=require&options=-c%20x%3D1'), 'db.example.com:6432/app');
    assert.deepEqual(endpointAddress('hostaddr=10.0.0.5 port=7000 dbname=app'), { host: '10.0.0.5', port: 7000 });
  });
});

describe('session options', () => {
  it('keep the user\'s settings and put the engine\'s last, dropping the user\'s setting of any GUC the engine owns, in every spelling', () => {
    const merged = sessionOptions('-c work_mem=8MB -cTimeZone=Asia/Tokyo --datestyle=German -c search_path=a\\ b -c Extra_Float_Digits=0 --session-replication-role=replica -c statement_timeout=5s');
    assert.equal(
      merged,
      '-c work_mem=8MB -c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex -c statement_timeout=0 -c idle_in_transaction_session_timeout=0 -c synchronous_commit=on -c search_path=pg_catalog,pg_temp',
    );
    assert.equal(sessionOptions(''), sessionOptions('   '));
  });

  it('pin search_path and synchronous_commit in engine sessions; a session running the user\'s own SQL keeps their search_path', () => {
    assert.match(sessionOptions('-c synchronous_commit=off'), /^-c DateStyle=ISO .* -c synchronous_commit=on -c search_path=pg_catalog,pg_temp$/);
    assert.equal(
      sessionOptions('-c search_path=app,public -c synchronous_commit=off', true),
      '-c search_path=app,public -c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC -c extra_float_digits=3 -c bytea_output=hex -c statement_timeout=0 -c idle_in_transaction_session_timeout=0 -c synchronous_commit=on',
    );
  });
});

describe('redactPasswords', () => {
  it('masks URL userinfo passwords, password parameters and keywords, quoted or bare', () => {
    const text = `cannot use postgres://repl:hunter2@h:5432/d?password=p2&sslmode=require or host=h password='sec ret\\'x' dbname=d or PASSWORD = bare3`;
    const out = redactPasswords(text);
    for (const secret of ['hunter2', 'p2&', 'sec ret', "ret\\'x", 'bare3']) assert.ok(!out.includes(secret), `${secret} in ${out}`);
    assert.match(out, /postgres:\/\/repl:\*\*\*@h:5432\/d\?password=\*\*\*&sslmode=require/);
    assert.match(out, /host=h password=\*\*\* dbname=d/);
  });

  it('is applied to every SyncError and errorMessage', () => {
    assert.equal(new SyncError('bad host=h password=hunter2').message, 'bad host=h password=***');
    assert.equal(errorMessage(new Error('x postgresql://u:hunter2@h/d')), 'x postgresql://u:***@h/d');
    assert.equal(errorMessage('password authentication failed for user "u"'), 'password authentication failed for user "u"');
  });
});

describe('connection strings that do not parse', () => {
  const SECRET = 'pa/ss?w0rd';
  /** What connect makes of `url` as the --source, before any network: the usage error's message. */
  async function refused(url: string, env: Record<string, string> = {}): Promise<string> {
    const saved = { ...process.env };
    Object.assign(process.env, env);
    try {
      await connect({ url, role: 'source' });
    } catch (err) {
      assert.ok(err instanceof SyncError && err.code === 'usage', `${url}: ${String(err)}`);
      return err.message;
    } finally {
      for (const k of Object.keys(env)) if (saved[k] === undefined) delete process.env[k];
      Object.assign(process.env, saved);
    }
    assert.fail(`${url} was accepted`);
  }

  it('a port that is not a number from 1 to 65535 is refused, never replaced by PGPORT or 5432, in every spelling', async () => {
    for (const [url, port] of [
      ['postgres://u@db.example.com:notaport/app', 'notaport'], ['postgres://u@db.example.com:99999/app', '99999'], ['postgres://u@db.example.com:0/app', '0'],
      ['postgres://u@db.example.com/app?port=abc', 'abc'], ['host=db.example.com port=abc dbname=app', 'abc'], ['host=db.example.com port=70000', '70000'],
    ]) {
      const message = await refused(url, { PGPORT: '5433' });
      assert.match(message, new RegExp(`the port "${port}" in the --source URL is not a port number \\(1 to 65535\\)`), url);
    }
    assert.match(await refused('postgres://u@db.example.com/app', { PGPORT: 'fivefour' }), /the port "fivefour" in PGPORT/);
    assert.deepEqual(endpointAddress('postgres://u@db.example.com:6543/app'), { host: 'db.example.com', port: 6543 });
  });

  it('another scheme than postgres:// or postgresql:// is refused, naming it', async () => {
    assert.match(await refused('mysql://u:hunter2@db.example.com/app'), /^the --source URL is a mysql:\/\/ URL, and pg-live-sync connects to PostgreSQL only; write postgresql:\/\//);
    assert.equal(describeEndpoint('postgresql://u@db.example.com/app'), 'db.example.com:5432/app');
  });

  it('a password holding an unencoded / ? or % says to percent-encode it and shows no part of it', async () => {
    for (const url of [
      `postgres://repl:${SECRET}@db.example.com:5432/app`, 'postgres://repl:12/34@db.example.com/app', 'postgres://repl:12?34@db.example.com/app',
      'postgres://repl:50%off@db.example.com/app',
    ]) {
      const message = await refused(url);
      assert.match(message, /--source URL/);
      assert.match(message, /%2F|%25/, url);
      for (const part of ['pa/ss', 'w0rd', 'ss?', '12/34', '12?34', '34@', '50%off', '%of']) assert.ok(!message.includes(part), `${message} shows ${part}`);
    }
    // Encoded, the same password works, as does an unencoded @ (the last @ ends the credentials).
    assert.equal(describeEndpoint(`postgres://repl:${encodeURIComponent(SECRET)}@db.example.com:5432/app`), 'db.example.com:5432/app');
    assert.equal(describeEndpoint('postgres://repl:p@ss@db.example.com/app'), 'db.example.com:5432/app');
    assert.equal(describeEndpoint('postgres://db.example.com:5432/app?user=me@corp'), 'db.example.com:5432/app');
  });

  it('several hosts, and query text that is not name=value, are refused', async () => {
    assert.match(await refused('postgres://h1:5432,h2:5433/app'), /names several hosts.*keep one host:port/);
    assert.match(await refused('postgres://u@h/app?sslmode'), /the parameter "sslmode" in the --source URL has no value; write sslmode=value/);
    assert.match(await refused('postgres://u@h/app?pa/ss'), /the part after \? in the --source URL is not name=value parameters/);
  });

  it('an extension connection is named by where it is configured', async () => {
    await assert.rejects(connect({ url: 'postgres://u@h:x/app', role: 'source', configuredIn: 'connection "prod" (Edit Connection)' }),
      (e: unknown) => e instanceof SyncError && e.code === 'usage' && /the port "x" in connection "prod" \(Edit Connection\)/.test(e.message));
  });
});

describe('connection string parameters that would change the engine\'s sessions', () => {
  it('statement_timeout, lock_timeout, idle_in_transaction_session_timeout and other non-libpq URL parameters are refused with the fix', async () => {
    for (const key of ['statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout', 'query_timeout', 'binary']) {
      await assert.rejects(connect({ url: `postgres://u@h/app?sslmode=disable&${key}=150`, role: 'target' }), (e: unknown) =>
        e instanceof SyncError && e.code === 'usage' && e.message.includes(`the --target URL has an unknown parameter "${key}"`) && /options=-c name=value/.test(e.message), key);
    }
    assert.throws(() => parseConninfo('host=h statement_timeout=150', 'the --target URL'), /the --target URL has an unknown keyword "statement_timeout"/);
  });

  it('application_name and replication are accepted as libpq accepts them, and left to the engine', () => {
    assert.deepEqual(parseUrl('postgres://u@h/app?application_name=mine&replication=database&fallback_application_name=x'),
      { user: 'u', host: 'h', dbname: 'app', application_name: 'mine', replication: 'database', fallback_application_name: 'x' });
    assert.equal(describeEndpoint('postgres://u@h/app?application_name=mine&replication=database'), 'h:5432/app');
    assert.equal(describeEndpoint('host=h dbname=app application_name=mine'), 'h:5432/app');
  });
});
