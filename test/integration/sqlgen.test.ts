/** The generated SQL runs, and has the effect it says, on real servers. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { addTablesPlan, tableIdentities } from '../../src/engine/sqlgen';
import { splitStatements, statementSummary } from '../../src/extension/sqlSplit';
import pg from 'pg';
import { PASSWORD, PG_BIN, startCluster, SUPERUSER, type Cluster } from '../harness/cluster';
import { runCli } from '../harness/sync';

let untuned: Cluster;
let ready: Cluster;
before(async () => {
  [untuned, ready] = await Promise.all([
    startCluster({ name: 'untuned', walLevel: 'replica', settings: { max_wal_senders: 2, max_replication_slots: 2, wal_sender_timeout: 0 } }),
    startCluster({ name: 'ready' }),
  ]);
});
after(() => [untuned, ready].forEach((c) => c?.stop()));

/** Runs generated SQL the way psql would: statement by statement, comments skipped. */
async function runScript(cluster: Cluster, db: string, sql: string): Promise<void> {
  const statements = sql.split('\n').filter((l) => l.trim() && !l.trim().startsWith('--')).join('\n').split(/;\s*(?:--[^\n]*)?\n/).map((s) => s.trim()).filter(Boolean);
  for (const st of statements) await cluster.query(db, st);
}

/** Runs generated SQL with psql, as a user would; stops at the first error. */
function psql(cluster: Cluster, db: string, sql: string): void {
  const r = spawnSync(path.join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', dbUrl(cluster, db), '-f', '-'], { input: sql, encoding: 'utf8' });
  assert.equal(r.status, 0, `psql failed on:\n${sql}\n${r.stderr}`);
}

/** node-postgres decodes a URL's database with decodeURI, which leaves %3B alone: keep `;` literal. */
const dbUrl = (cluster: Cluster, db: string) => cluster.url(db).replace(/%3B/gi, ';');

/** cluster.query for a database whose name a URL cannot carry through node-postgres. */
async function queryDb(cluster: Cluster, database: string, text: string, params: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ host: '127.0.0.1', port: cluster.port, user: SUPERUSER, password: PASSWORD, database });
  await client.connect();
  try {
    return await client.query(text, params);
  } finally {
    await client.end();
  }
}

