/** The extension's vscode-free models: connections and passwords, the SQL splitter, the sync picture. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import type { StatusJson } from '../../src/cli/ipc';
import { parseLsn } from '../../src/engine/lsn';
import type { SyncReport } from '../../src/engine/report';
import type { SlotInfo } from '../../src/engine/slot';
import type { TableProgress } from '../../src/engine/types';
import {
  ConnectionInputError, ConnectionSecrets, connectionIdentity, connectionUrl, connectionUser, describeConnection, legacySecretKey, previousSecretKey, sanitizeConfig, secretKey, splitUri, sslModeChoices,
  type ConnectionConfig,
} from '../../src/extension/connectionModel';
import type { PanelSnapshot } from '../../src/extension/panelSource';
import { commentText, note } from '../../src/engine/sqlgen';
import { runConfirmation, splitStatements, statementSummary } from '../../src/extension/sqlSplit';
import {
  describeActivity, lagAlert, readingFromReport, readingFromStatus, sanitizeSyncDefinition, severity, syncApprovalKey, syncDefinitionProblems, syncEngineOptions, syncsFromSettings,
  syncTableMaps, SyncTracker, type Reading,
} from '../../src/extension/syncModel';
import type { PanelTable } from '../../webview/protocol';

/** What node-postgres will connect with, given a URL. */
function seenByPg(url: string) {
  const c = new pg.Client({ connectionString: url }) as pg.Client & { password: string | null; ssl: unknown };
  return { host: c.host, port: c.port, user: c.user, database: c.database, password: c.password, ssl: c.ssl };
}

const NASTY = 'p@ss:w/o%rd#1 ?&=+ü€🐘';

