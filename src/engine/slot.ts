/** Stage 1: the replication slot, created with an exported snapshot the copy stage imports. */
import { createHash } from 'node:crypto';
import type pg from 'pg';
import { connect, quoteIdent, type Endpoint } from './connection';
import { SyncError } from './errors';
import { parseLsn, type Lsn } from './lsn';

export function slotNameFor(subscription: string): string {
  return `pg_live_sync_${subscription}`;
}

/**
 * A table that joins later syncs through a slot of its own, named from the subscription and the
 * table's OID; the subscription part is a hash so the name fits in 63 bytes.
 */
export function tableSyncSlotName(subscription: string, relid: number): string {
  return `pgls_${subscriptionHash(subscription)}_sync_${relid}`;
}

export function tableSyncSlotPattern(subscription: string): string {
  return `pgls_${subscriptionHash(subscription)}_sync_%`;
}

function subscriptionHash(subscription: string): string {
  return createHash('sha256').update(subscription).digest('hex').slice(0, 12);
}

export function validateSubscriptionName(name: string): void {
  if (!/^[a-z0-9_]{1,50}$/.test(name)) {
    throw new SyncError(`subscription name "${name}" is not usable as a replication slot name; use 1 to 50 lowercase letters, digits and underscores`, 'usage');
  }
}

export interface CreatedSlot {
  consistentLsn: Lsn;
  snapshot: string;
  /** The snapshot lives only while this connection stays open and idle: close it once imported. */
  exporter: pg.Client;
}

export async function createSlotWithSnapshot(source: Endpoint, slot: string): Promise<CreatedSlot> {
  const exporter = await connect(source, { replication: true });
  try {
    const r = await exporter.query(`CREATE_REPLICATION_SLOT ${quoteIdent(slot)} LOGICAL pgoutput (SNAPSHOT 'export')`);
    const row = r.rows[0];
    return { consistentLsn: parseLsn(row.consistent_point), snapshot: row.snapshot_name, exporter };
  } catch (err) {
    await exporter.end().catch(() => undefined);
    const e = err as { code?: string; message: string };
    if (e.code === '53400') {
      throw new SyncError(`the source has no free replication slot (${e.message}); raise max_replication_slots on the source or drop unused slots`, 'slots');
    }
    if (e.code === '42710') {
      throw new SyncError(`replication slot "${slot}" already exists on the source; run pg-live-sync drop for this subscription or pick another --subscription`, 'slot_exists');
    }
    throw err;
  }
}

export interface SlotInfo {
  active: boolean;
  database: string;
  confirmedFlush: Lsn | null;
  walStatus: string | null;
  retainedBytes: number | null;
  /** WAL the source may still write before the slot is invalidated (safe_wal_size); null without max_slot_wal_keep_size. */
  safeWalBytes: number | null;
  /** max_slot_wal_keep_size in bytes; null when unlimited (-1). */
  walKeepBytes: number | null;
  /** The source's WAL position as read with the rest, for a write rate across two readings. */
  sourceWalLsn: Lsn;
}

export async function slotInfo(client: pg.Client, slot: string): Promise<SlotInfo | null> {
  const r = await client.query(
    `SELECT active, database, confirmed_flush_lsn::text AS confirmed, wal_status,
            pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained, safe_wal_size AS safe,
            nullif(pg_size_bytes(current_setting('max_slot_wal_keep_size') || CASE WHEN current_setting('max_slot_wal_keep_size') ~ '^-?[0-9]+$' THEN 'MB' ELSE '' END), pg_size_bytes('-1MB')) AS keep,
            pg_current_wal_lsn()::text AS wal
       FROM pg_replication_slots WHERE slot_name = $1`,
    [slot],
  );
  if (r.rowCount === 0) return null;
  const row = r.rows[0];
  return {
    active: row.active,
    database: row.database,
    confirmedFlush: row.confirmed ? parseLsn(row.confirmed) : null,
    walStatus: row.wal_status,
    retainedBytes: row.retained === null ? null : Number(row.retained),
    safeWalBytes: row.safe === null ? null : Number(row.safe),
    walKeepBytes: row.keep === null ? null : Number(row.keep),
    sourceWalLsn: parseLsn(row.wal),
  };
}

export async function dropSlotIfExists(client: pg.Client, slot: string): Promise<boolean> {
  const info = await slotInfo(client, slot);
  if (!info) return false;
  if (info.active) {
    throw new SyncError(`replication slot "${slot}" is in use by a running sync; stop that pg-live-sync run first, then retry`, 'slot_active');
  }
  await client.query('SELECT pg_drop_replication_slot($1)', [slot]);
  return true;
}

/** The subscription's slots on the source: its main slot and its tables' slots. */
export async function subscriptionSlots(client: pg.Client, subscription: string): Promise<string[]> {
  const r = await client.query(
    `SELECT slot_name FROM pg_replication_slots WHERE slot_name = $1 OR slot_name LIKE $2 ORDER BY slot_name <> $1, slot_name`,
    [slotNameFor(subscription), tableSyncSlotPattern(subscription)],
  );
  return r.rows.map((row) => row.slot_name as string);
}

/**
 * Slot names are the same for every target, so a target without a record of creating a slot of
 * the subscription must leave it alone: it belongs to a sync of the same name into another target.
 */
export function notOwnedSlots(subscription: string, slots: string[], doing: 'run' | 'drop'): string {
  const many = slots.length > 1;
  const it = many ? 'them' : 'it';
  const named = `replication slot${many ? 's' : ''} ${slots.map((s) => `"${s}"`).join(', ')}`;
  const byHand = slots.map((s) => `SELECT pg_drop_replication_slot('${s}')`).join('; ');
  const fix = doing === 'run'
    ? `pick another --subscription, or run pg-live-sync drop --subscription ${subscription} against the target that owns ${it}`
    : `left in place; drop the sync from the target that owns ${it}`;
  return `${named} of subscription "${subscription}" on the source ${many ? 'were' : 'was'} not created by this target (it has no state for the subscription) and belong${many ? '' : 's'} to a sync of the same name into another target database; ${fix} (if none does, on the source: ${byHand})`;
}

/** Table-sync slots of a subscription that no table needs any more (and on drop, all of them). */
export async function dropTableSyncSlots(client: pg.Client, subscription: string, keep: Set<string> = new Set()): Promise<string[]> {
  const r = await client.query(`SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE $1 AND NOT active`, [tableSyncSlotPattern(subscription)]);
  const dropped: string[] = [];
  for (const row of r.rows) {
    if (keep.has(row.slot_name)) continue;
    await client.query('SELECT pg_drop_replication_slot($1)', [row.slot_name]);
    dropped.push(row.slot_name);
  }
  return dropped;
}
