/**
 * The sync's state lives in the target, schema `_pg_live_sync`, so that progress commits in the
 * same transaction as the data it describes: a crash can never leave them disagreeing.
 */
import type pg from 'pg';
import type { MissingRowCounts } from './apply';
import { tableKey } from './connection';
import type { Lsn } from './lsn';
import { quoteIdent } from './connection';
import { SyncError } from './errors';
import type { DatabaseIdentity } from './identity';
import { formatLsn, parseLsn } from './lsn';
import type { ColumnMap, SyncedTable, TableProgress, TableState } from './types';

export const STATE_SCHEMA = '_pg_live_sync';

/** Run only in a schema the sync's role owns (see assertStateOwner): nobody else can have put a table there. */
const DDL = `
CREATE TABLE IF NOT EXISTS _pg_live_sync.subscription (
  subname         text PRIMARY KEY,
  slot_name       text NOT NULL,
  publications    text[] NOT NULL,
  source          text NOT NULL,
  consistent_lsn  pg_lsn,
  applied_lsn     pg_lsn,
  applied_commit_time timestamptz,
  last_error      text,
  created_at      timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS _pg_live_sync.subscription_rel (
  subname          text NOT NULL,
  pubname          text NOT NULL,
  schemaname       text NOT NULL,
  tablename        text NOT NULL,
  rrelid           oid NOT NULL,
  state            "char" NOT NULL CHECK (state IN ('i', 'd', 'f', 's', 'r')),
  lsn              pg_lsn,
  updated_at       timestamptz NOT NULL DEFAULT now(),
  last_error       text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  rows_copied      bigint NOT NULL DEFAULT 0,
  approximate_rows bigint,
  bytes_copied     bigint NOT NULL DEFAULT 0,
  approximate_size bigint,
  target_schema    text NOT NULL,
  target_table     text NOT NULL,
  PRIMARY KEY (subname, schemaname, tablename)
);
ALTER TABLE _pg_live_sync.subscription_rel ADD COLUMN IF NOT EXISTS removed_at timestamptz;
COMMENT ON COLUMN _pg_live_sync.subscription_rel.removed_at IS 'set when the table left the publication: no longer synced, its target data stays';
ALTER TABLE _pg_live_sync.subscription_rel ADD COLUMN IF NOT EXISTS target_relid oid;
COMMENT ON COLUMN _pg_live_sync.subscription_rel.target_relid IS 'OID of the target table the copy filled: a table dropped and created again gets another one and is copied afresh';
ALTER TABLE _pg_live_sync.subscription_rel ADD COLUMN IF NOT EXISTS resync_requested_at timestamptz;
COMMENT ON COLUMN _pg_live_sync.subscription_rel.resync_requested_at IS 'set by pg-live-sync resync: the run (the running one, or the next) copies the table afresh and clears it';
ALTER TABLE _pg_live_sync.subscription ADD COLUMN IF NOT EXISTS acks_applied_only boolean NOT NULL DEFAULT false;
ALTER TABLE _pg_live_sync.subscription_rel ADD COLUMN IF NOT EXISTS column_map jsonb;
COMMENT ON COLUMN _pg_live_sync.subscription_rel.column_map IS '--table-map "columns" the target data was copied under (source column -> target column, null for left out); NULL for none';
ALTER TABLE _pg_live_sync.subscription_rel ADD COLUMN IF NOT EXISTS missing_updates bigint NOT NULL DEFAULT 0;
ALTER TABLE _pg_live_sync.subscription_rel ADD COLUMN IF NOT EXISTS missing_deletes bigint NOT NULL DEFAULT 0;
COMMENT ON COLUMN _pg_live_sync.subscription_rel.missing_updates IS 'source UPDATEs that found no row on the target (changed outside the sync), counted in the transaction that applied them';
COMMENT ON COLUMN _pg_live_sync.subscription_rel.missing_deletes IS 'source DELETEs that found no row on the target (changed outside the sync), counted in the transaction that applied them';
ALTER TABLE _pg_live_sync.subscription_rel ADD COLUMN IF NOT EXISTS synced_columns text[];
COMMENT ON COLUMN _pg_live_sync.subscription_rel.synced_columns IS 'the source columns the target table was last seen receiving: a column outside it is new on the source (schema drift), one in it that the target lacks was renamed or dropped there; NULL when not yet recorded';
COMMENT ON COLUMN _pg_live_sync.subscription.acks_applied_only IS 'true once runs acknowledge to the slot no more than applied_lsn: a slot confirmed past applied_lsn was then moved by another sync';
CREATE TABLE IF NOT EXISTS _pg_live_sync.run_lock (
  subname         text PRIMARY KEY,
  backend_pid     int NOT NULL,
  backend_start   timestamptz NOT NULL,
  host            text NOT NULL,
  os_pid          int NOT NULL,
  run_id          text NOT NULL,
  locked_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE _pg_live_sync.run_lock IS 'the run that took the subscription''s lock last: its target session (backend_pid, backend_start) and its process (host, os_pid, run_id), so a later run can tell that session is left over from a run that is gone';
CREATE TABLE IF NOT EXISTS _pg_live_sync.copy_chunk (
  subname         text NOT NULL,
  schemaname      text NOT NULL,
  tablename       text NOT NULL,
  chunk           int NOT NULL,
  chunks          int NOT NULL,
  first_page      bigint NOT NULL,
  end_page        bigint,
  consistent_lsn  pg_lsn NOT NULL,
  target_relid    oid,
  rows_copied     bigint,
  bytes_copied    bigint,
  done_at         timestamptz,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subname, schemaname, tablename, chunk)
);
COMMENT ON TABLE _pg_live_sync.copy_chunk IS 'a table copied in page ranges (ctid >= (first_page,0) AND ctid < (end_page,0)); a chunk''s rows and its done_at commit together';
COMMENT ON COLUMN _pg_live_sync.copy_chunk.end_page IS 'NULL for the last chunk: open-ended, so pages added after the plan are covered';
COMMENT ON COLUMN _pg_live_sync.copy_chunk.consistent_lsn IS 'the slot position whose snapshot the plan belongs to: only a run importing that snapshot may resume it';
CREATE TABLE IF NOT EXISTS _pg_live_sync.copy_snapshot (
  subname         text NOT NULL,
  slot_name       text NOT NULL,
  consistent_lsn  pg_lsn NOT NULL,
  snapshot        text NOT NULL,
  holder_pid      int NOT NULL,
  holder_os_pid   int,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (subname, slot_name)
);
COMMENT ON TABLE _pg_live_sync.copy_snapshot IS 'a slot''s copy snapshot kept importable by a pg-live-sync hold-snapshot process (source backend holder_pid), so a chunked copy cut short resumes in it';
ALTER TABLE _pg_live_sync.subscription ADD COLUMN IF NOT EXISTS source_system_identifier text;
ALTER TABLE _pg_live_sync.subscription ADD COLUMN IF NOT EXISTS source_database_oid oid;
ALTER TABLE _pg_live_sync.subscription ADD COLUMN IF NOT EXISTS source_database text;
COMMENT ON COLUMN _pg_live_sync.subscription.source_system_identifier IS 'pg_control_system().system_identifier of the source server the sync started on (kept by a promoted standby): a run against another server is refused; NULL in state from an older version until its next run';
COMMENT ON COLUMN _pg_live_sync.subscription.source_database_oid IS 'OID of the source database the sync started on (kept across a rename)';
COMMENT ON COLUMN _pg_live_sync.subscription.source_database IS 'name of that source database when last run, for messages';`;

