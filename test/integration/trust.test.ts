/**
 * Whom the sync trusts (real CLI, real PostgreSQL 15):
 *  - the state schema: one pre-created by the target database's owner (not a superuser) with a
 *    trigger is refused before anything is written, so the trigger never runs as a superuser;
 *  - target tables a less trusted role owns: check warns about each; sql role prints the
 *    target's non-superuser role, and a sync runs as it;
 *  - the same database as source and target is refused by check and run, in one line;
 *  - a resume against another source (with a slot of the same name) is refused naming both, and
 *    state that predates the recorded source identity gets it on its next run.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { PASSWORD } from '../harness/cluster';
import { exitWithin, finish, freshDatabases, runCli, sameContents, startPair, tail, trackRuns, waitAllReady, waitCaughtUp, waitFor, type Pair } from '../harness/sync';

let pair: Pair;
const startRun = trackRuns();
before(async () => (pair = await startPair()));
after(() => pair?.stop());

const runArgs = (sourceUrl: string, targetUrl: string, sub: string, ...more: string[]) =>
  ['run', '--source', sourceUrl, '--target', targetUrl, '--subscription', sub, '--publication', 'pub', ...more];

/** A run that fails on its own: its exit code within 60 s and its output (killed if still running). */
async function failingRun(args: string[]): Promise<{ code: number | null | 'running'; output: string }> {
  const run = startRun(args);
  const code = await exitWithin(run, 60_000);
  if (code === 'running') await run.kill9();
  return { code, output: run.output() };
}

/** The single `pg-live-sync: error:` line of a failed run (and no password anywhere). */
function errorLine(output: string): string {
  assert.ok(!output.includes(PASSWORD), 'no password in the output');
  const lines = output.split('\n').filter((l) => l.startsWith('pg-live-sync: error:'));
  assert.equal(lines.length, 1, `one error line:\n${tail(output)}`);
  return lines[0];
}

const isSuper = async (role: string) => (await pair.target.query('postgres', `SELECT rolsuper FROM pg_roles WHERE rolname = $1`, [role])).rows[0].rolsuper as boolean;

describe('the state schema', () => {
  it('one the database owner created, with a trigger, is refused naming its owner; the trigger never runs as the sync', { timeout: 120_000 }, async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'stateowner', `CREATE TABLE t (id int PRIMARY KEY)`);
    await pair.source.query(db, `INSERT INTO t SELECT generate_series(1, 10); CREATE PUBLICATION pub FOR TABLE t;`);
    const owner = `owner_${db}`;
    await pair.target.query(db, `CREATE ROLE ${owner} LOGIN PASSWORD '${PASSWORD}'; ALTER DATABASE ${db} OWNER TO ${owner}; ALTER SCHEMA public OWNER TO ${owner};`);
    // As the owner: the state table the sync writes first, with a trigger that makes its owner a superuser.
    await pair.target.query(db, `SET ROLE ${owner};
      CREATE SCHEMA _pg_live_sync;
      CREATE TABLE _pg_live_sync.subscription (subname text PRIMARY KEY, slot_name text NOT NULL, publications text[] NOT NULL, source text NOT NULL,
        consistent_lsn pg_lsn, applied_lsn pg_lsn, applied_commit_time timestamptz, last_error text,
        created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now());
      CREATE FUNCTION public.escalate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'ALTER ROLE ${owner} SUPERUSER'; RETURN NEW; END $$;
      CREATE TRIGGER escalate BEFORE INSERT OR UPDATE ON _pg_live_sync.subscription FOR EACH ROW EXECUTE FUNCTION public.escalate();`);

    const refused = await failingRun(runArgs(sourceUrl, targetUrl, 'owned'));
    assert.equal(await isSuper(owner), false, 'the owner\'s trigger must not have run as the superuser');
    assert.equal(refused.code, 1, `the run must be refused:\n${tail(refused.output)}`);
    assert.match(errorLine(refused.output), new RegExp(`the sync's state schema _pg_live_sync on the target is owned by role "${owner}", not by "postgres", the role the sync connects as: .*DROP SCHEMA _pg_live_sync CASCADE.*ALTER SCHEMA _pg_live_sync OWNER TO "postgres";`));
    assert.equal((await pair.source.query(db, `SELECT count(*)::int AS n FROM pg_replication_slots WHERE database = current_database()`)).rows[0].n, 0, 'no slot created');

    // Readers refuse it too (a view there would run as whoever reads it).
    const status = await runCli(['status', '--subscription', 'owned', '--target', targetUrl]);
    assert.equal(status.code, 1, status.stdout + status.stderr);
    assert.match(status.stderr.trim(), new RegExp(`^pg-live-sync: error: the sync's state schema _pg_live_sync on the target is owned by role "${owner}"`));

    // Dropped as told, the next run creates its own and syncs.
    await pair.target.query(db, `DROP SCHEMA _pg_live_sync CASCADE`);
    const run = startRun(runArgs(sourceUrl, targetUrl, 'owned'));
    await waitAllReady(pair.target, db, 'owned', 1);
    const schemaOwner = await pair.target.query(db, `SELECT pg_get_userbyid(nspowner) AS o FROM pg_namespace WHERE nspname = '_pg_live_sync'`);
    assert.equal(schemaOwner.rows[0].o, 'postgres');
    assert.equal(await finish(run), 0, run.output());
    assert.equal(await isSuper(owner), false);
  });

  it('a table in it that another role owns is refused too', { timeout: 120_000 }, async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'stateforeign', `CREATE TABLE t (id int PRIMARY KEY)`);
    await pair.source.query(db, `INSERT INTO t VALUES (1); CREATE PUBLICATION pub FOR TABLE t;`);
    const first = startRun(runArgs(sourceUrl, targetUrl, 'foreign'));
    await waitAllReady(pair.target, db, 'foreign', 1);
    assert.equal(await finish(first), 0, first.output());
    const other = `other_${db}`;
    await pair.target.query(db, `CREATE ROLE ${other}; ALTER TABLE _pg_live_sync.subscription_rel OWNER TO ${other};`);
    const refused = await failingRun(runArgs(sourceUrl, targetUrl, 'foreign'));
    assert.equal(refused.code, 1, tail(refused.output));
    assert.match(errorLine(refused.output), new RegExp(`_pg_live_sync\\."subscription_rel" in the sync's state schema on the target is owned by role "${other}", not by "postgres".*ALTER TABLE _pg_live_sync\\."subscription_rel" OWNER TO "postgres";`));
  });
});

