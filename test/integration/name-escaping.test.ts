/**
 * Names read from a target's state table (which anyone who can write to that target controls)
 * stay inside their line: the List Sync Slots document and the CLI's `slots` and `status` output
 * hold no line that is a statement of its own.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { connect } from '../../src/engine/connection';
import { listSyncSlots, slotsDocument } from '../../src/engine/guardrails';
import { ensureStateSchema } from '../../src/engine/state';
import { splitStatements, statementSummary } from '../../src/extension/sqlSplit';
import { freshDatabases, runCli, startPair, type Pair } from '../harness/sync';

let pair: Pair;
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

const EVIL = 'x\n; DROP TABLE accounts; --';

/** A target whose state was written by someone else: names with line breaks of every kind. */
async function plantState(targetUrl: string): Promise<void> {
  const target = await connect({ url: targetUrl, role: 'target' });
  try {
    await ensureStateSchema(target);
    await target.query(
      `INSERT INTO _pg_live_sync.subscription (subname, slot_name, publications, source, last_error)
       VALUES ($1, 'pg_live_sync_owned', '{p}', 'h:5432/db', NULL), ('esc_status', 'pg_live_sync_esc_status', $2, $3, $4)`,
      [EVIL, [`p${EVIL}`], `src\r; DROP TABLE s; --`, `failed\u2028; DROP TABLE e; --`],
    );
    await target.query(
      `INSERT INTO _pg_live_sync.subscription_rel (subname, pubname, schemaname, tablename, rrelid, state, target_schema, target_table, last_error)
       VALUES ('esc_status', 'p', 'public', $1, 0, 'r', 'public', $2, $3)`,
      [`t${EVIL}`, `u\u2029; DROP TABLE u; --`, `boom\n; DROP TABLE b; --`],
    );
  } finally {
    await target.end();
  }
}

const statements = (sql: string) => splitStatements(sql).map((s) => statementSummary(s, Infinity));

describe('names from a target\'s state in documents and CLI output', () => {
  it('the List Sync Slots document and `slots` hold only the drop statements meant, one line per slot', { timeout: 120_000 }, async () => {
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'esc_slots');
    await plantState(targetUrl);
    for (const slot of ['pg_live_sync_owned', 'pg_live_sync_orphan']) await pair.source.query(db, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
    try {
      const listed = await runCli(['slots', '--source', sourceUrl, '--target', targetUrl]);
      assert.equal(listed.code, 0, listed.stderr);
      const lines = listed.stdout.trimEnd().split('\n');
      // The heading, two slots, the orphans' comment and its one drop statement.
      assert.equal(lines.length, 5, listed.stdout);
      assert.match(lines[2], /^pg_live_sync_owned +no .*subscription x\\n; DROP TABLE accounts; -- on /, listed.stdout);
      assert.deepEqual(lines.filter((l) => !/^(SLOT|pg_live_sync_|-- )/.test(l)), [`SELECT pg_drop_replication_slot('pg_live_sync_orphan');`]);

      const source = await connect({ url: sourceUrl, role: 'source' });
      const target = await connect({ url: targetUrl, role: 'target' });
      let doc: string;
      try {
        doc = slotsDocument(`target${EVIL}`, await listSyncSlots(source, [{ client: target, where: `t${EVIL}` }]), `the targets of this window's syncs (t${EVIL})`);
      } finally {
        await Promise.all([source.end(), target.end()]);
      }
      assert.match(doc, /pg_live_sync_owned .*subscription x\\n; DROP TABLE accounts; -- on t/, doc);
      assert.deepEqual(statements(doc), [`SELECT pg_drop_replication_slot('pg_live_sync_orphan')`], doc);
      for (const line of doc.trimEnd().split('\n')) assert.ok(line.startsWith('-- ') || line === `SELECT pg_drop_replication_slot('pg_live_sync_orphan');`, line);
    } finally {
      for (const slot of ['pg_live_sync_owned', 'pg_live_sync_orphan']) await pair.source.query(db, `SELECT pg_drop_replication_slot($1)`, [slot]);
    }
  });

  it('`status` keeps every name and error on its own line', { timeout: 60_000 }, async () => {
    const { targetUrl } = await freshDatabases(pair, 'esc_status');
    await plantState(targetUrl);
    const status = await runCli(['status', '--subscription', 'esc_status', '--target', targetUrl]);
    assert.equal(status.code, 0, status.stderr);
    const lines = status.stdout.trimEnd().split(/\r\n|[\n\r\u2028\u2029]/);
    for (const line of lines) assert.match(line, /^(subscription|applied LSN|lag|last error|TABLE|"public")/, status.stdout);
    assert.equal(lines.filter((l) => l.startsWith('"public"')).length, 1, status.stdout);
    assert.match(status.stdout, /last error +failed\\u2028; DROP TABLE e; --/);
  });
});