export interface SubscriptionRow {
  subname: string;
  slotName: string;
  publications: string[];
  source: string;
  consistentLsn: Lsn | null;
  appliedLsn: Lsn | null;
  appliedCommitTime: Date | null;
  lastError: string | null;
  /** False for state written by a version that acknowledged idle positions it never recorded. */
  acksAppliedOnly: boolean;
  /** The source database the sync streams from; nulls in state from before it was recorded. */
  sourceIdentity?: { systemId: string | null; oid: number | null; name: string | null };
}

export async function ensureStateSchema(client: pg.Client): Promise<void> {
  // Two runs creating the schema at once would race on the catalog; serialise them.
  await client.query('BEGIN');
  try {
    await client.query(`SELECT pg_advisory_xact_lock(hashtext('pg_live_sync.ddl'))`);
    // Without IF NOT EXISTS: a schema someone else creates after the check fails this, not us.
    if (!(await assertStateOwner(client, 'writer'))) await client.query(`CREATE SCHEMA ${STATE_SCHEMA}`);
    await client.query(DDL);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/** Whether there is state to read; refuses state that another role could have put code into (see assertStateOwner). */
export async function stateSchemaExists(client: pg.Client): Promise<boolean> {
  if (!(await assertStateOwner(client, 'reader'))) return false;
  const r = await client.query(`SELECT to_regclass('_pg_live_sync.subscription_rel') IS NOT NULL AS present`);
  return r.rows[0].present as boolean;
}

/**
 * The state schema runs no one else's code: whoever owns it, or a relation in it, can add a
 * trigger, a rule or a view that runs as the role writing (or reading) the state, which is often
 * a superuser. A run writes only state its own role owns; a reader (status, drop, ...) reads state
 * owned by itself or by a superuser. Returns whether the schema exists.
 */
export async function assertStateOwner(client: pg.Client, as: 'writer' | 'reader'): Promise<boolean> {
  const r = await client.query(
    `SELECT current_user AS me, o.rolname AS owner, o.rolsuper AS owner_super,
            (SELECT json_agg(json_build_object('name', c.relname, 'owner', ro.rolname, 'super', ro.rolsuper) ORDER BY c.relname)
               FROM pg_class c JOIN pg_roles ro ON ro.oid = c.relowner
              WHERE c.relnamespace = n.oid AND ro.rolname <> current_user) AS foreign_relations
       FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner
      WHERE n.nspname = $1`,
    [STATE_SCHEMA],
  );
  if (r.rowCount === 0) return false;
  const row = r.rows[0];
  const trusted = (owner: string, isSuper: boolean) => owner === row.me || (as === 'reader' && isSuper);
  const refuse = (what: string, owner: string, alter: string) => {
    const fix = as === 'reader'
      ? `read it as that role (connect to the target as "${owner}"), or if no sync of yours runs as "${owner}", drop it: DROP SCHEMA ${STATE_SCHEMA} CASCADE;`
      : `if you did not create it, drop it (DROP SCHEMA ${STATE_SCHEMA} CASCADE; the sync's progress goes with it) and run again; otherwise, after checking it for triggers, rules and views, make ${quoteIdent(row.me)} its owner: ${alter} OWNER TO ${quoteIdent(row.me)};`;
    return new SyncError(`${what} on the target is owned by role "${owner}", not by "${row.me}", the role ${as === 'reader' ? 'reading it' : 'the sync connects as'}: code that role put there would run with ${as === 'reader' ? 'your' : "the sync's"} privileges; ${fix}`, 'state_owner');
  };
  if (!trusted(row.owner, row.owner_super)) throw refuse(`the sync's state schema ${STATE_SCHEMA}`, row.owner, `ALTER SCHEMA ${STATE_SCHEMA}`);
  const foreign = ((row.foreign_relations ?? []) as { name: string; owner: string; super: boolean }[]).find((f) => !trusted(f.owner, f.super));
  if (foreign) {
    const name = `${STATE_SCHEMA}.${quoteIdent(foreign.name)}`;
    throw refuse(`${name} in the sync's state schema`, foreign.owner, `ALTER TABLE ${name}`);
  }
  return true;
}

/** Held for the life of a run: a second `run` of the same subscription is refused, not interleaved. */
export async function tryLockSubscription(client: pg.Client, subname: string): Promise<boolean> {
  const r = await client.query(`SELECT pg_try_advisory_lock(hashtext('pg_live_sync.sub'), hashtext($1)) AS ok`, [subname]);
  return r.rows[0].ok as boolean;
}

export async function loadSubscription(client: pg.Client, subname: string): Promise<SubscriptionRow | null> {
  const r = await client.query(
    `SELECT subname, slot_name, publications, source, consistent_lsn::text, applied_lsn::text, applied_commit_time, last_error, acks_applied_only,
            to_jsonb(s) ->> 'source_system_identifier' AS source_system_identifier, (to_jsonb(s) ->> 'source_database_oid')::int8 AS source_database_oid,
            to_jsonb(s) ->> 'source_database' AS source_database
       FROM _pg_live_sync.subscription s WHERE subname = $1`,
    [subname],
  );
  if (r.rowCount === 0) return null;
  const row = r.rows[0];
  return {
    subname: row.subname,
    slotName: row.slot_name,
    publications: row.publications,
    source: row.source,
    consistentLsn: row.consistent_lsn ? parseLsn(row.consistent_lsn) : null,
    appliedLsn: row.applied_lsn ? parseLsn(row.applied_lsn) : null,
    appliedCommitTime: row.applied_commit_time,
    lastError: row.last_error,
    acksAppliedOnly: row.acks_applied_only,
    sourceIdentity: {
      systemId: row.source_system_identifier ?? null,
      oid: row.source_database_oid === null ? null : Number(row.source_database_oid),
      name: row.source_database ?? null,
    },
  };
}

/** The source database a sync streams from, recorded at its start (or, for older state, at its next run). */
export async function recordSourceIdentity(client: pg.Client, subname: string, source: DatabaseIdentity): Promise<void> {
  await client.query(
    `UPDATE _pg_live_sync.subscription SET source_system_identifier = $2, source_database_oid = $3, source_database = $4, updated_at = now() WHERE subname = $1`,
    [subname, source.systemId, source.oid, source.name],
  );
}

/**
 * Starts the subscription's state afresh: every table in state `i`. Committed before the slot is
 * created, so the row is this target's claim on the slot: a crash between the two leaves a row
 * without `consistent_lsn`, and the next run here knows the slot left behind is its own.
 */
export async function resetSubscription(
  client: pg.Client,
  sub: { subname: string; slotName: string; publications: string[]; source: string },
  tables: SyncedTable[],
): Promise<void> {
  await client.query('BEGIN');
  try {
    await deleteSubscriptionRows(client, sub.subname);
    await client.query(
      `INSERT INTO _pg_live_sync.subscription (subname, slot_name, publications, source, acks_applied_only) VALUES ($1, $2, $3, $4, true)`,
      [sub.subname, sub.slotName, sub.publications, sub.source],
    );
    for (const t of tables) {
      await client.query(
        `INSERT INTO _pg_live_sync.subscription_rel
           (subname, pubname, schemaname, tablename, rrelid, state, approximate_rows, approximate_size, target_schema, target_table, column_map)
         VALUES ($1, $2, $3, $4, $5, 'i', $6, $7, $8, $9, $10)`,
        [sub.subname, t.publications[0], t.source.schema, t.source.table, t.relid, t.approximateRows, t.approximateSize, t.target.schema, t.target.table, columnMapJson(t.columnMap)],
      );
    }
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/** A table that joined the publication while running, or came back after leaving it: start at `i`. */
export async function upsertTableRow(client: pg.Client, subname: string, t: SyncedTable): Promise<void> {
  await client.query(
    `INSERT INTO _pg_live_sync.subscription_rel
       (subname, pubname, schemaname, tablename, rrelid, state, approximate_rows, approximate_size, target_schema, target_table, column_map)
     VALUES ($1, $2, $3, $4, $5, 'i', $6, $7, $8, $9, $10)
     ON CONFLICT (subname, schemaname, tablename) DO UPDATE
       SET pubname = EXCLUDED.pubname, rrelid = EXCLUDED.rrelid, state = 'i', lsn = NULL, rows_copied = 0, bytes_copied = 0,
           approximate_rows = EXCLUDED.approximate_rows, approximate_size = EXCLUDED.approximate_size,
           target_schema = EXCLUDED.target_schema, target_table = EXCLUDED.target_table, target_relid = NULL, column_map = EXCLUDED.column_map,
           removed_at = NULL, last_error = NULL, resync_requested_at = NULL, updated_at = now()`,
    [subname, t.publications[0], t.source.schema, t.source.table, t.relid, t.approximateRows, t.approximateSize, t.target.schema, t.target.table, columnMapJson(t.columnMap)],
  );
}

function columnMapJson(map: ColumnMap): string | null {
  return Object.keys(map).length === 0 ? null : JSON.stringify(map);
}

/**
 * Inside the copy's transaction: the column map the copied rows were written under, and so what
 * the stream and verify read the table through from then on.
 */
export async function recordColumnMap(client: pg.Client, subname: string, t: SyncedTable): Promise<void> {
  await client.query(
    `UPDATE _pg_live_sync.subscription_rel SET column_map = $4::jsonb WHERE subname = $1 AND schemaname = $2 AND tablename = $3`,
    [subname, t.source.schema, t.source.table, columnMapJson(t.columnMap)],
  );
}

/** A table not copied yet takes the map of the run that will copy it. */
export async function setColumnMapBeforeCopy(client: pg.Client, subname: string, table: { schema: string; table: string }, map: ColumnMap): Promise<void> {
  await client.query(
    `UPDATE _pg_live_sync.subscription_rel SET column_map = $4::jsonb WHERE subname = $1 AND schemaname = $2 AND tablename = $3 AND state = 'i'`,
    [subname, table.schema, table.table, columnMapJson(map)],
  );
}

/**
 * Each table's recorded column map ({} for none); `held` when target data depends on it (copied
 * or being copied, and no resync asked for that would copy it afresh).
 */
export async function loadColumnMaps(client: pg.Client, subname: string): Promise<{ schema: string; table: string; columnMap: ColumnMap; held: boolean }[]> {
  const r = await client.query(
    `SELECT schemaname, tablename, column_map, state <> 'i' AND resync_requested_at IS NULL AND removed_at IS NULL AS held
       FROM _pg_live_sync.subscription_rel WHERE subname = $1`,
    [subname],
  );
  return r.rows.map((row) => ({ schema: row.schemaname, table: row.tablename, columnMap: (row.column_map ?? {}) as ColumnMap, held: row.held }));
}

/** The same map whatever the order of its entries. */
export function sameColumnMap(a: ColumnMap, b: ColumnMap): boolean {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && Object.hasOwn(b, k) && a[k] === b[k]);
}

/** A table that cannot be synced yet: shown with its error, retried later. */
export async function upsertTableError(client: pg.Client, subname: string, t: { schema: string; table: string; relid: number; publication: string; target: { schema: string; table: string } }, error: string): Promise<void> {
  await client.query(
    `INSERT INTO _pg_live_sync.subscription_rel (subname, pubname, schemaname, tablename, rrelid, state, target_schema, target_table, last_error)
     VALUES ($1, $2, $3, $4, $5, 'i', $6, $7, $8)
     ON CONFLICT (subname, schemaname, tablename) DO UPDATE
       SET state = 'i', lsn = NULL, last_error = EXCLUDED.last_error, removed_at = NULL, updated_at = now()`,
    [subname, t.publication, t.schema, t.table, t.relid, t.target.schema, t.target.table, error],
  );
}

/** Records why a table is not syncing; its state is left as it is so the next attempt resumes. */
export async function setTableError(client: pg.Client, subname: string, t: { schema: string; table: string }, error: string | null): Promise<void> {
  await client.query(
    `UPDATE _pg_live_sync.subscription_rel SET last_error = $4, updated_at = now() WHERE subname = $1 AND schemaname = $2 AND tablename = $3`,
    [subname, t.schema, t.table, error],
  );
}

export async function markTableRemoved(client: pg.Client, subname: string, t: { schema: string; table: string }): Promise<void> {
  await client.query(
    `UPDATE _pg_live_sync.subscription_rel SET removed_at = now(), updated_at = now()
      WHERE subname = $1 AND schemaname = $2 AND tablename = $3 AND removed_at IS NULL`,
    [subname, t.schema, t.table],
  );
}

export async function deleteSubscriptionRows(client: pg.Client, subname: string): Promise<void> {
  if (await hasChunkTables(client)) {
    await client.query(`DELETE FROM _pg_live_sync.copy_chunk WHERE subname = $1`, [subname]);
    await client.query(`DELETE FROM _pg_live_sync.copy_snapshot WHERE subname = $1`, [subname]);
  }
  await client.query(`DELETE FROM _pg_live_sync.subscription_rel WHERE subname = $1`, [subname]);
  await client.query(`DELETE FROM _pg_live_sync.subscription WHERE subname = $1`, [subname]);
}

/**
 * State from an older version may hold an `applied_lsn` behind the slot (it acknowledged idle
 * positions without recording them): take the slot's position, which skipped nothing of ours.
 */
export async function adoptSlotPosition(client: pg.Client, subname: string, confirmed: Lsn | null): Promise<void> {
  await client.query(
    `UPDATE _pg_live_sync.subscription
        SET applied_lsn = GREATEST(applied_lsn, consistent_lsn, $2::pg_lsn), acks_applied_only = true, updated_at = now()
      WHERE subname = $1`,
    [subname, confirmed === null ? null : formatLsn(confirmed)],
  );
}

export async function setConsistentLsn(client: pg.Client, subname: string, lsn: Lsn): Promise<void> {
  await client.query(`UPDATE _pg_live_sync.subscription SET consistent_lsn = $2, updated_at = now() WHERE subname = $1`, [subname, formatLsn(lsn)]);
}

export async function setSubscriptionError(client: pg.Client, subname: string, error: string | null): Promise<void> {
  await client.query(`UPDATE _pg_live_sync.subscription SET last_error = $2, updated_at = now() WHERE subname = $1`, [subname, error]);
}

/** Written inside the apply transaction: the position and the changes it covers commit together. */
export async function writeAppliedLsn(client: pg.Client, subname: string, lsn: Lsn, commitTimeMicros: bigint | null, missing: MissingRowCounts | null = null): Promise<void> {
  const [sql, params] = appliedLsnStatement(subname, lsn, commitTimeMicros, missing);
  await client.query(sql, params);
}

/**
 * writeAppliedLsn as a statement to pipeline, adding the group's changes that found no row to
 * their tables' counts. `missing` is read when the statement is sent, after every statement of
 * the group before it has answered (see Applier.missingRowCounts).
 */
export function appliedLsnStatement(subname: string, lsn: Lsn, commitTimeMicros: bigint | null, missing: MissingRowCounts | null = null): [string, unknown[]] {
  return [
    `WITH missing AS (
       UPDATE _pg_live_sync.subscription_rel r
          SET missing_updates = r.missing_updates + m.updates, missing_deletes = r.missing_deletes + m.deletes
         FROM jsonb_to_recordset($4::jsonb) AS m(schema text, "table" text, updates bigint, deletes bigint)
        WHERE r.subname = $1 AND r.schemaname = m.schema AND r.tablename = m."table")
     UPDATE _pg_live_sync.subscription
        SET applied_lsn = $2, applied_commit_time = COALESCE(to_timestamp($3::float8 / 1e6), applied_commit_time), updated_at = now()
      WHERE subname = $1`,
    [subname, formatLsn(lsn), commitTimeMicros === null ? null : commitTimeMicros.toString(), missing],
  ];
}

/** Records the source columns a table's target receives (see synced_columns). */
export async function recordSyncedColumns(client: pg.Client, subname: string, table: { schema: string; table: string }, columns: string[]): Promise<void> {
  await client.query(
    `UPDATE _pg_live_sync.subscription_rel SET synced_columns = $4 WHERE subname = $1 AND schemaname = $2 AND tablename = $3 AND synced_columns IS DISTINCT FROM $4`,
    [subname, table.schema, table.table, columns],
  );
}

/** Per table (tableKey), the columns recorded by recordSyncedColumns. */
export async function loadSyncedColumns(client: pg.Client, subname: string): Promise<Map<string, string[]>> {
  const r = await client.query(
    `SELECT schemaname, tablename, synced_columns FROM _pg_live_sync.subscription_rel WHERE subname = $1 AND synced_columns IS NOT NULL`,
    [subname],
  );
  return new Map(r.rows.map((row) => [tableKey(row.schemaname, row.tablename), row.synced_columns as string[]]));
}

export async function setTableState(
  client: pg.Client,
  subname: string,
  table: { schema: string; table: string },
  state: TableState,
  extra: { lsn?: Lsn; rowsCopied?: number; bytesCopied?: number; lastError?: string | null } = {},
): Promise<void> {
  await client.query(
    `UPDATE _pg_live_sync.subscription_rel
        SET state = $4, updated_at = now(),
            lsn = COALESCE($5::pg_lsn, lsn),
            rows_copied = COALESCE($6::bigint, rows_copied),
            bytes_copied = COALESCE($7::bigint, bytes_copied),
            last_error = CASE WHEN $8::boolean THEN $9 ELSE last_error END
      WHERE subname = $1 AND schemaname = $2 AND tablename = $3`,
    [
      subname, table.schema, table.table, state,
      extra.lsn === undefined ? null : formatLsn(extra.lsn),
      extra.rowsCopied ?? null, extra.bytesCopied ?? null,
      extra.lastError !== undefined, extra.lastError ?? null,
    ],
  );
}

/** A table handed to the main stream at `lsn` is ready once the main stream has applied past it: s -> r. */
export async function promoteCaughtUpTables(client: pg.Client, subname: string, appliedLsn: Lsn): Promise<number> {
  const r = await client.query(
    `UPDATE _pg_live_sync.subscription_rel SET state = 'r', updated_at = now()
      WHERE subname = $1 AND state = 's' AND lsn <= $2::pg_lsn AND removed_at IS NULL`,
    [subname, formatLsn(appliedLsn)],
  );
  return r.rowCount ?? 0;
}

/** Interim copy progress, from outside the copy transaction; only while the table is still copying. */
export async function writeCopyProgress(client: pg.Client, subname: string, rows: { schema: string; table: string; rowsCopied: number; bytesCopied: number }[]): Promise<void> {
  if (rows.length === 0) return;
  await client.query(
    `UPDATE _pg_live_sync.subscription_rel r
        SET rows_copied = p.rows_copied, bytes_copied = p.bytes_copied, updated_at = now()
       FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS p(schemaname, tablename, rows_copied, bytes_copied)
      WHERE r.subname = $1 AND r.schemaname = p.schemaname AND r.tablename = p.tablename AND r.state = 'd'`,
    [subname, rows.map((r) => r.schema), rows.map((r) => r.table), rows.map((r) => r.rowsCopied), rows.map((r) => r.bytesCopied)],
  );
}

/** State written by a version before chunked copies lacks their tables until a run migrates it; status reads it as it is. */
async function hasChunkTables(client: pg.Client): Promise<boolean> {
  const r = await client.query(`SELECT to_regclass('_pg_live_sync.copy_snapshot') IS NOT NULL AS present`);
  return r.rows[0].present as boolean;
}

export async function loadTableProgress(client: pg.Client, subname: string): Promise<TableProgress[]> {
  const chunks = (await hasChunkTables(client))
    ? `LEFT JOIN LATERAL (
         SELECT count(*) FILTER (WHERE done_at IS NOT NULL) AS done, count(*) AS total FROM _pg_live_sync.copy_chunk k
          WHERE k.subname = r.subname AND k.schemaname = r.schemaname AND k.tablename = r.tablename) c ON r.state <> 'i'`
    : `LEFT JOIN (SELECT NULL::bigint AS done, NULL::bigint AS total) c ON false`;
  const r = await client.query(
    `SELECT schemaname, tablename, target_schema, target_table, state, lsn::text, rows_copied, bytes_copied,
            approximate_rows, approximate_size, last_error, removed_at IS NOT NULL AS removed, c.done AS chunks_done, c.total AS chunks_total,
            -- Read through to_jsonb: state from an older version, which status reads as it is, lacks the columns.
            to_jsonb(r) -> 'missing_updates' AS missing_updates, to_jsonb(r) -> 'missing_deletes' AS missing_deletes
       FROM _pg_live_sync.subscription_rel r ${chunks}
      WHERE subname = $1 ORDER BY schemaname, tablename`,
    [subname],
  );
  return r.rows.map((row) => ({
    schema: row.schemaname,
    table: row.tablename,
    targetSchema: row.target_schema,
    targetTable: row.target_table,
    state: row.state,
    lsn: row.lsn ? parseLsn(row.lsn) : null,
    removed: row.removed,
    rowsCopied: Number(row.rows_copied),
    bytesCopied: Number(row.bytes_copied),
    approximateRows: Number(row.approximate_rows ?? 0),
    approximateSize: Number(row.approximate_size ?? 0),
    lastError: row.last_error,
    missingUpdates: Number(row.missing_updates ?? 0),
    missingDeletes: Number(row.missing_deletes ?? 0),
    ...(Number(row.chunks_total ?? 0) > 0 ? { chunks: { done: Number(row.chunks_done), total: Number(row.chunks_total) } } : {}),
  }));
}

/**
 * Sends one table back to `i` so the next run copies it afresh through its own slot (a resync).
 * Only while no run holds the subscription: the caller stops the run first.
 */
export async function resetTableForResync(client: pg.Client, subname: string, table: { schema: string; table: string }): Promise<boolean> {
  const r = await client.query(
    `UPDATE _pg_live_sync.subscription_rel
        SET state = 'i', lsn = NULL, rows_copied = 0, bytes_copied = 0, last_error = NULL, target_relid = NULL,
            resync_requested_at = NULL, updated_at = now()
      WHERE subname = $1 AND schemaname = $2 AND tablename = $3 AND removed_at IS NULL`,
    [subname, table.schema, table.table],
  );
  return (r.rowCount ?? 0) > 0;
}

/** Asks for a resync from outside a run: the running engine (or the next run) takes it up. */
export async function requestResync(client: pg.Client, subname: string, table: { schema: string; table: string }): Promise<boolean> {
  const r = await client.query(
    `UPDATE _pg_live_sync.subscription_rel SET resync_requested_at = now(), updated_at = now()
      WHERE subname = $1 AND schemaname = $2 AND tablename = $3 AND removed_at IS NULL`,
    [subname, table.schema, table.table],
  );
  return (r.rowCount ?? 0) > 0;
}

export async function resyncPending(client: pg.Client, subname: string, table: { schema: string; table: string }): Promise<boolean> {
  const r = await client.query(
    `SELECT 1 FROM _pg_live_sync.subscription_rel WHERE subname = $1 AND schemaname = $2 AND tablename = $3 AND resync_requested_at IS NOT NULL`,
    [subname, table.schema, table.table],
  );
  return (r.rowCount ?? 0) > 0;
}

const TARGET_RELID = `to_regclass(format('%I.%I', target_schema, target_table))::oid`;

/** Inside the copy's transaction: the target table this copy filled. */
export async function recordTargetRelid(client: pg.Client, subname: string, table: { schema: string; table: string }): Promise<void> {
  await client.query(
    `UPDATE _pg_live_sync.subscription_rel SET target_relid = ${TARGET_RELID} WHERE subname = $1 AND schemaname = $2 AND tablename = $3`,
    [subname, table.schema, table.table],
  );
}

/**
 * Tables the stream applies (`s`, `r`) that need a fresh copy: asked for by pg-live-sync resync,
 * or whose target table was dropped and created again under its name (another OID: the copied
 * rows are gone). A target table that is missing is not listed: applying to it stops the run
 * with the fix. Rows without a recorded OID (no copy, or state from an older version) record the
 * current one.
 */
export async function tablesToResync(client: pg.Client, subname: string): Promise<{ schema: string; table: string; target: { schema: string; table: string }; requested: boolean }[]> {
  await client.query(
    `UPDATE _pg_live_sync.subscription_rel SET target_relid = ${TARGET_RELID}
      WHERE subname = $1 AND state IN ('s', 'r') AND target_relid IS NULL AND removed_at IS NULL`,
    [subname],
  );
  const r = await client.query(
    `SELECT schemaname, tablename, target_schema, target_table, resync_requested_at IS NOT NULL AS requested
       FROM _pg_live_sync.subscription_rel
      WHERE subname = $1 AND removed_at IS NULL
        AND (resync_requested_at IS NOT NULL OR (state IN ('s', 'r') AND target_relid <> ${TARGET_RELID}))`,
    [subname],
  );
  return r.rows.map((row) => ({
    schema: row.schemaname,
    table: row.tablename,
    target: { schema: row.target_schema, table: row.target_table },
    requested: row.requested,
  }));
}

/** A page range of a table copied in chunks; endPage null: to the end of the table. */
export interface ChunkRange {
  chunk: number;
  firstPage: number;
  endPage: number | null;
}

export interface ChunkRow extends ChunkRange {
  rows: number;
  bytes: number;
  done: boolean;
}

/** Inside the transaction that empties the target table: the plan its chunks follow. */
export async function writeChunkPlan(client: pg.Client, subname: string, table: { schema: string; table: string }, targetName: string, consistentLsn: Lsn, chunks: ChunkRange[]): Promise<void> {
  await deleteChunkPlan(client, subname, table);
  await client.query(
    `INSERT INTO _pg_live_sync.copy_chunk (subname, schemaname, tablename, chunk, chunks, first_page, end_page, consistent_lsn, target_relid)
     SELECT $1, $2, $3, c.chunk, $5, c.first_page, c.end_page, $6, to_regclass($4)::oid
       FROM unnest($7::int[], $8::bigint[], $9::bigint[]) AS c(chunk, first_page, end_page)`,
    [subname, table.schema, table.table, targetName, chunks.length, formatLsn(consistentLsn), chunks.map((c) => c.chunk), chunks.map((c) => c.firstPage), chunks.map((c) => c.endPage)],
  );
}

export async function deleteChunkPlan(client: pg.Client, subname: string, table: { schema: string; table: string }): Promise<void> {
  await client.query(`DELETE FROM _pg_live_sync.copy_chunk WHERE subname = $1 AND schemaname = $2 AND tablename = $3`, [subname, table.schema, table.table]);
}

/**
 * The chunk plan of a table cut short while copying in the snapshot at `consistentLsn`, into the
 * same target table (same OID) as now; null when there is none to resume.
 */
export async function loadChunkPlan(client: pg.Client, subname: string, table: { schema: string; table: string }, targetName: string, consistentLsn: Lsn): Promise<ChunkRow[] | null> {
  const r = await client.query(
    `SELECT k.chunk, k.chunks, k.first_page, k.end_page, k.rows_copied, k.bytes_copied, k.done_at IS NOT NULL AS done,
            k.consistent_lsn = $4::pg_lsn AND k.target_relid IS NOT DISTINCT FROM to_regclass($5)::oid AND r.state = 'd' AS usable
       FROM _pg_live_sync.copy_chunk k
       JOIN _pg_live_sync.subscription_rel r USING (subname, schemaname, tablename)
      WHERE k.subname = $1 AND k.schemaname = $2 AND k.tablename = $3 ORDER BY k.chunk`,
    [subname, table.schema, table.table, formatLsn(consistentLsn), targetName],
  );
  if (r.rowCount === 0 || r.rows.some((row) => !row.usable) || Number(r.rows[0].chunks) !== r.rowCount) return null;
  return r.rows.map((row) => ({
    chunk: Number(row.chunk),
    firstPage: Number(row.first_page),
    endPage: row.end_page === null ? null : Number(row.end_page),
    rows: Number(row.rows_copied ?? 0),
    bytes: Number(row.bytes_copied ?? 0),
    done: row.done,
  }));
}

/**
 * Inside the chunk's transaction: marks it done, sums the table's done chunks into rows_copied and
 * bytes_copied, and when none is left moves the table to `f` at `lsn`. The table's row is locked
 * first, so the chunks of a table finish one after the other and the next one's count (a new
 * statement, so a new snapshot) sees every chunk committed before it: exactly one finds none left.
 * Returns whether the table is complete.
 */
export async function finishChunk(client: pg.Client, subname: string, table: { schema: string; table: string }, chunk: number, rows: number, bytes: number, lsn: Lsn): Promise<boolean> {
  const key = [subname, table.schema, table.table];
  await client.query(
    `UPDATE _pg_live_sync.copy_chunk SET rows_copied = $5, bytes_copied = $6, done_at = now()
      WHERE subname = $1 AND schemaname = $2 AND tablename = $3 AND chunk = $4`,
    [...key, chunk, rows, bytes],
  );
  await client.query(`SELECT 1 FROM _pg_live_sync.subscription_rel WHERE subname = $1 AND schemaname = $2 AND tablename = $3 FOR UPDATE`, key);
  const r = await client.query(
    `UPDATE _pg_live_sync.subscription_rel r
        SET rows_copied = s.rows, bytes_copied = s.bytes, updated_at = now(),
            state = CASE WHEN s.left = 0 THEN 'f' ELSE r.state END,
            lsn = CASE WHEN s.left = 0 THEN $4::pg_lsn ELSE r.lsn END
       FROM (SELECT coalesce(sum(rows_copied), 0) AS rows, coalesce(sum(bytes_copied), 0) AS bytes, count(*) FILTER (WHERE done_at IS NULL) AS left
               FROM _pg_live_sync.copy_chunk WHERE subname = $1 AND schemaname = $2 AND tablename = $3) s
      WHERE r.subname = $1 AND r.schemaname = $2 AND r.tablename = $3 AND r.state = 'd'
      RETURNING s.left`,
    [...key, formatLsn(lsn)],
  );
  return r.rowCount === 1 && Number(r.rows[0].left) === 0;
}

/** A copy snapshot kept importable by a holder process (snapshotHolder.ts). */
export interface HeldSnapshotRow {
  slotName: string;
  consistentLsn: Lsn;
  snapshot: string;
  holderPid: number;
  holderOsPid: number | null;
}

export async function recordHeldSnapshot(client: pg.Client, subname: string, row: HeldSnapshotRow): Promise<void> {
  await client.query(
    `INSERT INTO _pg_live_sync.copy_snapshot (subname, slot_name, consistent_lsn, snapshot, holder_pid, holder_os_pid) VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (subname, slot_name) DO UPDATE
       SET consistent_lsn = EXCLUDED.consistent_lsn, snapshot = EXCLUDED.snapshot, holder_pid = EXCLUDED.holder_pid,
           holder_os_pid = EXCLUDED.holder_os_pid, created_at = now()`,
    [subname, row.slotName, formatLsn(row.consistentLsn), row.snapshot, row.holderPid, row.holderOsPid],
  );
}

export async function loadHeldSnapshots(client: pg.Client, subname: string, slotName?: string): Promise<HeldSnapshotRow[]> {
  if (!(await hasChunkTables(client))) return [];
  const r = await client.query(
    `SELECT slot_name, consistent_lsn::text, snapshot, holder_pid, holder_os_pid FROM _pg_live_sync.copy_snapshot
      WHERE subname = $1 AND ($2::text IS NULL OR slot_name = $2)`,
    [subname, slotName ?? null],
  );
  return r.rows.map((row) => ({
    slotName: row.slot_name,
    consistentLsn: parseLsn(row.consistent_lsn),
    snapshot: row.snapshot,
    holderPid: row.holder_pid,
    holderOsPid: row.holder_os_pid,
  }));
}

/** Removes the record only if it still names this holder: a newer run may have adopted the snapshot. */
export async function deleteHeldSnapshot(client: pg.Client, subname: string, slotName: string, holderPid?: number): Promise<void> {
  await client.query(
    `DELETE FROM _pg_live_sync.copy_snapshot WHERE subname = $1 AND slot_name = $2 AND ($3::int IS NULL OR holder_pid = $3)`,
    [subname, slotName, holderPid ?? null],
  );
}
