/** Connection strings as the engine reads them, without a server: keywords, options, redaction. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { describeEndpoint, endpointAddress, parseConninfo, sessionOptions } from '../../src/engine/connection';
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
