/**
 * Slot guardrails: a slot holds WAL on the source until it is confirmed, and with
 * max_slot_wal_keep_size set the source invalidates it once it holds too much (the sync can then
 * only start over). This says how close that is, and finds slots of ours that no known target
 * has state for, which hold WAL for nobody.
 */
import type pg from 'pg';
import { quoteLiteral } from './connection';
import { note } from './sqlgen';
import { slotNameFor, tableSyncSlotPattern, type SlotInfo } from './slot';
import { invalidationAtRisk, secondsToInvalidation } from './walHeadroom';
import { stateSchemaExists } from './state';
import { counted, formatBytes, formatColumns, formatDuration } from './units';

/** "retained WAL 1.2 GiB of max_slot_wal_keep_size 4 GiB: 2.8 GiB more (about 3h 05m at 250 KiB/s) before ..." */
export function describeHeadroom(slot: SlotInfo, bytesPerSecond: number | null): string {
  const retained = `retained WAL ${formatBytes(slot.retainedBytes ?? 0)}`;
  if (slot.walKeepBytes === null) return `${retained} (max_slot_wal_keep_size unlimited: the source keeps WAL for it until its disk fills)`;
  if (slot.safeWalBytes === null) return `${retained} of max_slot_wal_keep_size ${formatBytes(slot.walKeepBytes)}`;
  const seconds = secondsToInvalidation(slot, bytesPerSecond);
  const when = seconds === null
    ? bytesPerSecond === null ? '' : ' (no WAL written right now)'
    : ` (about ${formatDuration(seconds)} at ${formatBytes(bytesPerSecond ?? 0)}/s)`;
  return `${retained} of max_slot_wal_keep_size ${formatBytes(slot.walKeepBytes)}: ${formatBytes(Math.max(0, slot.safeWalBytes))} more${when} before the source invalidates the slot`;
}

export function slotWarnings(slot: SlotInfo | null, warnBytes: number, bytesPerSecond: number | null): string[] {
  if (!slot) return [];
  const out: string[] = [];
  if ((slot.retainedBytes ?? 0) > warnBytes) {
    out.push(`the slot holds ${formatBytes(slot.retainedBytes ?? 0)} of WAL on the source (over ${formatBytes(warnBytes)}): ${slot.active ? 'the sync is behind; check the target and the log' : 'no sync is running; run it, or drop it if it is abandoned'}`);
  }
  if (slot.walStatus === 'lost') {
    out.push('wal_status is lost: the slot cannot resume; run pg-live-sync drop and run again');
    return out;
  }
  const seconds = secondsToInvalidation(slot, bytesPerSecond);
  if (slot.walStatus === 'unreserved' || invalidationAtRisk(slot.safeWalBytes, slot.walKeepBytes, seconds)) {
    const left = seconds === null ? `${formatBytes(Math.max(0, slot.safeWalBytes ?? 0))} of WAL` : `about ${formatDuration(seconds)}`;
    out.push(`the source invalidates the slot in ${left} (wal_status ${slot.walStatus}, max_slot_wal_keep_size ${formatBytes(slot.walKeepBytes ?? 0)}): ${slot.active ? 'the sync is behind; speed it up or' : 'resume the sync now, or'} raise max_slot_wal_keep_size on the source`);
  }
  return out;
}

export interface SyncSlot {
  name: string;
  active: boolean;
  walStatus: string | null;
  retainedBytes: number | null;
  /** "subscription on host:port/db" of the known target with state for it, or null (orphaned). */
  owner: string | null;
  /** For an orphaned slot not in use: the statement that removes it, for review. */
  dropSql: string | null;
}

interface KnownTarget {
  client: pg.Client;
  /** host:port/db, for the listing. */
  where: string;
}

/**
 * Every `pg_live_sync_*` and `pgls_*` slot on the source with the known target that has state for
 * it. A slot no known target claims may still belong to a target not given here: the listing says
 * so rather than dropping anything.
 */
export async function listSyncSlots(source: pg.Client, targets: KnownTarget[]): Promise<SyncSlot[]> {
  const owners = new Map<string, string>();
  const tableSyncPrefixes: [string, string][] = [];
  for (const t of targets) {
    if (!(await stateSchemaExists(t.client))) continue;
    const subs = await t.client.query(`SELECT subname, slot_name FROM _pg_live_sync.subscription`);
    for (const row of subs.rows) {
      const owner = `subscription ${row.subname} on ${t.where}`;
      owners.set(row.slot_name, owner);
      owners.set(slotNameFor(row.subname), owner);
      tableSyncPrefixes.push([tableSyncSlotPattern(row.subname).replace(/%$/, ''), owner]);
    }
  }
  const r = await source.query(
    `SELECT slot_name, active, wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint AS retained
       FROM pg_replication_slots
      WHERE slot_name LIKE 'pg\\_live\\_sync\\_%' OR slot_name LIKE 'pgls\\_%'
      ORDER BY slot_name`,
  );
  return r.rows.map((row) => {
    const name = row.slot_name as string;
    const owner = owners.get(name) ?? tableSyncPrefixes.find(([prefix]) => name.startsWith(prefix))?.[1] ?? null;
    return {
      name,
      active: row.active,
      walStatus: row.wal_status,
      retainedBytes: row.retained === null ? null : Number(row.retained),
      owner,
      dropSql: owner === null && !row.active ? `SELECT pg_drop_replication_slot(${quoteLiteral(name)});` : null,
    };
  });
}

/**
 * The listing of `slots`: one aligned line per slot, then for the slots no known target owns the
 * statements that drop them (for review, never run here). `known` names the targets looked at.
 */
export function slotsReport(found: SyncSlot[], known: string): { listing: string[]; orphans: string[] } {
  const listing = formatColumns([['SLOT', 'ACTIVE', 'WAL STATUS', 'RETAINED WAL', 'OWNER'], ...found.map((s) => [
    s.name, s.active ? 'yes' : 'no', s.walStatus ?? '-', formatBytes(s.retainedBytes ?? 0), s.owner ?? 'none of the targets known',
  ])]);
  const unowned = found.filter((s) => s.owner === null);
  if (unowned.length === 0) return { listing, orphans: [] };
  return {
    listing,
    orphans: [
      note(`${counted(unowned.length, 'slot')} ${unowned.length === 1 ? 'has' : 'have'} no state on ${known} and hold WAL for nobody, unless a target not known here owns them; to drop the unused ones, on the source:`),
      ...unowned.map((s) => s.dropSql ?? note(`${s.name} is in use right now: stop the run that holds it first`)),
    ],
  };
}

/**
 * List Sync Slots' document: the listing as comments, then the drop statements for review. The
 * owners' names come from the targets' state tables, so every line goes through `note`: a name
 * with a line break would otherwise end its comment and leave a statement to run.
 */
export function slotsDocument(connection: string, found: SyncSlot[], known: string): string {
  const { listing, orphans } = slotsReport(found, known);
  return `${[note(`Replication slots of Postgres Live Sync on ${connection}`), ...listing.map(note), ...orphans].join('\n')}\n`;
}
