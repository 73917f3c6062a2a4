/**
 * The sync's state lives in the target, schema `_pg_live_sync`, so that progress commits in the
 * same transaction as the data it describes: a crash can never leave them disagreeing.
 */
import type pg from 'pg';
import type { Lsn } from './lsn';
import { formatLsn, parseLsn } from './lsn';
import type { SyncedTable, TableProgress, TableState } from './types';

export const STATE_SCHEMA = '_pg_live_sync';

const DDL = `
CREATE SCHEMA IF NOT EXISTS _pg_live_sync;
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
COMMENT ON COLUMN _pg_live_sync.subscription.acks_applied_only IS 'true once runs acknowledge to the slot no more than applied_lsn: a slot confirmed past applied_lsn was then moved by another sync';`;

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
}

export async function ensureStateSchema(client: pg.Client): Promise<void> {
  // Two runs creating the schema at once would race on the catalog; serialise them.
  await client.query('BEGIN');
  try {
    await client.query(`SELECT pg_advisory_xact_lock(hashtext('pg_live_sync.ddl'))`);
    await client.query(DDL);
    await client.query('COMMIT');
  } catch (err) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

export async function stateSchemaExists(client: pg.Client): Promise<boolean> {
  const r = await client.query(`SELECT to_regclass('_pg_live_sync.subscription_rel') IS NOT NULL AS present`);
  return r.rows[0].present as boolean;
}

/** Held for the life of a run: a second `run` of the same subscription is refused, not interleaved. */
export async function tryLockSubscription(client: pg.Client, subname: string): Promise<boolean> {
  const r = await client.query(`SELECT pg_try_advisory_lock(hashtext('pg_live_sync.sub'), hashtext($1)) AS ok`, [subname]);
  return r.rows[0].ok as boolean;
}

export async function loadSubscription(client: pg.Client, subname: string): Promise<SubscriptionRow | null> {
  const r = await client.query(
    `SELECT subname, slot_name, publications, source, consistent_lsn::text, applied_lsn::text, applied_commit_time, last_error, acks_applied_only
       FROM _pg_live_sync.subscription WHERE subname = $1`,
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
  };
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
           (subname, pubname, schemaname, tablename, rrelid, state, approximate_rows, approximate_size, target_schema, target_table)
         VALUES ($1, $2, $3, $4, $5, 'i', $6, $7, $8, $9)`,
        [sub.subname, t.publications[0], t.source.schema, t.source.table, t.relid, t.approximateRows, t.approximateSize, t.target.schema, t.target.table],
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
       (subname, pubname, schemaname, tablename, rrelid, state, approximate_rows, approximate_size, target_schema, target_table)
     VALUES ($1, $2, $3, $4, $5, 'i', $6, $7, $8, $9)
     ON CONFLICT (subname, schemaname, tablename) DO UPDATE
       SET pubname = EXCLUDED.pubname, rrelid = EXCLUDED.rrelid, state = 'i', lsn = NULL, rows_copied = 0, bytes_copied = 0,
           approximate_rows = EXCLUDED.approximate_rows, approximate_size = EXCLUDED.approximate_size,
           target_schema = EXCLUDED.target_schema, target_table = EXCLUDED.target_table, target_relid = NULL,
           removed_at = NULL, last_error = NULL, resync_requested_at = NULL, updated_at = now()`,
    [subname, t.publications[0], t.source.schema, t.source.table, t.relid, t.approximateRows, t.approximateSize, t.target.schema, t.target.table],
  );
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
export async function writeAppliedLsn(client: pg.Client, subname: string, lsn: Lsn, commitTimeMicros: bigint | null): Promise<void> {
  const [sql, params] = appliedLsnStatement(subname, lsn, commitTimeMicros);
  await client.query(sql, params);
}

/** writeAppliedLsn as a statement to pipeline. */
export function appliedLsnStatement(subname: string, lsn: Lsn, commitTimeMicros: bigint | null): [string, unknown[]] {
  return [
    `UPDATE _pg_live_sync.subscription
        SET applied_lsn = $2, applied_commit_time = COALESCE(to_timestamp($3::float8 / 1e6), applied_commit_time), updated_at = now()
      WHERE subname = $1`,
    [subname, formatLsn(lsn), commitTimeMicros === null ? null : commitTimeMicros.toString()],
  ];
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

export async function loadTableProgress(client: pg.Client, subname: string): Promise<TableProgress[]> {
  const r = await client.query(
    `SELECT schemaname, tablename, target_schema, target_table, state, lsn::text, rows_copied, bytes_copied,
            approximate_rows, approximate_size, last_error, removed_at IS NOT NULL AS removed
       FROM _pg_live_sync.subscription_rel WHERE subname = $1 ORDER BY schemaname, tablename`,
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