describe('connection model: splitUri', () => {
  it('moves a userinfo password out of the URI, decoded, and keeps the rest', () => {
    const r = splitUri('  postgresql://repl:s%40cr%3At@db.example.com:5433/app?sslmode=require  ');
    assert.equal(r.password, 's@cr:t');
    assert.doesNotMatch(r.uri, /s%40cr|cr%3At|s@cr/);
    const u = new URL(r.uri);
    assert.equal(u.password, '');
    assert.equal(u.username, 'repl');
    assert.equal(u.host, 'db.example.com:5433');
    assert.equal(u.pathname, '/app');
    assert.equal(u.searchParams.get('sslmode'), 'require');
  });

  it('moves a ?password= parameter out too, keeping the other parameters', () => {
    const r = splitUri('postgres://repl@h:5432/app?password=qu%26ery%20pw&sslmode=verify-full&application_name=x');
    assert.equal(r.password, 'qu&ery pw');
    assert.doesNotMatch(r.uri, /password|qu%26ery|qu&ery/);
    const u = new URL(r.uri);
    assert.equal(u.searchParams.get('sslmode'), 'verify-full');
    assert.equal(u.searchParams.get('application_name'), 'x');
  });

  it('gives null when there is no password', () => {
    const r = splitUri('postgresql://repl@h/app');
    assert.equal(r.password, null);
    assert.equal(seenByPg(r.uri).user, 'repl');
  });

  it('rejects what is not a postgres URI, saying what to write', () => {
    assert.throws(() => splitUri('host=db port=5432'), (e: unknown) => e instanceof ConnectionInputError && /postgresql:\/\/user@host/.test(e.message));
    assert.throws(() => splitUri('mysql://u:pw@h/db'), (e: unknown) => e instanceof ConnectionInputError && /starts with postgresql:\/\//.test(e.message) && /mysql/.test(e.message) && !/pw/.test(e.message));
    assert.throws(() => splitUri('https://h/db'), ConnectionInputError);
  });

  it('rejects an unknown sslmode, listing the accepted ones', () => {
    assert.throws(
      () => splitUri('postgresql://u@h/db?sslmode=sometimes'),
      (e: unknown) => e instanceof ConnectionInputError && /sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full/.test(e.message) && /"sometimes"/.test(e.message),
    );
    assert.equal(splitUri('postgresql://u@h/db?sslmode=verify-ca').password, null);
  });
});

describe('connection model: connectionUrl', () => {
  it('joins a password with special and Unicode characters so that pg sees exactly it, with user, Unicode database, host and port', () => {
    const c: ConnectionConfig = { name: 'src', host: 'db.example.com', port: 6543, user: 'ré pl@x', database: 'Datenbank ü 数据' };
    const url = connectionUrl(c, NASTY);
    assert.deepEqual(seenByPg(url), { host: 'db.example.com', port: 6543, user: 'ré pl@x', database: 'Datenbank ü 数据', password: NASTY, ssl: false });
  });

  it('joins a password to a stored URI', () => {
    const url = connectionUrl({ name: 'src', uri: 'postgresql://repl@10.1.2.3:5439/app' }, NASTY);
    assert.deepEqual(seenByPg(url), { host: '10.1.2.3', port: 5439, user: 'repl', database: 'app', password: NASTY, ssl: false });
  });

  it('brackets an IPv6 host', () => {
    const seen = seenByPg(connectionUrl({ name: 'v6', host: '::1', port: 5434, user: 'u', database: 'd' }, 'x'));
    assert.equal(seen.host, '::1');
    assert.equal(seen.port, 5434);
  });

  it('keeps port, user and password when the host is left to PGHOST', () => {
    const saved = process.env.PGHOST;
    delete process.env.PGHOST;
    try {
      const seen = seenByPg(connectionUrl({ name: 'nohost', port: 5499, user: 'bob', database: 'app' }, NASTY));
      assert.deepEqual({ port: seen.port, user: seen.user, database: seen.database, password: seen.password }, { port: 5499, user: 'bob', database: 'app', password: NASTY });
    } finally {
      if (saved !== undefined) process.env.PGHOST = saved;
    }
  });

  it('keeps sslmode as written, without pg\'s uselibpqcompat: the engine gives it libpq\'s meaning for the CLI and the extension alike', () => {
    const u = new URL(connectionUrl({ name: 's', host: 'h', database: 'd', sslmode: 'require' }, null));
    assert.equal(u.searchParams.get('sslmode'), 'require');
    assert.equal(u.searchParams.has('uselibpqcompat'), false);
    assert.equal(new URL(connectionUrl({ name: 's', uri: 'postgresql://u@h/d?sslmode=disable' }, 'pw')).searchParams.has('uselibpqcompat'), false);
    assert.equal(new URL(connectionUrl({ name: 's', host: 'h', database: 'd' }, null)).searchParams.has('sslmode'), false, 'no sslmode: the engine\'s default, prefer');
  });

  it('without a password the URL carries none (pg then reads PGPASSWORD or ~/.pgpass)', () => {
    for (const c of [{ name: 'a', host: 'h', user: 'u', database: 'd' }, { name: 'b', uri: 'postgresql://u@h/d' }, { name: 'c', user: 'u' }] as ConnectionConfig[]) {
      for (const pw of [null, '']) {
        const u = new URL(connectionUrl(c, pw));
        assert.equal(u.password, '', JSON.stringify(c));
        assert.equal(u.searchParams.has('password'), false, JSON.stringify(c));
      }
    }
  });
});

describe('connection model: describeConnection, connectionUser', () => {
  it('shows host:port/database and never a password', () => {
    const c: ConnectionConfig = { name: 'src', host: 'db.example.com', port: 6543, user: 'repl', database: 'Datenbank ü' };
    assert.equal(describeConnection(c, {}), 'db.example.com:6543/Datenbank ü');
    const fromUri = describeConnection({ name: 'src', uri: 'postgresql://repl:hunter2@h:1/app' }, {});
    assert.equal(fromUri, 'h:1/app');
    assert.doesNotMatch(fromUri, /hunter2/);
  });

  it('falls back to PGHOST, PGPORT and PGDATABASE from the given environment, then to libpq defaults', () => {
    const env = { PGHOST: 'envhost', PGPORT: '7777', PGDATABASE: 'envdb', PGPASSWORD: 'env-secret' };
    assert.equal(describeConnection({ name: 'bare' }, env), 'envhost:7777/envdb');
    assert.equal(describeConnection({ name: 'half', database: 'own' }, env), 'envhost:7777/own');
    assert.equal(describeConnection({ name: 'port', port: 5499, user: 'bob' }, env), 'envhost:5499/envdb');
    assert.equal(describeConnection({ name: 'bare' }, { PGUSER: 'alice' }), 'localhost:5432/alice');
    assert.doesNotMatch(describeConnection({ name: 'bare' }, env), /env-secret/);
  });

  it('connectionUser: the configured user, else PGUSER, else USER', () => {
    assert.equal(connectionUser({ name: 'a', host: 'h', user: 'ré pl' }, { PGUSER: 'x' }), 'ré pl');
    assert.equal(connectionUser({ name: 'a', user: 'bob' }, { PGUSER: 'x' }), 'bob');
    assert.equal(connectionUser({ name: 'a', host: 'h' }, { PGUSER: 'x', USER: 'y' }), 'x');
    assert.equal(connectionUser({ name: 'a', host: 'h' }, { USER: 'y' }), 'y');
  });
});

describe('connection model: the sslmode picker', () => {
  it('starts on the connection\'s own mode, else on prefer (libpq\'s default), never on disable by position', () => {
    assert.deepEqual(sslModeChoices(undefined)[0], { label: 'prefer', description: 'default: TLS if the server offers it' });
    assert.deepEqual(sslModeChoices('prefer')[0], { label: 'prefer', description: 'current' });
    assert.deepEqual(sslModeChoices('verify-full')[0], { label: 'verify-full', description: 'current' });
    for (const mode of [undefined, 'disable', 'require', 'verify-ca'] as const) {
      const labels = sslModeChoices(mode).map((c) => c.label);
      assert.deepEqual([...labels].sort(), ['allow', 'disable', 'prefer', 'require', 'verify-ca', 'verify-full'], 'every mode once');
    }
  });
});

describe('connection model: sanitizeConfig', () => {
  it('keeps only known keys: password, pass and anything else are dropped', () => {
    const c = sanitizeConfig({ name: 'src', host: 'h', port: 5432, user: 'u', database: 'd', sslmode: 'verify-full', sslrootcert: '/ca.pem', password: 'pw1', pass: 'pw2', secret: 'pw3' });
    assert.deepEqual(c, { name: 'src', host: 'h', port: 5432, user: 'u', database: 'd', sslmode: 'verify-full', sslrootcert: '/ca.pem' });
    assert.doesNotMatch(JSON.stringify(c), /pw\d/);
  });

  it('strips a password from a uri field, in userinfo or query', () => {
    const a = sanitizeConfig({ name: 'a', uri: 'postgresql://u:hunter2@h/d' });
    assert.deepEqual(a, { name: 'a', uri: 'postgresql://u@h/d' });
    const b = sanitizeConfig({ name: 'b', uri: 'postgresql://u@h/d?password=hunter2&sslmode=require' });
    assert.equal(b?.uri, 'postgresql://u@h/d?sslmode=require');
  });

  it('drops invalid values and rejects entries without a name or with a bad uri', () => {
    assert.deepEqual(sanitizeConfig({ name: 'x', port: '5432', sslmode: 'sometimes', host: '' }), { name: 'x' });
    assert.equal(sanitizeConfig({ host: 'h' }), null);
    assert.equal(sanitizeConfig({ name: '' }), null);
    assert.equal(sanitizeConfig({ name: 'x', uri: 'mysql://h/d' }), null);
    assert.equal(sanitizeConfig('postgresql://h/d'), null);
    assert.equal(sanitizeConfig(null), null);
  });
});

/** SecretStorage as a map, so what is stored under which key can be looked at. */
function memorySecrets(initial: Record<string, string> = {}) {
  const map = new Map(Object.entries(initial));
  return {
    map,
    async get(key: string) {
      return map.get(key);
    },
    async store(key: string, value: string) {
      map.set(key, value);
    },
    async delete(key: string) {
      map.delete(key);
    },
  };
}

describe('connection model: stored passwords (ConnectionSecrets)', () => {
  const env = {};
  const user: ConnectionConfig = { name: 'prod', host: 'db.example.com', port: 5432, user: 'repl', database: 'app' };
  const shadow: ConnectionConfig = { name: 'prod', host: 'attacker.example.net', port: 5432, user: 'repl', database: 'app' };

  it('a workspace connection of the same name on another host does not get the user connection\'s password', async () => {
    const storage = memorySecrets();
    const secrets = new ConnectionSecrets(storage, env);
    await secrets.set(user, 'user-secret');
    assert.equal(await secrets.get(shadow, [shadow, user]), null);
    for (const other of [{ ...user, port: 6432 }, { ...user, user: 'postgres' }, { ...user, database: 'other' }, { name: 'prod', uri: 'postgresql://repl@attacker.example.net/app' }]) {
      assert.equal(await secrets.get(other, [other, user]), null, JSON.stringify(other));
    }
    assert.equal(await secrets.get(user, [shadow, user]), 'user-secret', 'the user connection still has it');
    assert.equal(await secrets.get({ name: 'prod', uri: 'postgresql://repl@db.example.com:5432/app' }, [user]), 'user-secret', 'the same server and role, written as a URI');
    assert.ok([...storage.map.keys()].every((k) => k.includes('db.example.com')), [...storage.map.keys()].join(', '));
  });

  it('follows the PG* fallbacks: a connection without a host is another server when PGHOST changes', async () => {
    const storage = memorySecrets();
    const bare: ConnectionConfig = { name: 'local', user: 'u', database: 'd' };
    await new ConnectionSecrets(storage, { PGHOST: 'one.example.com' }).set(bare, 'pw');
    assert.equal(await new ConnectionSecrets(storage, { PGHOST: 'one.example.com' }).get(bare, [bare]), 'pw');
    assert.equal(await new ConnectionSecrets(storage, { PGHOST: 'two.example.com' }).get(bare, [bare]), null);
  });

  it('moves a password kept under the name alone (earlier versions) only when every entry of that name is the same server', async () => {
    const legacy = legacySecretKey('prod');
    const ambiguous = memorySecrets({ [legacy]: 'old-secret' });
    const a = new ConnectionSecrets(ambiguous, env);
    assert.equal(await a.get(shadow, [shadow, user]), null, 'not to the shadowing workspace entry');
    assert.equal(await a.get(user, [shadow, user]), null, 'nor to the user entry while it is ambiguous');
    assert.equal(ambiguous.map.get(legacy), 'old-secret', 'kept for when it is no longer ambiguous');

    const alone = memorySecrets({ [legacy]: 'old-secret' });
    const b = new ConnectionSecrets(alone, env);
    assert.equal(await b.get(user, [user]), 'old-secret');
    assert.deepEqual([...alone.map.keys()], [secretKey(user, env)], 'moved to the identity key, the old key gone');
    assert.equal(await b.get(shadow, [shadow]), null, 'and no longer found by name');
  });

  it('set(null) and delete forget it; sameServer compares identities', async () => {
    const storage = memorySecrets({ [legacySecretKey('prod')]: 'x' });
    const secrets = new ConnectionSecrets(storage, env);
    await secrets.set(user, 'pw');
    await secrets.set(user, null);
    assert.equal(storage.map.has(secretKey(user, env)), false);
    await secrets.set(user, 'pw');
    await secrets.delete(user);
    assert.equal(storage.map.size, 0);
    assert.equal(secrets.sameServer(user, { ...user, name: 'renamed', sslmode: 'require' }), true);
    assert.equal(secrets.sameServer(user, shadow), false);
    assert.equal(connectionIdentity(user, env), '["repl","db.example.com","5432","app","prefer",""]');
  });

  // The user's connection, saved with its password: verify-full against the user's CA.
  const saved: ConnectionConfig = { name: 'prod', uri: 'postgresql://repl@db.example.com:5432/app?sslmode=verify-full&sslrootcert=%2Fhome%2Fme%2Fca.pem' };
  const withQuery = (q: string): ConnectionConfig => ({ name: 'prod', uri: `${saved.uri}&${q}` });

  it('a URI whose query sends pg elsewhere (host, port, user) is another server, and the tree shows where it goes', async () => {
    for (const [q, seen] of [['host=attacker.example.net', 'attacker.example.net'], ['port=6543', '6543'], ['user=postgres', 'postgres']] as const) {
      const shadow = sanitizeConfig(withQuery(q))!;
      const url = new URL(connectionUrl(shadow, 'x'));
      url.searchParams.delete('sslrootcert'); // pg would read the file
      const pgSees = seenByPg(url.toString());
      assert.ok([pgSees.host, String(pgSees.port), pgSees.user].includes(seen), `pg itself connects with ${q}: ${JSON.stringify(pgSees)}`);
      const storage = memorySecrets();
      const secrets = new ConnectionSecrets(storage, env);
      await secrets.set(saved, 'user-secret');
      assert.equal(await secrets.get(shadow, [shadow, saved]), null, q);
      assert.equal(secrets.sameServer(saved, shadow), false, q);
      assert.match(`${connectionUser(shadow, env)}@${describeConnection(shadow, env)}`, new RegExp(seen), `prompts show where it goes: ${q}`);
    }
    assert.equal(describeConnection(sanitizeConfig(withQuery('host=attacker.example.net'))!, env), 'attacker.example.net:5432/app');
    // Given twice, pg takes the last: whichever it takes, not the saved identity.
    const twice = sanitizeConfig({ name: 'prod', uri: 'postgresql://repl@db.example.com:5432/app?host=db.example.com&host=attacker.example.net' })!;
    assert.equal(seenByPg(connectionUrl(twice, 'x')).host, 'attacker.example.net');
    assert.notEqual(connectionIdentity(twice, env), connectionIdentity({ name: 'prod', uri: 'postgresql://repl@db.example.com:5432/app' }, env));
  });

  it('libpq keywords that choose another server or database (hostaddr, dbname, service) make another identity too', async () => {
    const storage = memorySecrets();
    const secrets = new ConnectionSecrets(storage, env);
    await secrets.set(saved, 'user-secret');
    for (const q of ['hostaddr=203.0.113.9', 'dbname=other', 'database=other', 'service=evil']) {
      const shadow = withQuery(q);
      assert.equal(await secrets.get(shadow, [shadow, saved]), null, q);
      assert.match(describeConnection(shadow, env), new RegExp(q.replace('.', '\\.')), q);
    }
  });

  it('a weaker sslmode or another CA is another identity: no stored password is sent over it', async () => {
    const storage = memorySecrets();
    const secrets = new ConnectionSecrets(storage, env);
    await secrets.set(saved, 'user-secret');
    const weaker = [
      { name: 'prod', uri: 'postgresql://repl@db.example.com:5432/app?sslmode=disable&sslrootcert=%2Fhome%2Fme%2Fca.pem' },
      { name: 'prod', uri: 'postgresql://repl@db.example.com:5432/app?sslrootcert=%2Fhome%2Fme%2Fca.pem' },
      { name: 'prod', uri: 'postgresql://repl@db.example.com:5432/app?sslmode=verify-full&sslrootcert=%2Ftmp%2Fattacker.pem' },
      { name: 'prod', uri: 'postgresql://repl@db.example.com:5432/app?ssl=no-verify&sslrootcert=%2Fhome%2Fme%2Fca.pem' },
      // Later keys win in pg's parse: a second sslmode is as good as replacing the first.
      withQuery('sslmode=disable'),
    ];
    for (const shadow of weaker) {
      assert.equal(await secrets.get(shadow, [shadow, saved]), null, shadow.uri);
      assert.equal(secrets.sameServer(saved, shadow), false, shadow.uri);
    }
    assert.equal(await secrets.get(saved, [saved]), 'user-secret');
    // An edit may carry the password to a stronger sslmode, never to a weaker one.
    const plain: ConnectionConfig = { name: 'p', host: 'h', user: 'u', database: 'd', sslmode: 'require' };
    assert.equal(secrets.sameServer(plain, { ...plain, sslmode: 'verify-full' }), true);
    assert.equal(secrets.sameServer(plain, { ...plain, sslmode: 'prefer' }), false);
    assert.equal(secrets.sameServer(plain, { ...plain, sslmode: 'require' }, ), true);
    assert.equal(connectionIdentity({ ...plain, sslmode: undefined }, { PGSSLMODE: 'disable' }) === connectionIdentity({ ...plain, sslmode: undefined }, {}), false, 'PGSSLMODE counts');
  });

  it('a password under the previous version\'s key moves to its connection, never to one whose query differs', async () => {
    const old = previousSecretKey(saved, env);
    const shadow = withQuery('host=attacker.example.net');
    assert.equal(previousSecretKey(shadow, env), old, 'the previous key read only the authority: both had it');
    const ambiguous = memorySecrets({ [old]: 'old-secret' });
    const a = new ConnectionSecrets(ambiguous, env);
    assert.equal(await a.get(shadow, [shadow, saved]), null, 'not to the shadowing workspace entry');
    assert.equal(await a.get(saved, [shadow, saved]), null, 'nor to the user entry while it is ambiguous');
    assert.equal(ambiguous.map.get(old), 'old-secret');
    const alone = memorySecrets({ [old]: 'old-secret' });
    const b = new ConnectionSecrets(alone, env);
    assert.equal(await b.get(saved, [saved]), 'old-secret');
    assert.deepEqual([...alone.map.keys()], [secretKey(saved, env)]);
    await b.delete(saved);
    assert.equal(alone.map.size, 0);
  });
});

describe('splitStatements', () => {
  it('splits on semicolons outside quotes and quoted identifiers', () => {
    assert.deepEqual(splitStatements(`SELECT 'a;b', 'it''s; x'; SELECT "we;ird""id" FROM t;\nSELECT 3`), [
      `SELECT 'a;b', 'it''s; x'`,
      `SELECT "we;ird""id" FROM t`,
      'SELECT 3',
    ]);
  });

  it('keeps an E-string with a backslash-escaped quote in one piece', () => {
    assert.deepEqual(splitStatements(`SELECT E'it\\'s; fine'; SELECT 2;`), [`SELECT E'it\\'s; fine'`, 'SELECT 2']);
  });

  it('keeps dollar-quoted bodies ($$ and $tag$) whole, even with $$ and semicolons inside a tagged body', () => {
    const fn = `CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN PERFORM $$;$$; RETURN 1; END $body$`;
    const dollars = `DO $$ BEGIN RAISE NOTICE 'x;y'; END $$`;
    assert.deepEqual(splitStatements(`${fn};\n${dollars};\nSELECT $1::int`), [fn, dollars, 'SELECT $1::int']);
  });

  it('skips line comments and nested block comments, semicolons in them included', () => {
    const sql = `-- first; not a statement\nSELECT 1 /* a; /* nested; */ still comment; */ + 1;\n/* only; a comment */;\nSELECT 2 -- trailing; comment\n;`;
    // A statement keeps the comments before it (statementSummary drops them for display).
    assert.deepEqual(splitStatements(sql), ['-- first; not a statement\nSELECT 1 /* a; /* nested; */ still comment; */ + 1', 'SELECT 2 -- trailing; comment']);
  });

  it('gives nothing for comment-only or blank input', () => {
    assert.deepEqual(splitStatements('-- nothing here;\n/* nor; /* here */ */\n  ;; \n'), []);
    assert.deepEqual(splitStatements(''), []);
  });

  it('keeps a last statement without a semicolon', () => {
    assert.deepEqual(splitStatements('ALTER TABLE t REPLICA IDENTITY FULL;\nSELECT pg_reload_conf()\n'), ['ALTER TABLE t REPLICA IDENTITY FULL', 'SELECT pg_reload_conf()']);
  });

  it('statementSummary drops leading comments and folds whitespace', () => {
    assert.equal(statementSummary('-- why\n-- more\nALTER SYSTEM\n  SET wal_level = logical'), 'ALTER SYSTEM SET wal_level = logical');
    assert.equal(statementSummary('SELECT ' + 'x'.repeat(200), 20).length, 20);
  });

  it('Run SQL asks with the exact count and every statement in full, however many there are', () => {
    const statements = Array.from({ length: 30 }, (_, i) => `-- why\nALTER TABLE "public"."t${i}" REPLICA IDENTITY FULL`);
    statements.push(`ALTER TABLE "a\n; DROP TABLE x; --" REPLICA IDENTITY FULL /* ${'y'.repeat(300)} */`);
    const { message, detail } = runConfirmation(statements, 'source (h:5432/db)', null);
    assert.equal(message, 'Run 31 statements on source (h:5432/db)?');
    const lines = detail.split('\n');
    assert.equal(lines.length, 31);
    for (let i = 0; i < 30; i++) assert.equal(lines[i], `${i + 1}. ALTER TABLE "public"."t${i}" REPLICA IDENTITY FULL`);
    // A name's line break cannot make one statement look like two, and nothing is cut short.
    // (The one escaping of names on a line also keeps a `*/` from closing a comment.)
    assert.equal(lines[30], `31. ALTER TABLE "a ; DROP TABLE x; --" REPLICA IDENTITY FULL /* ${'y'.repeat(300)} *\\/`);
    assert.match(runConfirmation(statements.slice(0, 2), 'source', 'Create publication p with 2 tables').message, /^Create publication p with 2 tables on source\? \(2 statements\)$/);
  });

  it('comment text cannot hold a line break', () => {
    assert.equal(commentText('a\nb\r\nc\u2028d\u0007e\tf'), 'a\\nb\\r\\nc\\u2028d\\u0007e\\tf');
    assert.equal(note('"x\n; DROP TABLE y; --"'), '-- "x\\n; DROP TABLE y; --"');
    assert.deepEqual(splitStatements(note('t\n; DROP TABLE y; --')), []);
  });
});

type StatusTable = StatusJson['tables'][number];

function statusTable(table: string, over: Partial<StatusTable> = {}): StatusTable {
  return {
    schema: 'public', table, targetSchema: 'public', targetTable: table, state: 'r', lsn: null, removed: false,
    rowsCopied: 0, bytesCopied: 0, approximateRows: 0, approximateSize: 0, lastError: null, missingUpdates: 0, missingDeletes: 0, ...over,
  };
}

function status(phase: StatusJson['phase'], tables: StatusTable[], over: Partial<StatusJson> = {}): StatusJson {
  return { subscription: 's', phase, appliedLsn: '0/16B3748', lagBytes: 10, lagSeconds: 0.5, changesApplied: 0, transactionsApplied: 0, tables, ...over };
}

function progress(table: string, over: Partial<TableProgress> = {}): TableProgress {
  return { ...statusTable(table), lsn: null, ...over } as TableProgress;
}

function report(running: boolean, tables: TableProgress[], over: Partial<SyncReport['subscription']> = {}, lagBytes: number | null = 0, lagSeconds: number | null = lagBytes === null ? null : 0): SyncReport {
  return {
    subscription: {
      subname: 's', slotName: 'pg_live_sync_s', publications: ['pub'], source: 'h:5432/db',
      consistentLsn: parseLsn('0/100'), appliedLsn: null, appliedCommitTime: null, lastError: null, acksAppliedOnly: true, ...over,
    },
    tables, slot: null, slotMissing: false, lagBytes, lagSeconds, running,
  };
}

describe('sync model: readings', () => {
  it('readingFromStatus: activity words from the phase and the tables', () => {
    const at = 1_000;
    assert.equal(readingFromStatus(status('starting', []), at, null).activity, 'starting');
    assert.equal(readingFromStatus(status('stopping', [statusTable('a')]), at, null).activity, 'stopped');
    assert.equal(readingFromStatus(status('stopped', [statusTable('a')]), at, null).activity, 'stopped');
    assert.equal(readingFromStatus(status('copying', [statusTable('a')]), at, null).activity, 'copying');
    assert.equal(readingFromStatus(status('streaming', [statusTable('a'), statusTable('b', { state: 'd' })]), at, null).activity, 'copying');
    assert.equal(readingFromStatus(status('streaming', [statusTable('a'), statusTable('b', { state: 'i', removed: true })]), at, null).activity, 'streaming');
    const r = readingFromStatus(status('streaming', [statusTable('a', { rowsCopied: 5 })], { changesApplied: 42 }), at, { at, info: slot(0n, 4096) });
    assert.deepEqual(
      { at: r.at, appliedLsn: r.appliedLsn, lagBytes: r.lagBytes, changes: r.changesApplied, wal: r.slot?.info.retainedBytes, key: r.tables[0].key, rows: r.tables[0].rowsCopied },
      { at, appliedLsn: '0/16B3748', lagBytes: 10, changes: 42, wal: 4096, key: '"public"."a"', rows: 5 },
    );
    // Changes that found no row reach the panel's table grid.
    const missing = readingFromStatus(status('streaming', [statusTable('a', { missingUpdates: 3, missingDeletes: 1 })]), at, null).tables[0];
    assert.deepEqual([missing.missingUpdates, missing.missingDeletes], [3, 1]);
  });

  it('SyncTracker: time left before the slot is invalidated, from the WAL written between two slot readings', () => {
    const MiB = 1024 * 1024;
    const t = new SyncTracker({ ...HEADER });
    const limits = { safe: 100 * MiB, keep: 128 * MiB };
    t.add({ ...reading(0, 0, []), slot: { at: 0, info: slot(1000n, 28 * MiB, limits) } });
    assert.equal(t.snapshot()!.header.secondsToInvalidation, null, 'one reading has no rate');
    // The status is read more often than the slot: the same slot reading again changes nothing.
    t.add({ ...reading(5_000, 0, []), slot: { at: 0, info: slot(1000n, 28 * MiB, limits) } });
    assert.equal(t.snapshot()!.header.secondsToInvalidation, null);
    t.add({ ...reading(10_000, 0, []), slot: { at: 10_000, info: slot(1000n + BigInt(10 * MiB), 38 * MiB, { ...limits, safe: 90 * MiB }) } });
    const h = t.snapshot()!.header;
    assert.deepEqual([h.secondsToInvalidation, h.walKeepBytes, h.safeWalBytes, h.retainedWalBytes], [90, 128 * MiB, 90 * MiB, 38 * MiB]);
    t.add({ ...reading(20_000, 0, []), slot: { at: 20_000, info: slot(1000n + BigInt(10 * MiB), 38 * MiB, { ...limits, safe: 90 * MiB }) } });
    assert.equal(t.snapshot()!.header.secondsToInvalidation, null, 'no WAL written: no end in sight');
    t.add({ ...reading(30_000, 0, []), slot: { at: 30_000, info: slot(2000n, 38 * MiB) } });
    assert.equal(t.snapshot()!.header.secondsToInvalidation, null, 'max_slot_wal_keep_size unlimited');
  });

  it('readingFromReport: running copying/streaming, else error or the given not-running word; lag as the report measures it', () => {
    const at = Date.parse('2026-01-01T00:00:10Z');
    assert.equal(readingFromReport(report(true, [progress('a', { state: 'f' })]), at, 'stopped').activity, 'streaming');
    assert.equal(readingFromReport(report(true, [progress('a', { state: 'i' })]), at, 'stopped').activity, 'copying');
    assert.equal(readingFromReport(report(true, [progress('a'), progress('b', { state: 'd', removed: true })]), at, 'stopped').activity, 'streaming');
    assert.equal(readingFromReport(report(false, [progress('a')]), at, 'paused').activity, 'paused');
    assert.equal(readingFromReport(report(false, [progress('a')]), at, 'stopped').activity, 'stopped');
    const failed = readingFromReport(report(false, [progress('a')], { lastError: 'boom; fix it' }), at, 'paused');
    assert.equal(failed.activity, 'error');
    assert.equal(failed.lastError, 'boom; fix it');

    const lagging = readingFromReport(report(true, [progress('a')], { appliedLsn: parseLsn('0/16B3748'), appliedCommitTime: new Date('2026-01-01T00:00:04Z') }, 500, 6), at, 'stopped');
    assert.equal(lagging.appliedLsn, '0/16B3748');
    assert.equal(lagging.lagSeconds, 6);
    const idleWal = readingFromReport(report(false, [progress('a')], { appliedCommitTime: new Date('2026-01-01T00:00:04Z') }, 500, 0), at, 'stopped');
    assert.equal(idleWal.lagSeconds, 0, 'WAL without a pending commit is no time behind, however old the last commit');
    assert.equal(lagging.changesApplied, null);
    const caughtUp = readingFromReport(report(true, [progress('a')], { appliedCommitTime: new Date('2026-01-01T00:00:04Z') }, 0), at, 'stopped');
    assert.equal(caughtUp.appliedLsn, '0/100', 'falls back to the consistent LSN');
    assert.equal(caughtUp.lagSeconds, 0);
    assert.equal(readingFromReport(report(true, [], {}, null), at, 'stopped').lagSeconds, null);
  });
});

const HEADER = { name: 's', mode: 'local' as const, source: 'h:1/db', target: 'h:2/db', publications: ['pub'] };

function reading(at: number, changesApplied: number | null, tables: Reading['tables']): Reading {
  return { at, activity: 'copying', appliedLsn: null, lagBytes: 100, lagSeconds: 1, changesApplied, slot: null, lastError: null, tables };
}

function slot(sourceWalLsn: bigint, retainedBytes: number, limits: { safe: number; keep: number } | null = null): SlotInfo {
  return {
    active: true, database: 'db', confirmedFlush: null, walStatus: 'reserved', retainedBytes,
    safeWalBytes: limits?.safe ?? null, walKeepBytes: limits?.keep ?? null, sourceWalLsn,
  };
}

function readingTable(table: string, over: Partial<Reading['tables'][number]> = {}): Reading['tables'][number] {
  const { copyRowsPerSecond: _r, etaSeconds: _e, ...t } = panelTable(table, over);
  return t;
}

function panelTable(table: string, over: Partial<PanelTable> = {}): PanelTable {
  return {
    key: `"public"."${table}"`, schema: 'public', table, targetSchema: 'public', targetTable: table, state: 'r', removed: false,
    rowsCopied: 0, bytesCopied: 0, approximateRows: 0, approximateSize: 0, copyRowsPerSecond: null, etaSeconds: null, lastError: null, ...over,
  };
}

describe('sync model: SyncTracker', () => {
  it('computes changes/s, copy rows/s, copy bytes/s and the ETA from two readings', () => {
    const t = new SyncTracker({ ...HEADER });
    const t0 = 1_700_000_000_000;
    t.add(reading(t0, 100, [readingTable('big', { state: 'd', rowsCopied: 1_000, bytesCopied: 10_000, approximateRows: 11_000 }), readingTable('done')]));
    const first = t.snapshot()!;
    assert.equal(first.header.changesPerSecond, null, 'one reading has no rate');
    assert.equal(first.tables[0].copyRowsPerSecond, null);

    t.add(reading(t0 + 2_000, 300, [readingTable('big', { state: 'd', rowsCopied: 3_000, bytesCopied: 30_000, approximateRows: 11_000 }), readingTable('done')]));
    const s = t.snapshot()!;
    assert.equal(s.header.changesPerSecond, 100);
    assert.equal(s.header.updatedAt, t0 + 2_000);
    assert.equal(s.header.activity, 'copying');
    assert.equal(s.tables[0].copyRowsPerSecond, 1_000);
    assert.equal(s.tables[0].etaSeconds, 8);
    assert.equal(s.tables[1].copyRowsPerSecond, null, 'not copying: no rate');
    assert.equal(s.tables[1].etaSeconds, null);
    assert.deepEqual(s.samples.map((x) => [x.t, x.changesPerSecond, x.copyBytesPerSecond]), [[t0, null, null], [t0 + 2_000, 100, 10_000]]);
  });

  it('takes rates over a window of at least 5 s, not just the last two readings; keeps one chart point per second', () => {
    const t = new SyncTracker({ ...HEADER });
    const t0 = 1_000_000;
    // 10 changes/s steadily for 10 s, then a burst: the rate is over the readings from 6 s on
    // (the oldest whose successor is within 5 s of the newest), not over the last second.
    for (let i = 0; i <= 10; i++) t.add(reading(t0 + i * 1_000, i * 10, []));
    assert.equal(t.snapshot()!.header.changesPerSecond, 10);
    t.add(reading(t0 + 11_500, 1_100, []));
    assert.equal(t.snapshot()!.header.changesPerSecond, (1_100 - 60) / 5.5);
    // A reading within a second of the last chart point adds no point.
    t.add(reading(t0 + 12_000, 1_110, []));
    assert.deepEqual(t.snapshot()!.samples.map((x) => x.t - t0), [0, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 7_000, 8_000, 9_000, 10_000, 11_500]);
    assert.equal(t.snapshot()!.header.updatedAt, t0 + 12_000);
  });

  it('no rate from readings that cannot know the change count (attached)', () => {
    const t = new SyncTracker({ ...HEADER, mode: 'attached' });
    t.add(reading(0, null, []));
    t.add(reading(2_000, null, []));
    assert.equal(t.snapshot()!.header.changesPerSecond, null);
    assert.equal(t.snapshot()!.header.mode, 'attached');
    t.setMode('local');
    assert.equal(t.snapshot()!.header.mode, 'local');
    assert.equal(new SyncTracker({ ...HEADER }).snapshot(), null);
  });
});

function snapshot(activity: PanelSnapshot['header']['activity'], tables: PanelTable[], lagBytes: number | null = 0): PanelSnapshot {
  return {
    header: {
      ...HEADER, activity, appliedLsn: null, lagBytes, lagSeconds: 0, changesPerSecond: null, retainedWalBytes: null,
      walKeepBytes: null, safeWalBytes: null, secondsToInvalidation: null, lastError: null, updatedAt: 0,
    },
    tables,
    samples: [],
  };
}

describe('sync model: describeActivity and severity', () => {
  it('describes copying, streaming (with ready counts and lag) and the rest, plus table errors', () => {
    assert.equal(describeActivity(snapshot('copying', [panelTable('a', { state: 'd' }), panelTable('b', { state: 'i' }), panelTable('c', { state: 'f' }), panelTable('x', { state: 'i', removed: true })])), 'copying 1/3');
    assert.equal(describeActivity(snapshot('streaming', [panelTable('a'), panelTable('b')], 1536)), 'streaming, lag 1.5 KiB');
    assert.equal(describeActivity(snapshot('streaming', [panelTable('a'), panelTable('b', { state: 's' })], 0)), 'streaming, lag 0 B, 1/2 ready');
    assert.equal(describeActivity(snapshot('streaming', [panelTable('a')], null)), 'streaming, lag 0 B');
    assert.equal(describeActivity(snapshot('paused', [panelTable('a')])), 'paused');
    assert.equal(describeActivity(snapshot('error', [panelTable('a', { lastError: 'x' })])), 'error, 1 table error');
    assert.equal(describeActivity(snapshot('streaming', [panelTable('a', { lastError: 'x' }), panelTable('b', { lastError: 'y' }), panelTable('c', { lastError: 'z', removed: true })])), 'error: 2 table errors; streaming, lag 0 B');
    assert.equal(describeActivity(snapshot('copying', [panelTable('a', { state: 'd', lastError: 'x' }), panelTable('b', { state: 'f' })])), 'error: 1 table error; copying 1/2');
    assert.equal(describeActivity(snapshot('paused', [panelTable('a', { lastError: 'x' })])), 'paused, 1 table error');
  });

  it('orders severity: error > starting/copying > tables not ready > paused/stopped > streaming', () => {
    const ordered = [
      snapshot('streaming', [panelTable('a')]),
      snapshot('stopped', [panelTable('a')]),
      snapshot('streaming', [panelTable('a', { state: 'f' })]),
      snapshot('copying', [panelTable('a', { state: 'd' })]),
      snapshot('streaming', [panelTable('a', { lastError: 'boom' })]),
    ];
    const levels = ordered.map(severity);
    assert.deepEqual(levels, [...levels].sort((a, b) => a - b));
    assert.equal(new Set(levels).size, levels.length, `distinct levels: ${levels}`);
    assert.equal(severity(snapshot('paused', [panelTable('a')])), severity(snapshot('stopped', [panelTable('a')])));
    assert.equal(severity(snapshot('starting', [])), severity(snapshot('copying', [])));
    assert.equal(severity(snapshot('error', [panelTable('a')])), severity(ordered[4]));
    assert.equal(severity(snapshot('streaming', [panelTable('a', { lastError: 'gone', removed: true })])), severity(ordered[0]), 'a removed table does not count');
  });
});

describe('sync model: sanitizeSyncDefinition', () => {
  it('fills defaults and drops what is not the right type', () => {
    assert.deepEqual(sanitizeSyncDefinition({ name: 's', source: 'a', target: 'b' }), {
      name: 's', source: 'a', target: 'b', publications: [], tableMaps: [], tableSyncWorkers: 4, copyData: true, createTables: false, applyDdl: [], attach: false, streaming: 'parallel',
    });
    assert.deepEqual(
      sanitizeSyncDefinition({ name: 's', source: 'a', target: 'b', publications: ['p', 3, 'q'], tableMaps: 'x', tableSyncWorkers: 2.5, copyData: 'no', attach: 'yes' }),
      { name: 's', source: 'a', target: 'b', publications: ['p', 'q'], tableMaps: [], tableSyncWorkers: 4, copyData: true, createTables: false, applyDdl: [], attach: false, streaming: 'parallel' },
    );
    const ddl = sanitizeSyncDefinition({ name: 's', source: 'a', target: 'b', createTables: true, applyDdl: ['add-column', 'drop-table', 7] });
    assert.deepEqual([ddl?.createTables, ddl?.applyDdl], [true, ['add-column']], 'only known DDL kinds are kept');
    const kept = sanitizeSyncDefinition({ name: 's', source: 'a', target: 'b', tableMaps: [{ source: {}, target: {} }], tableSyncWorkers: 8, copyData: false, attach: true });
    assert.deepEqual([kept?.tableMaps.length, kept?.tableSyncWorkers, kept?.copyData, kept?.attach], [1, 8, false, true]);
  });

  it('reads streaming (parallel, on, off) and spoolDir; a missing or bad value is the default', () => {
    const base = { name: 's', source: 'a', target: 'b' };
    for (const mode of ['parallel', 'on', 'off'] as const) assert.equal(sanitizeSyncDefinition({ ...base, streaming: mode })?.streaming, mode);
    assert.equal(sanitizeSyncDefinition(base)?.streaming, 'parallel', 'missing');
    for (const bad of ['ON', 'true', '', 'parallel ', true, false, 1, null, ['on'], {}]) {
      assert.equal(sanitizeSyncDefinition({ ...base, streaming: bad })?.streaming, 'parallel', JSON.stringify(bad));
    }
    assert.equal(sanitizeSyncDefinition({ ...base, spoolDir: '/data/spool' })?.spoolDir, '/data/spool');
    assert.equal(sanitizeSyncDefinition({ ...base, spoolDir: ' /data/spool ' })?.spoolDir, '/data/spool', 'trimmed');
    assert.ok(!('spoolDir' in sanitizeSyncDefinition(base)!), 'missing: absent, the engine picks');
    for (const bad of ['', '   ', 'spool', './spool', '~/spool', 42, true, null, ['/data/spool']]) {
      assert.ok(!('spoolDir' in sanitizeSyncDefinition({ ...base, spoolDir: bad })!), JSON.stringify(bad));
    }
  });

  it('passes streaming and spoolDir to the engine as run --streaming and --spool-dir do', () => {
    const source = { url: 'postgresql://s/db', role: 'source' as const, configuredIn: 'connection "s"' };
    const target = { url: 'postgresql://t/db', role: 'target' as const, configuredIn: 'connection "t"' };
    const options = (extra: Record<string, unknown>) => syncEngineOptions(sanitizeSyncDefinition({ name: 's', source: 'a', target: 'b', publications: ['p'], ...extra })!, source, target);
    const pick = (o: ReturnType<typeof options>) => ({ streaming: o.streaming, applyWhileOpen: o.applyWhileOpen, spoolDir: o.spoolDir });
    assert.deepEqual(pick(options({})), { streaming: undefined, applyWhileOpen: undefined, spoolDir: undefined }, 'default: the engine\'s defaults (parallel)');
    assert.deepEqual(pick(options({ streaming: 'parallel' })), { streaming: undefined, applyWhileOpen: undefined, spoolDir: undefined });
    assert.deepEqual(pick(options({ streaming: 'on' })), { streaming: undefined, applyWhileOpen: false, spoolDir: undefined });
    assert.deepEqual(pick(options({ streaming: 'off' })), { streaming: false, applyWhileOpen: undefined, spoolDir: undefined });
    assert.deepEqual(pick(options({ streaming: 'sometimes', spoolDir: '/data/spool' })), { streaming: undefined, applyWhileOpen: undefined, spoolDir: '/data/spool' });
    const all = options({ tableSyncWorkers: 2, copyChunkSize: '64MiB', createTables: true, streaming: 'on', spoolDir: '/data/spool' });
    assert.deepEqual(all, {
      source: source.url, target: target.url, publications: ['p'], subscription: 's', tableMaps: [], tableSyncWorkers: 2, copyData: true,
      createTables: true, applyDdl: [], copyChunkBytes: 64 * 1024 ** 2, applyWhileOpen: false, spoolDir: '/data/spool',
      configuredIn: { source: 'connection "s"', target: 'connection "t"' },
    });
    assert.deepEqual(JSON.parse(JSON.stringify({ type: 'start', options: all })).options, all, 'the start message to the CLI carries them');
  });

  it('rejects entries without name, source or target', () => {
    for (const bad of [null, 'x', {}, { name: 's', source: 'a' }, { name: 's', target: 'b' }, { source: 'a', target: 'b' }, { name: 1, source: 'a', target: 'b' }]) {
      assert.equal(sanitizeSyncDefinition(bad), null, JSON.stringify(bad));
    }
  });

  it('keeps a table map\'s "columns" through the setting to the engine, and refuses a bad one', () => {
    const map = { source: { schema: 'public', table: 'users' }, target: { schema: 'app' }, columns: { Email: 'email_address', pw: null } };
    // The setting is stored as JSON: what comes back from settings.json is a parsed copy.
    const def = sanitizeSyncDefinition(JSON.parse(JSON.stringify({ name: 's', source: 'a', target: 'b', tableMaps: [map] })))!;
    const maps = syncTableMaps(def);
    assert.deepEqual(maps, [map]);
    assert.deepEqual(JSON.parse(JSON.stringify({ type: 'start', options: { tableMaps: maps } })).options.tableMaps, [map], 'the start message to the CLI carries it');
    const bad = sanitizeSyncDefinition({ name: 's', source: 'a', target: 'b', tableMaps: [{ source: { schema: 'public' }, target: { schema: 'app' }, columns: { a: 'b' } }] })!;
    assert.throws(() => syncTableMaps(bad), /whole-schema map/);
  });
});

describe('sync model: settings a folder may not be trusted with', () => {
  const base = { name: 's1', source: 'src', target: 'tgt', publications: ['pub'] };

  it('a folder\'s sync named like a user sync is left out, with a note naming the fix', () => {
    const { syncs, notes } = syncsFromSettings([base], [{ ...base, source: 'evil_src', target: 'evil_tgt' }, { ...base, name: 'own' }]);
    assert.deepEqual(syncs.map((s) => [s.def.name, s.scope, s.def.source]), [['s1', 'user', 'src'], ['own', 'workspace', 'src']]);
    assert.equal(notes.length, 1);
    assert.match(notes[0], /pgLiveSync\.syncs entry "s1" in this folder's settings is ignored: your user settings define a sync of that name already; rename one \(Preferences: Open Workspace Settings \(JSON\)\)/);
  });

  it('a sync needs approval when it or either connection comes from the folder; the approval is for exactly those servers', () => {
    const user = { scope: 'user' as const, identity: 'u' };
    const folder = { scope: 'workspace' as const, identity: 'w' };
    const def = sanitizeSyncDefinition(base)!;
    assert.equal(syncApprovalKey({ def, scope: 'user' }, user, user), null, 'all the user\'s own: no question');
    const keys = [
      syncApprovalKey({ def, scope: 'workspace' }, user, user),
      syncApprovalKey({ def, scope: 'user' }, folder, user),
      syncApprovalKey({ def, scope: 'user' }, user, folder),
    ];
    assert.ok(keys.every((k) => typeof k === 'string'), JSON.stringify(keys));
    const approved = syncApprovalKey({ def, scope: 'workspace' }, user, user);
    assert.notEqual(syncApprovalKey({ def, scope: 'workspace' }, user, { ...user, identity: 'elsewhere' }), approved, 'a target moved to another server needs approving again');
    assert.notEqual(syncApprovalKey({ def: { ...def, target: 'other' }, scope: 'workspace' }, user, user), approved);
    assert.equal(syncApprovalKey({ def, scope: 'workspace' }, user, user), approved, 'the same servers: approved once');
  });

  it('range-checks every field, naming the setting, the value and the fix', () => {
    assert.deepEqual(syncDefinitionProblems(base, 'user'), []);
    assert.deepEqual(syncDefinitionProblems({ ...base, tableSyncWorkers: 8, copyChunkSize: '64MiB', streaming: 'on', spoolDir: '/data/spool', copyData: false, applyDdl: ['add-column'], tableMaps: [{ source: { schema: 'public' }, target: { schema: 'm' } }] }, 'workspace'), []);
    assert.deepEqual(syncDefinitionProblems({ name: 'a', source: '', target: 't', attach: true }, 'user'), [], 'attached without a source');
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ tableSyncWorkers: -3 }, /"tableSyncWorkers" is -3; set a whole number from 1 to 64/],
      [{ tableSyncWorkers: 100000 }, /"tableSyncWorkers" is 100000/],
      [{ tableSyncWorkers: 2.5 }, /"tableSyncWorkers" is 2\.5/],
      [{ tableSyncWorkers: '4' }, /"tableSyncWorkers" is "4"/],
      [{ copyChunkSize: '-1MiB' }, /"copyChunkSize" is "-1MiB"; set a size of at least "1MiB", such as "256MiB"/],
      [{ copyChunkSize: 'lots' }, /"copyChunkSize" is "lots"/],
      [{ copyChunkSize: -5 }, /"copyChunkSize" is -5/],
      [{ copyChunkSize: '16kB' }, /"copyChunkSize" is "16kB"; set a size of at least "1MiB"/],
      [{ copyChunkSize: 4096 }, /"copyChunkSize" is 4096/],
      [{ copyChunkSize: 1e300 }, /"copyChunkSize" is 1e\+300/],
      [{ streaming: 'sometimes' }, /"streaming" is "sometimes"; set one of "parallel", "on", "off"/],
      [{ streaming: true }, /"streaming" is true/],
      [{ spoolDir: 'spool' }, /"spoolDir" is "spool"; set an absolute folder path/],
      [{ copyData: 'no' }, /"copyData" is "no"; set true or false/],
      [{ applyDdl: ['drop-table'] }, /"applyDdl" is \["drop-table"\]/],
      [{ publications: [] }, /"publications" is \[\]; list at least one publication/],
      [{ name: 'Bad Name\n; DROP' }, /"name" is "Bad Name\\n; DROP"; use 1 to 50 lowercase/],
      [{ tableMaps: [{ source: { schema: 'public' }, target: { schema: 'app' }, columns: { a: 'b' } }] }, /tableMaps\[0\]: .*whole-schema map/],
    ];
    for (const [over, expected] of cases) {
      const problems = syncDefinitionProblems({ ...base, ...over }, 'user');
      assert.equal(problems.length, 1, `${JSON.stringify(over)}: ${problems.join(' | ')}`);
      assert.match(problems[0], expected);
      assert.match(problems[0], /^pgLiveSync\.syncs entry ".*" in your user settings: .*\(Preferences: Open User Settings \(JSON\)\)$/s);
    }
    assert.match(syncDefinitionProblems({ ...base, tableSyncWorkers: 0 }, 'workspace')[0], /in this folder's settings: .*\(Preferences: Open Workspace Settings \(JSON\)\)$/);
  });

  it('syncsFromSettings keeps a broken entry (to show why it does not run) and notes one it cannot read', () => {
    const { syncs, notes } = syncsFromSettings([{ ...base, tableSyncWorkers: -1 }, { name: 'x' }, 'junk'], undefined);
    assert.deepEqual(syncs.map((s) => [s.def.name, s.problems.length]), [['s1', 1]]);
    assert.equal(notes.length, 2, notes.join('\n'));
    assert.ok(notes.every((n) => /is ignored$/.test(n)), notes.join('\n'));
  });
});