describe('target tables a less trusted role owns', () => {
  it('check warns about each; sql role prints the target role, and a sync runs as it (not a superuser)', { timeout: 180_000 }, async () => {
    const schema = `CREATE TABLE plain (id int PRIMARY KEY, v text); CREATE TABLE audited (id int PRIMARY KEY, v text); CREATE TABLE mine (id int PRIMARY KEY)`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'tblowner', schema);
    await pair.source.query(db, `INSERT INTO plain VALUES (1, 'a'); INSERT INTO audited VALUES (1, 'a'); INSERT INTO mine VALUES (1); CREATE PUBLICATION pub FOR ALL TABLES;`);
    const app = `app_${db}`;
    await pair.target.query(db, `CREATE ROLE ${app};
      ALTER TABLE plain OWNER TO ${app}; ALTER TABLE audited OWNER TO ${app};
      CREATE TABLE audit_log (id int, at timestamptz DEFAULT now()); ALTER TABLE audit_log OWNER TO ${app};
      CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.audit_log (id) VALUES (NEW.id); RETURN NEW; END $$;
      ALTER FUNCTION public.audit() OWNER TO ${app};
      CREATE TRIGGER audit AFTER INSERT ON audited FOR EACH ROW EXECUTE FUNCTION public.audit();
      ALTER TABLE audited ENABLE ALWAYS TRIGGER audit;`);

    const check = await runCli(['check', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub']);
    assert.equal(check.code, 0, check.stdout + check.stderr);
    const warnings = check.stdout.split('\n').filter((l) => /^warning: target table .* is owned by role/.test(l));
    assert.equal(warnings.length, 2, check.stdout);
    assert.match(check.stdout, new RegExp(`^warning: target table "public"\\."plain" is owned by role "${app}", not by the sync's role "postgres", a superuser: .*; connect to the target as a role that is not a superuser \\(pg-live-sync sql role --target prints one\\)`, 'm'));
    assert.match(check.stdout, /^warning: target table "public"\."audited" .*\(there now: ENABLE ALWAYS trigger audit\)/m);
    assert.doesNotMatch(check.stdout, /"public"\."mine" is owned/);

    // The role sql role prints for the target, made as printed (uncommented), owning nothing.
    const role = await runCli(['sql', 'role', '--source', sourceUrl, '--target', targetUrl, '--role', 'syncer', '--schema', 'public']);
    assert.equal(role.code, 0, role.stderr);
    const targetPart = role.stdout.slice(role.stdout.indexOf('-- ON THE TARGET'));
    assert.match(targetPart, /^-- {5}GRANT SET ON PARAMETER session_replication_role TO "syncer";/m);
    const statements = targetPart.split('\n').filter((l) => l.startsWith('--     ')).map((l) => l.slice('--     '.length)).join('\n');
    await pair.target.query(db, `DROP ROLE IF EXISTS syncer`);
    await pair.target.query(db, statements);
    await pair.target.query(db, `ALTER ROLE syncer PASSWORD '${PASSWORD}'`);
    const asSyncer = pair.target.url(db, 'syncer', PASSWORD);

    const run = startRun(runArgs(sourceUrl, asSyncer, 'nonsuper'));
    await waitAllReady(pair.target, db, 'nonsuper', 3, 90_000);
    await pair.source.query(db, `INSERT INTO audited VALUES (2, 'b'); UPDATE plain SET v = 'b'; INSERT INTO mine VALUES (2);`);
    await waitCaughtUp(pair, db, 'nonsuper', 60_000, run);
    for (const t of ['plain', 'audited', 'mine']) assert.ok(await sameContents(pair, db, t), t);
    assert.match(run.output(), /warn.*target table "public"\."audited" is owned by role .*not by the sync's role "syncer": .*\(there now: ENABLE ALWAYS trigger audit/);
    assert.equal(await finish(run), 0, run.output());
    await pair.target.query(db, `DROP OWNED BY syncer; DROP ROLE syncer`);
  });
});

describe('the same database as source and target', () => {
  it('is refused by check and run, in one line, with and without a copy', { timeout: 120_000 }, async () => {
    const { db, sourceUrl } = await freshDatabases(pair, 'samedb', `CREATE TABLE t (id int PRIMARY KEY)`);
    await pair.source.query(db, `INSERT INTO t VALUES (1); CREATE PUBLICATION pub FOR TABLE t;`);
    // Another spelling of the same database: the URLs differ, the database does not.
    const sameUrl = `${sourceUrl}?application_name=elsewhere`;
    const expected = new RegExp(`the source 127\\.0\\.0\\.1:${pair.source.port}/${db} and the target 127\\.0\\.0\\.1:${pair.source.port}/${db} are the same database \\(database "${db}" \\(OID \\d+\\) of the server with system identifier \\d+\\): .*give --target another database`);

    const check = await runCli(['check', '--source', sourceUrl, '--target', sameUrl, '--publication', 'pub']);
    assert.equal(check.code, 1, check.stdout + check.stderr);
    assert.equal(check.stdout.split('\n').filter((l) => l.startsWith('error:')).length, 1, check.stdout);
    assert.match(check.stdout, new RegExp(`^error: ${expected.source}`, 'm'));

    for (const copy of ['true', 'false']) {
      const r = await failingRun(runArgs(sourceUrl, sameUrl, `same_${copy}`, '--copy-data', copy));
      assert.equal(r.code, 1, `--copy-data ${copy}: the run must be refused:\n${tail(r.output)}`);
      assert.match(errorLine(r.output), expected);
    }
    assert.equal((await pair.source.query(db, `SELECT count(*)::int AS n FROM t`)).rows[0].n, 1, 'nothing applied');
    assert.equal((await pair.source.query(db, `SELECT count(*)::int AS n FROM pg_replication_slots WHERE database = current_database()`)).rows[0].n, 0, 'no slot created');
    assert.equal((await pair.source.query(db, `SELECT to_regclass('_pg_live_sync.subscription') IS NULL AS none`)).rows[0].none, true, 'no state created');
  });
});

describe('resuming against another source', () => {
  it('with a slot of the same name is refused naming both; state from before the identity was recorded gets it', { timeout: 240_000 }, async () => {
    const sub = 'moved_source';
    const slot = `pg_live_sync_${sub}`;
    const schema = `CREATE TABLE t (id int PRIMARY KEY, v text)`;
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'othersrc', schema);
    await pair.source.query(db, `INSERT INTO t SELECT g, 'src' FROM generate_series(1, 20) g; CREATE PUBLICATION pub FOR TABLE t;`);
    const first = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 1);
    await waitCaughtUp(pair, db, sub, 60_000, first);
    assert.equal(await finish(first), 0, first.output());
    const sourceIdentity = (await pair.source.query(db, `SELECT (SELECT system_identifier FROM pg_control_system())::text AS s, oid::int8 AS o, datname AS d FROM pg_database WHERE datname = current_database()`)).rows[0];

    // Another server (here: the target cluster) with the same publication and a slot of the same name.
    const otherDb = `${db}_other`;
    await pair.target.createDatabase(otherDb);
    await pair.target.query(otherDb, `${schema}; CREATE PUBLICATION pub FOR TABLE t;`);
    await pair.target.query(otherDb, `SELECT pg_create_logical_replication_slot('${slot}', 'pgoutput')`);
    await pair.target.query(otherDb, `INSERT INTO t SELECT g, 'other' FROM generate_series(1000, 1010) g`);
    const refused = await failingRun(runArgs(pair.target.url(otherDb), targetUrl, sub));
    assert.equal(refused.code, 1, `the run must be refused:\n${tail(refused.output)}`);
    assert.match(errorLine(refused.output), new RegExp(`the --source 127\\.0\\.0\\.1:${pair.target.port}/${otherDb} is database "${otherDb}" \\(OID \\d+\\) of the server with system identifier \\d+, but subscription "${sub}" on this target streams from database "${db}" \\(OID ${sourceIdentity.o}\\) of the server with system identifier ${sourceIdentity.s}: .*give the sync's own source in --source, or sync from this one under another --subscription`));
    assert.equal((await pair.target.query(db, `SELECT count(*)::int AS n FROM t WHERE v = 'other'`)).rows[0].n, 0, 'nothing of the other source applied');
    const recorded = (await pair.target.query(db, `SELECT source_system_identifier AS s, source_database_oid::int8 AS o, source_database AS d FROM _pg_live_sync.subscription`)).rows[0];
    assert.deepEqual(recorded, sourceIdentity, 'the source is recorded at the start');

    // drop with the wrong --source leaves that server's slot alone.
    const drop = await runCli(['drop', '--subscription', sub, '--source', pair.target.url(otherDb), '--target', `${targetUrl}`], {}, 60_000);
    assert.equal(drop.code, 0, drop.stderr);
    assert.match(drop.stderr, new RegExp(`the --source .* is database "${otherDb}" .* not database "${db}" .*its slots there are left in place`));
    assert.equal((await pair.target.query(otherDb, `SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = $1`, [slot])).rows[0].n, 1, 'the other server keeps its slot');
    await pair.target.query(otherDb, `SELECT pg_drop_replication_slot('${slot}')`);
    await pair.source.query(db, `SELECT pg_drop_replication_slot('${slot}')`);
  });

  it('state from before the source identity columns is migrated and filled by the next run', { timeout: 240_000 }, async () => {
    const sub = 'old_state';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'oldstate', `CREATE TABLE t (id int PRIMARY KEY, v text)`);
    await pair.source.query(db, `INSERT INTO t SELECT g, 'a' FROM generate_series(1, 20) g; CREATE PUBLICATION pub FOR TABLE t;`);
    const first = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitAllReady(pair.target, db, sub, 1);
    assert.equal(await finish(first), 0, first.output());
    // As an older version left it: no such columns.
    await pair.target.query(db, `ALTER TABLE _pg_live_sync.subscription DROP COLUMN source_system_identifier, DROP COLUMN source_database_oid, DROP COLUMN source_database`);
    const status = await runCli(['status', '--subscription', sub, '--target', targetUrl]);
    assert.equal(status.code, 0, status.stderr);
    await pair.source.query(db, `INSERT INTO t VALUES (21, 'after upgrade')`);
    const next = startRun(runArgs(sourceUrl, targetUrl, sub));
    await waitCaughtUp(pair, db, sub, 60_000, next);
    assert.ok(await sameContents(pair, db, 't'));
    await waitFor('the source identity to be recorded', async () =>
      (await pair.target.query(db, `SELECT source_system_identifier IS NOT NULL AND source_database_oid IS NOT NULL AND source_database = $1 AS ok FROM _pg_live_sync.subscription`, [db])).rows[0].ok);
    assert.equal(await finish(next), 0, next.output());
  });
});