async function sql(cluster: Cluster, db: string, ...args: string[]): Promise<string> {
  const r = await runCli(['sql', ...args, '--source', dbUrl(cluster, db)]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

describe('pg-live-sync sql', () => {
  it('tuning: only what differs, why, and which needs a restart; after running it and a restart the server is ready', async () => {
    const text = await sql(untuned, 'postgres', 'tuning');
    assert.match(text, /ALTER SYSTEM SET wal_level = 'logical';/);
    assert.match(text, /ALTER SYSTEM SET max_wal_senders = '10';/);
    assert.match(text, /ALTER SYSTEM SET max_replication_slots = '10';/);
    assert.match(text, /ALTER SYSTEM SET wal_sender_timeout = '60s';/);
    assert.match(text, /RESTART NEEDED for: wal_level, max_wal_senders, max_replication_slots/);
    assert.match(text, /-- [^\n]*takes effect on reload\nALTER SYSTEM SET wal_sender_timeout/);
    assert.doesNotMatch(text, /password/i);
    await runScript(untuned, 'postgres', text);
    untuned.restart();
    const settings = await untuned.query('postgres', `SELECT name, setting FROM pg_settings WHERE name IN ('wal_level', 'max_wal_senders', 'max_replication_slots', 'wal_sender_timeout') ORDER BY name`);
    assert.deepEqual(settings.rows.map((r) => [r.name, r.setting]), [['max_replication_slots', '10'], ['max_wal_senders', '10'], ['wal_level', 'logical'], ['wal_sender_timeout', '60000']]);
    assert.match(await sql(untuned, 'postgres', 'tuning'), /Nothing to change/);
  });

  it('tuning on Amazon RDS gives the parameter-group steps instead of ALTER SYSTEM', async () => {
    await runScript(ready, 'postgres', `CREATE ROLE rds_superuser NOLOGIN;\nALTER SYSTEM SET wal_sender_timeout = 0;\nSELECT pg_reload_conf();\n`);
    try {
      const text = await sql(ready, 'postgres', 'tuning');
      assert.match(text, /parameter group/);
      assert.match(text, /wal_sender_timeout = 60s/);
      assert.doesNotMatch(text, /^ALTER SYSTEM/m);
    } finally {
      await runScript(ready, 'postgres', `DROP ROLE rds_superuser;\nALTER SYSTEM RESET wal_sender_timeout;\nSELECT pg_reload_conf();\n`);
    }
  });

  it('replica identity: nothing for a key, USING INDEX for a viable unique index, FULL otherwise; running it gives exactly that', async () => {
    await ready.createDatabase('ri');
    await ready.query('ri', `
      CREATE TABLE keyed (id int PRIMARY KEY);
      CREATE TABLE "Unique Ü" (code text NOT NULL, v int, CONSTRAINT "code key" UNIQUE (code));
      CREATE TABLE partial_only (code text, v int); CREATE UNIQUE INDEX partial_idx ON partial_only (code) WHERE v > 0;
      CREATE TABLE nullable_unique (code text UNIQUE);
      CREATE TABLE bare (v int);
      CREATE PUBLICATION pub FOR TABLE keyed, "Unique Ü", bare;`);
    const all = await sql(ready, 'ri', 'replica-identity');
    assert.match(all, /"public"\."keyed": uses its primary key; nothing to do/);
    assert.match(all, /ALTER TABLE "public"\."Unique Ü" REPLICA IDENTITY USING INDEX "code key";/);
    assert.match(all, /ALTER TABLE "public"\."partial_only" REPLICA IDENTITY FULL;/);
    assert.match(all, /ALTER TABLE "public"\."nullable_unique" REPLICA IDENTITY FULL;/);
    assert.match(all, /WARNING: FULL/);
    const onePub = await sql(ready, 'ri', 'replica-identity', '--publication', 'pub');
    assert.doesNotMatch(onePub, /partial_only/);
    await runScript(ready, 'ri', all);
    const idents = await ready.query('ri', `SELECT relname, relreplident::text AS r FROM pg_class WHERE relname IN ('keyed', 'Unique Ü', 'partial_only', 'nullable_unique', 'bare') ORDER BY relname`);
    assert.deepEqual(idents.rows.map((r) => [r.relname, r.r]), [['Unique Ü', 'i'], ['bare', 'f'], ['keyed', 'd'], ['nullable_unique', 'f'], ['partial_only', 'f']]);
    assert.match(await sql(ready, 'ri', 'replica-identity'), /Every table already has a usable replica identity/);
  });

  it('Add Table to Publication: a table without replica identity gets a warning and the statements that let its updates through', async () => {
    await ready.createDatabase('addtab');
    await ready.query('addtab', `
      CREATE TABLE keyed (id int PRIMARY KEY);
      CREATE TABLE "Unique Ü" (code text NOT NULL, v int, CONSTRAINT "code key" UNIQUE (code));
      CREATE TABLE bare (v int);
      INSERT INTO keyed VALUES (1); INSERT INTO "Unique Ü" VALUES ('a', 1); INSERT INTO bare VALUES (1);
      CREATE PUBLICATION pub;`);
    const client = new pg.Client({ connectionString: ready.url('addtab') });
    await client.connect();
    try {
      const tables = await tableIdentities(client);
      const keyedOnly = addTablesPlan('pub', tables.filter((t) => t.table === 'keyed'));
      assert.equal(keyedOnly.warning, null);
      assert.deepEqual(keyedOnly.identityFixes, []);
      const plan = addTablesPlan('pub', tables);
      assert.match(plan.warning ?? '', /^2 of these tables have no replica identity \("public"\."Unique Ü", "public"\."bare"\): once published, the source refuses every UPDATE and DELETE/);
      assert.deepEqual(plan.identityFixes, ['ALTER TABLE "public"."Unique Ü" REPLICA IDENTITY USING INDEX "code key";', 'ALTER TABLE "public"."bare" REPLICA IDENTITY FULL;']);
      // Added only: what the warning says happens.
      await client.query(plan.add);
      await assert.rejects(client.query(`UPDATE bare SET v = 2`), /does not have a replica identity and publishes updates/);
      await client.query(`ALTER PUBLICATION pub DROP TABLE keyed, "Unique Ü", bare`);
      // Added with the offered statements: updates and deletes go through.
      for (const st of [...plan.identityFixes, plan.add]) await client.query(st);
      await client.query(`UPDATE bare SET v = 2; UPDATE "Unique Ü" SET v = 2; DELETE FROM keyed`);
    } finally {
      await client.end();
    }
  });

  it('connector role: after running it (and setting a password) the role passes every source check', async () => {
    await ready.createDatabase('roles');
    await ready.query('roles', `CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY); CREATE TABLE public.t (id int PRIMARY KEY);
      CREATE PUBLICATION pub FOR TABLE sales.orders, public.t;`);
    const text = await sql(ready, 'roles', 'role', '--role', 'sync bot', '--schema', 'sales', '--schema', 'public');
    assert.match(text, /CREATE ROLE "sync bot" WITH LOGIN REPLICATION PASSWORD NULL;/);
    assert.doesNotMatch(text, /PASSWORD '/);
    await runScript(ready, 'roles', text);
    await ready.query('roles', `ALTER ROLE "sync bot" PASSWORD 'bot-pw'; CREATE TABLE sales.later (id int PRIMARY KEY);`);
    const privileges = await ready.query('roles', `SELECT has_table_privilege('sync bot', 'sales.later', 'SELECT') AS later, (SELECT rolreplication FROM pg_roles WHERE rolname = 'sync bot') AS repl`);
    assert.deepEqual(privileges.rows[0], { later: true, repl: true });
    await ready.createDatabase('roles_target');
    await ready.query('roles_target', `CREATE SCHEMA sales; CREATE TABLE sales.orders (id int PRIMARY KEY); CREATE TABLE public.t (id int PRIMARY KEY);`);
    const check = await runCli(['check', '--source', ready.url('roles', 'sync bot', 'bot-pw'), '--target', ready.url('roles_target'), '--publication', 'pub']);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    assert.doesNotMatch(check.stdout, /^error:/m);
  });

  it('names with a line break and SQL in them stay in their comments: psql and Run SQL run the output, nothing else runs', async () => {
    // Each name ends a `--` comment at its line break if written raw, and the rest would run.
    const evil = (what: string) => `${what}\n; DROP TABLE decoy; --`;
    const db = evil('sqlgen db');
    const role = evil('bot');
    await ready.createDatabase(db);
    await queryDb(ready, db, `CREATE TABLE decoy (id int);
      CREATE TABLE "${evil('bare')}" (v int);
      CREATE TABLE "${evil('uniq')}" (code text NOT NULL); CREATE UNIQUE INDEX "${evil('idx')}" ON "${evil('uniq')}" (code);
      CREATE PUBLICATION "${evil('pub')}" FOR TABLE "${evil('bare')}", "${evil('uniq')}";`);
    const scripts = [
      await sql(ready, db, 'tuning'),
      await sql(ready, db, 'replica-identity'),
      await sql(ready, db, 'replica-identity', '--publication', evil('pub')),
      await sql(ready, db, 'role', '--role', role, '--schema', 'public'),
    ];
    try {
      for (const text of scripts) {
        // Every statement (as the extension's Run SQL splits it) is one the generator means to write.
        for (const st of splitStatements(text)) assert.match(statementSummary(st), /^(ALTER TABLE|CREATE ROLE|GRANT|ALTER DEFAULT PRIVILEGES|SELECT)\b/, st);
        psql(ready, db, text);
        assert.equal((await queryDb(ready, db, `SELECT to_regclass('decoy') IS NOT NULL AS present`)).rows[0].present, true, `the decoy was dropped by:\n${text}`);
      }
      const idents = await queryDb(ready, db, `SELECT relreplident::text AS r FROM pg_class WHERE relname IN ($1, $2) ORDER BY relname`, [evil('bare'), evil('uniq')]);
      assert.deepEqual(idents.rows.map((r) => r.r), ['f', 'i']);
      assert.equal((await ready.query('postgres', 'SELECT count(*)::int AS n FROM pg_roles WHERE rolname = $1', [role])).rows[0].n, 1);
    } finally {
      await queryDb(ready, db, `DROP OWNED BY ${pgIdent(role)}; DROP ROLE ${pgIdent(role)}`).catch(() => undefined);
    }
  });
});

const pgIdent = (name: string) => `"${name.replace(/"/g, '""')}"`;
