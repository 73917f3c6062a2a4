/**
 * The extension's connections against a real server: the URL built from a setting entry and a
 * stored password (or PGPASSWORD, or ~/.pgpass) connects, Test Connection's probe, its errors,
 * and what the Connections tree lists.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect, type Endpoint } from '../../src/engine/connection';
import { listPublishedTables } from '../../src/engine/catalog';
import { SyncError } from '../../src/engine/errors';
import { listPublications, probeServer, publicationTables, userTables } from '../../src/engine/probe';
import { ConnectionSecrets, connectionUrl, describeConnection, sanitizeConfig, type ConnectionConfig } from '../../src/extension/connectionModel';
import { PASSWORD, startCluster, type Cluster } from '../harness/cluster';
import { startProxy } from '../harness/proxy';

let cluster: Cluster;
let tmp: string;
before(async () => {
  cluster = await startCluster({ name: 'conn' });
  tmp = mkdtempSync(path.join(os.tmpdir(), 'pgls-conn-test-'));
});
after(() => {
  cluster?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

let dbCounter = 0;
async function freshDatabase(prefix: string): Promise<string> {
  const db = `${prefix} ü ${process.pid}_${++dbCounter}`;
  await cluster.createDatabase(db);
  return db;
}

function config(db: string, user = 'postgres'): ConnectionConfig {
  return { name: 'src', host: '127.0.0.1', port: cluster.port, user, database: db };
}

/** As the extension builds it for the connection named "src". */
function endpoint(url: string): Endpoint {
  return { url, role: '"src" connection', configuredIn: 'connection "src" (Edit Connection)' };
}

const PW_VARS = ['PGPASSWORD', 'PGPASSFILE', 'HOME'] as const;