describe('sync model: growing lag raises a warning', () => {
  it('once past the line, with the setting and the cause; held until under half of it; never with 0', () => {
    let state = false;
    const step = (lag: number | null, threshold = 60) => {
      const r = lagAlert('orders_sync', lag, threshold, state);
      state = r.alerting;
      return r;
    };
    assert.deepEqual(step(10), { alerting: false, notify: null });
    assert.deepEqual(step(60), { alerting: false, notify: null }, 'at the line: not past it');
    const crossed = step(75);
    assert.equal(crossed.alerting, true);
    assert.match(crossed.notify ?? '', /^Sync orders_sync is 75 s behind its source \(the warning is set at 60 s in pgLiveSync.lagWarningSeconds\): .*Show Sync Progress/);
    assert.deepEqual(step(120), { alerting: true, notify: null }, 'one notification per crossing');
    assert.deepEqual(step(45), { alerting: true, notify: null }, 'held above half the line');
    assert.deepEqual(step(29), { alerting: false, notify: null }, 'cleared under half');
    assert.equal(step(61).notify !== null, true, 'a new crossing alerts again');
    state = false;
    assert.deepEqual(step(10_000, 0), { alerting: false, notify: null }, '0 turns it off');
    assert.deepEqual(step(null), { alerting: false, notify: null }, 'lag unknown');
  });
});