/** Runs `body` with PGPASSWORD, PGPASSFILE and HOME as given (undefined: unset), then restores them. */
async function withEnv<T>(vars: Partial<Record<(typeof PW_VARS)[number], string | undefined>>, body: () => Promise<T>): Promise<T> {
  const saved = Object.fromEntries(PW_VARS.map((k) => [k, process.env[k]]));
  for (const k of PW_VARS) {
    const v = vars[k];
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  try {
    return await body();
  } finally {
    for (const k of PW_VARS) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
  }
}

/** The database the connection really reached, as the server sees it. */
async function currentDatabase(url: string): Promise<string> {
  const client = await connect(endpoint(url));
  try {
    return (await client.query('SELECT current_database() AS db')).rows[0].db;
  } finally {
    await client.end();
  }
}

describe('connecting with a connection entry', () => {
  it('connectionUrl with the stored password connects; the probe reports version, wal_level, replication and latency', async () => {
    const db = await freshDatabase('probe');
    await cluster.query(db, `CREATE ROLE "plain ü" LOGIN PASSWORD 'plain:pw@/#%'; CREATE ROLE repl LOGIN REPLICATION PASSWORD 'repl-pw'`);
    const url = connectionUrl(config(db), PASSWORD);
    const probe = await probeServer(endpoint(url));
    assert.match(probe.serverVersion, /^15\./);
    assert.equal(probe.walLevel, 'logical');
    assert.equal(probe.canReplicate, true);
    assert.ok(probe.latencyMs > 0 && probe.latencyMs < 10_000, `latency ${probe.latencyMs}`);
    assert.equal(await currentDatabase(url), db);

    const plain = await probeServer(endpoint(connectionUrl(config(db, 'plain ü'), 'plain:pw@/#%')));
    assert.equal(plain.canReplicate, false, 'a role without REPLICATION cannot replicate');
    const repl = await probeServer(endpoint(connectionUrl(config(db, 'repl'), 'repl-pw')));
    assert.equal(repl.canReplicate, true, 'a REPLICATION role can');
  });

  it('without a password in the URL, PGPASSWORD is used', async () => {
    const db = await freshDatabase('pgpassword');
    const url = connectionUrl(config(db), null);
    assert.equal(new URL(url).password, '');
    await withEnv({ PGPASSWORD: PASSWORD, HOME: tmp }, async () => {
      assert.equal(await currentDatabase(url), db);
    });
    await withEnv({ PGPASSWORD: 'not-the-password', HOME: tmp }, async () => {
      await assert.rejects(probeServer(endpoint(url)), (e: unknown) => e instanceof SyncError && e.code === 'auth');
    });
  });

  it('without a password anywhere else, ~/.pgpass (mode 0600) under HOME, or PGPASSFILE, is used', async () => {
    const db = await freshDatabase('pgpass');
    const url = connectionUrl(config(db), null);
    const home = mkdtempSync(path.join(tmp, 'home-'));
    const line = `127.0.0.1:${cluster.port}:*:postgres:${PASSWORD}\n`;

    // Nothing to read: refused.
    await withEnv({ HOME: home }, async () => {
      await assert.rejects(probeServer(endpoint(url)), SyncError);
    });

    writeFileSync(path.join(home, '.pgpass'), `# other servers first\nother.example.com:5432:*:postgres:nope\n127.0.0.1:1:*:postgres:wrong-port\n${line}`);
    chmodSync(path.join(home, '.pgpass'), 0o600);
    await withEnv({ HOME: home }, async () => {
      assert.equal(await currentDatabase(url), db);
    });

    const passfile = path.join(tmp, 'passfile');
    writeFileSync(passfile, line);
    chmodSync(passfile, 0o600);
    await withEnv({ HOME: path.join(tmp, 'no-such-home'), PGPASSFILE: passfile }, async () => {
      assert.equal(await currentDatabase(url), db);
    });

    // Readable by others: ignored, as libpq does.
    chmodSync(passfile, 0o644);
    await withEnv({ HOME: path.join(tmp, 'no-such-home'), PGPASSFILE: passfile }, async () => {
      await assert.rejects(probeServer(endpoint(url)), SyncError);
    });
  });

  it('a wrong password: one line that names the connection and Edit Connection, without the password', async () => {
    const db = await freshDatabase('wrongpw');
    const wrong = 'Wr0ng:p@ss/ü#%';
    const url = connectionUrl(config(db), wrong);
    const err = await probeServer(endpoint(url)).then(() => null, (e: unknown) => e);
    assert.ok(err instanceof SyncError, `a SyncError, not ${String(err)}`);
    assert.equal(err.code, 'auth');
    assert.doesNotMatch(err.message, /\n/);
    assert.match(err.message, /password authentication failed for user "postgres"/);
    assert.match(err.message, /"src" connection/);
    assert.match(err.message, /connection "src" \(Edit Connection\)/);
    assert.ok(err.message.includes(`127.0.0.1:${cluster.port}/`), err.message);
    for (const secret of [wrong, encodeURIComponent(wrong), PASSWORD]) assert.ok(!err.message.includes(secret), `message leaks "${secret}": ${err.message}`);
  });
});

describe('stored passwords and shadowing connections', () => {
  it('a workspace connection named like a user connection but reaching another host gets no stored password; the user connection keeps it', async () => {
    const db = await freshDatabase('shadow');
    // "Another host": a proxy on another port, so the server sees exactly what would be sent there.
    const proxy = await startProxy(cluster.port);
    try {
      const storage = new Map<string, string>();
      const secrets = new ConnectionSecrets({ get: async (k) => storage.get(k), store: async (k, v) => void storage.set(k, v), delete: async (k) => void storage.delete(k) });
      const userEntry = config(db);
      const workspaceEntry: ConnectionConfig = { ...config(db), port: proxy.port };
      await secrets.set(userEntry, PASSWORD);
      await withEnv({ HOME: tmp }, async () => {
        const shadowPassword = await secrets.get(workspaceEntry, [workspaceEntry, userEntry]);
        assert.equal(shadowPassword, null);
        const err = await probeServer(endpoint(connectionUrl(workspaceEntry, shadowPassword))).then(() => null, (e: unknown) => e);
        assert.ok(err instanceof SyncError && err.code === 'auth', `the server behind the other host asks for a password it never got: ${String(err)}`);
        assert.match(err.message, /asks user "postgres" for a password and none was given/);
        assert.equal(await currentDatabase(connectionUrl(userEntry, await secrets.get(userEntry, [workspaceEntry, userEntry]))), db);
      });
      assert.ok(proxy.accepted > 0, 'the workspace connection did reach the other host');
    } finally {
      await proxy.close();
    }
  });
});

describe('a workspace URI whose query sends pg elsewhere', () => {
  it('?port= (or ?host=) behind the user connection\'s authority gets no stored password, and its description shows where pg goes', async () => {
    const db = await freshDatabase('query');
    const proxy = await startProxy(cluster.port);
    try {
      const storage = new Map<string, string>();
      const secrets = new ConnectionSecrets({ get: async (k) => storage.get(k), store: async (k, v) => void storage.set(k, v), delete: async (k) => void storage.delete(k) });
      const userEntry: ConnectionConfig = { name: 'src', uri: `postgresql://postgres@127.0.0.1:${cluster.port}/${encodeURIComponent(db)}?sslmode=disable` };
      await secrets.set(userEntry, PASSWORD);
      // The same authority: only the query says "the other host".
      const workspaceEntry = sanitizeConfig({ name: 'src', uri: `${userEntry.uri}&port=${proxy.port}` })!;
      assert.equal(describeConnection(workspaceEntry), `127.0.0.1:${proxy.port}/${db}`);
      await withEnv({ HOME: tmp }, async () => {
        const shadowPassword = await secrets.get(workspaceEntry, [workspaceEntry, userEntry]);
        assert.equal(shadowPassword, null);
        const err = await probeServer(endpoint(connectionUrl(workspaceEntry, shadowPassword))).then(() => null, (e: unknown) => e);
        assert.ok(err instanceof SyncError && err.code === 'auth', `the server behind the other port asks for a password it never got: ${String(err)}`);
        assert.equal(await currentDatabase(connectionUrl(userEntry, await secrets.get(userEntry, [workspaceEntry, userEntry]))), db);
      });
      assert.ok(proxy.accepted > 0, 'pg did connect where the query said');
    } finally {
      await proxy.close();
    }
  });
});

describe('what the Connections tree lists', () => {
  it('publications, their tables with replica identity, and user tables, never system schemas or _pg_live_sync', async () => {
    const db = await freshDatabase('tree');
    await cluster.query(db, `
      CREATE TABLE t_pk (id int PRIMARY KEY, v text);
      CREATE TABLE t_idx (code text NOT NULL, v int);
      CREATE UNIQUE INDEX "t_idx code" ON t_idx (code);
      ALTER TABLE t_idx REPLICA IDENTITY USING INDEX "t_idx code";
      CREATE TABLE t_full (v int);
      ALTER TABLE t_full REPLICA IDENTITY FULL;
      CREATE TABLE t_none (v int);
      CREATE TABLE t_unique_only (code text NOT NULL UNIQUE);
      CREATE TABLE t_nothing (id int PRIMARY KEY);
      ALTER TABLE t_nothing REPLICA IDENTITY NOTHING;
      CREATE SCHEMA "Sales Ü";
      CREATE TABLE "Sales Ü"."Orders" (id int PRIMARY KEY);
      CREATE TABLE measures (id int, at date) PARTITION BY RANGE (at);
      CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
      CREATE VIEW v_pk AS SELECT * FROM t_pk;
      CREATE SCHEMA _pg_live_sync;
      CREATE TABLE _pg_live_sync.subscription (subname text PRIMARY KEY);
      CREATE PUBLICATION pub FOR TABLE t_pk, t_idx, t_full, t_none, t_unique_only, t_nothing, "Sales Ü"."Orders";
      CREATE PUBLICATION all_pub FOR ALL TABLES;
      CREATE PUBLICATION empty_pub;
      CREATE PUBLICATION state_pub FOR TABLE _pg_live_sync.subscription;`);
    const client = await connect(endpoint(cluster.url(db)));
    try {
      const pubs = await listPublications(client);
      assert.deepEqual(pubs, [
        // all tables: the 7 of pub and the one partition (not the partitioned parent), not _pg_live_sync.
        { name: 'all_pub', allTables: true, tableCount: 8 },
        { name: 'empty_pub', allTables: false, tableCount: 0 },
        { name: 'pub', allTables: false, tableCount: 7 },
        { name: 'state_pub', allTables: false, tableCount: 0 },
      ]);

      const tables = await publicationTables(client, 'pub');
      assert.deepEqual(tables.map((t) => [t.schema, t.table, t.identity, t.identityIndex]), [
        ['Sales Ü', 'Orders', 'primary key', null],
        ['public', 't_full', 'full', null],
        ['public', 't_idx', 'index', 't_idx code'],
        ['public', 't_none', 'none', null],
        ['public', 't_nothing', 'none', null],
        ['public', 't_pk', 'primary key', null],
        ['public', 't_unique_only', 'none', null],
      ]);
      const all = await publicationTables(client, 'all_pub');
      assert.equal(all.length, 8);
      assert.ok(!all.some((t) => t.schema === '_pg_live_sync' || t.schema.startsWith('pg_') || t.schema === 'information_schema'), JSON.stringify(all));
      assert.deepEqual(await publicationTables(client, 'state_pub'), []);
      assert.deepEqual(await publicationTables(client, 'no_such_pub'), []);

      const user = await userTables(client);
      assert.deepEqual(user.map((t) => `${t.schema}.${t.table}`), [
        'Sales Ü.Orders', 'public.measures', 'public.t_full', 'public.t_idx', 'public.t_none', 'public.t_nothing', 'public.t_pk', 'public.t_unique_only',
      ]);
    } finally {
      await client.end();
    }
  });
});

describe('size estimates the panel shows progress against', () => {
  it('come from pg_class for plain tables and add up the leaf partitions of a partitioned one (analyzed at every level)', async () => {
    const db = await freshDatabase('estimates');
    const client = await connect(endpoint(connectionUrl(config(db), PASSWORD)));
    try {
      // Engine sessions pin search_path to pg_catalog: this one creates the fixtures, so it says where.
      await client.query(`SET search_path = public; CREATE TABLE plain (id int PRIMARY KEY, pad text);
        INSERT INTO plain SELECT g, repeat('x', 100) FROM generate_series(1, 5000) g;
        CREATE TABLE parted (id int, pad text, PRIMARY KEY (id)) PARTITION BY RANGE (id);
        CREATE TABLE parted_a PARTITION OF parted FOR VALUES FROM (0) TO (1000);
        CREATE TABLE parted_b PARTITION OF parted FOR VALUES FROM (1000) TO (5000) PARTITION BY RANGE (id);
        CREATE TABLE parted_b1 PARTITION OF parted_b FOR VALUES FROM (1000) TO (2000);
        CREATE TABLE parted_b2 PARTITION OF parted_b FOR VALUES FROM (2000) TO (5000);
        INSERT INTO parted SELECT g, repeat('y', 100) FROM generate_series(0, 2999) g;
        -- ANALYZE of a partitioned table also gives the root and the middle level reltuples of their
        -- own (the sum of their leaves): only the leaves may be added up.
        ANALYZE plain; ANALYZE parted;
        CREATE PUBLICATION est FOR TABLE plain, parted WITH (publish_via_partition_root = true);`);
      const tables = new Map((await listPublishedTables(client, ['est'])).map((t) => [t.table, t]));
      assert.equal(tables.get('plain')?.approximateRows, 5000);
      assert.ok((tables.get('plain')?.approximateSize ?? 0) > 5000 * 100, 'plain size from pg_table_size');
      assert.equal(tables.get('parted')?.approximateRows, 3000);
      assert.ok((tables.get('parted')?.approximateSize ?? 0) > 3000 * 100, 'partitioned size adds up its partitions');
    } finally {
      await client.end();
    }
  });
});
