/**
 * What a sync looks like from outside a run: read from the target's `_pg_live_sync` state and,
 * when the source is reachable, its slot. `status`, the extension's read-only attach and its
 * tree all read a sync this way, so a run elsewhere (the CLI on a server) looks the same.
 */
import type pg from 'pg';
import { connect, describeEndpoint, quoteIdent, type Endpoint } from './connection';
import { databaseIdentity, describeIdentity, otherDatabase } from './identity';
import { errorMessage, SyncError } from './errors';
import { formatLsn } from './lsn';
import { dropSlotIfExists, dropTableSyncSlots, notOwnedSlots, slotInfo, slotNameFor, subscriptionSlots, tableSyncSlotPattern, validateSubscriptionName, type SlotInfo } from './slot';
import { removeSpoolFolders } from './spool';
import { endHolders } from './snapshotHolder';
import { deleteSubscriptionRows, loadHeldSnapshots, loadSubscription, loadTableProgress, stateSchemaExists, type SubscriptionRow } from './state';
import type { Logger, TableProgress } from './types';
import { counted } from './units';

export interface SyncReport {
  subscription: SubscriptionRow;
  tables: TableProgress[];
  /** null when the source was not asked or the slot is missing (see slotMissing). */
  slot: SlotInfo | null;
  slotMissing: boolean;
  /**
   * Source WAL written past the slot's confirmed position (which never passes what the target
   * holds); past the target's applied position when the slot is missing; null without the source.
   */
  lagBytes: number | null;
  /**
   * Seconds since the commit of the oldest source transaction the target has not applied, 0 when
   * there is none; null without the source, or when a stopped sync has too much WAL to look through.
   */
  lagSeconds: number | null;
  /** Whether a run holds the subscription's lock on the target right now. */
  running: boolean;
}

export async function readSyncReport(target: pg.Client, subname: string, source: pg.Client | null): Promise<SyncReport | null> {
  if (!(await stateSchemaExists(target))) return null;
  const subscription = await loadSubscription(target, subname);
  if (!subscription) return null;
  const tables = await loadTableProgress(target, subname);
  const lock = await target.query(
    `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
                       AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                       AND classid::bigint = (hashtext('pg_live_sync.sub')::bigint & 4294967295)
                       AND objid::bigint = (hashtext($1)::bigint & 4294967295)) AS running`,
    [subname],
  );
  const running = lock.rows[0].running as boolean;
  let slot: SlotInfo | null = null;
  let lagBytes: number | null = null;
  let lagSeconds: number | null = null;
  if (source) {
    slot = await slotInfo(source, subscription.slotName);
    const applied = slot?.confirmedFlush ?? subscription.appliedLsn ?? subscription.consistentLsn;
    if (applied !== null) {
      const r = await source.query(`SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint AS lag`, [formatLsn(applied)]);
      lagBytes = Math.max(0, Number(r.rows[0].lag));
      lagSeconds = lagBytes === 0 ? 0 : await pendingSeconds(source, subscription, slot, running);
    }
  }
  return { subscription, tables, slot, slotMissing: source !== null && slot === null, lagBytes, lagSeconds, running };
}

/** A stopped sync's slot is decoded to find its oldest pending commit only up to this much WAL. */
const MAX_PEEK_BYTES = 16 * 1024 * 1024;
const PG_EPOCH_MICROS = 946_684_800_000_000n;

/**
 * WAL past the confirmed position need not hold a commit of a published table (other databases,
 * other tables, the server's own records). A running sync confirms such WAL within a second, and
 * the source's walsender measures how long what it sent waits for confirmation (flush_lag, NULL
 * once caught up). For a stopped sync the slot itself is decoded without consuming it: the first
 * pgoutput message is the BEGIN of the oldest pending transaction, with its commit time.
 */
async function pendingSeconds(source: pg.Client, sub: SubscriptionRow, slot: SlotInfo | null, running: boolean): Promise<number | null> {
  if (!slot) return null;
  if (slot.active) {
    const r = await source.query(
      `SELECT extract(epoch FROM r.flush_lag)::float8 AS lag FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1`,
      [sub.slotName],
    );
    return r.rows[0]?.lag ?? 0;
  }
  // A run about to start must find the slot free: never decode while one holds the subscription.
  if (running || slot.retainedBytes === null || slot.retainedBytes > MAX_PEEK_BYTES) return null;
  try {
    await source.query('BEGIN');
    await source.query(`SET LOCAL statement_timeout = '2s'`);
    const r = await source.query(
      `SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, 1, 'proto_version', '1', 'publication_names', $2) LIMIT 1`,
      [sub.slotName, sub.publications.map((p) => quoteIdent(p)).join(',')],
    );
    const data = r.rows[0]?.data as Buffer | undefined;
    if (!data) return 0;
    if (data[0] !== 0x42) return null; // 'B': final LSN, commit time, xid
    const commitMicros = data.readBigInt64BE(9) + PG_EPOCH_MICROS;
    return Math.max(0, (Date.now() * 1000 - Number(commitMicros)) / 1e6);
  } catch {
    // Not allowed to decode (no REPLICATION), another database, or too slow: unknown, not wrong.
    return null;
  } finally {
    await source.query('ROLLBACK').catch(() => undefined);
  }
}

/**
 * Removes a sync: its slots on the source and its state on the target; the target's data stays.
 * Only slots this target's state records are dropped: a sync of the same name into another target
 * has slots of the same names. Returns the slots left on the source for that reason.
 */
export async function dropSync(sourceEp: Endpoint, targetEp: Endpoint, subname: string, log: Logger, opts: { spoolDir?: string } = {}): Promise<{ notOwned: string[] }> {
  validateSubscriptionName(subname);
  const source = await connect(sourceEp);
  try {
    const target = await connect(targetEp);
    try {
      const sub = (await stateSchemaExists(target)) ? await loadSubscription(target, subname) : null;
      if (!sub) {
        const notOwned = await subscriptionSlots(source, subname);
        if (notOwned.length > 0) log('warn', notOwnedSlots(subname, notOwned, 'drop'));
        else log('info', `nothing to drop: the target has no state for subscription "${subname}" and the source has no slot of it`);
        await dropSpools(subname, opts.spoolDir, log);
        return { notOwned };
      }
      const now = await databaseIdentity(source);
      const was = sub.sourceIdentity;
      if (otherDatabase(now, was)) {
        // Slots of the same names there belong to something else.
        log('warn', `the --source ${describeEndpoint(sourceEp.url)} is ${describeIdentity(now)}, not ${describeIdentity(was!)} that subscription "${subname}" streams from: its slots there are left in place; drop them on that source (SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '${sub.slotName}' OR slot_name LIKE '${tableSyncSlotPattern(subname)}';) or run drop with that --source`);
      } else {
        // Holders of copy snapshots end with their sessions; they would otherwise wait out their grace period.
        await endHolders(source, (await loadHeldSnapshots(target, subname)).map((h) => h.holderPid));
        const dropped = await dropSlotIfExists(source, sub.slotName);
        log('info', dropped ? `dropped replication slot "${sub.slotName}" on the source` : `no replication slot "${sub.slotName}" on the source`);
        for (const s of await dropTableSyncSlots(source, subname)) log('info', `dropped table-sync slot "${s}" on the source`);
      }
      await target.query('BEGIN');
      await deleteSubscriptionRows(target, subname);
      await target.query('COMMIT');
      log('info', `removed the state of subscription "${subname}" from the target; the target tables and their data stay`);
      await dropSpools(subname, opts.spoolDir, log);
      return { notOwned: [] };
    } finally {
      await target.end();
    }
  } finally {
    await source.end();
  }
}

/**
 * The local spool folders of the subscription's slots (spool.ts) under `spoolDir` (as `run
 * --spool-dir`): a run killed with a transaction open leaves its rows there. Folders of a stream
 * still running stay, and a folder that is not the user's own is left with a warning, not a failure:
 * the slot and the state are gone already.
 */
async function dropSpools(subname: string, spoolDir: string | undefined, log: Logger): Promise<void> {
  const tableSync = tableSyncSlotPattern(subname).replace(/%$/, '');
  const isOurs = (slot: string) => slot === slotNameFor(subname) || (slot.startsWith(tableSync) && /^\d+$/.test(slot.slice(tableSync.length)));
  try {
    const removed = await removeSpoolFolders(isOurs, spoolDir);
    if (removed.length > 0) log('info', `removed ${counted(removed.length, 'local spool folder')} of subscription "${subname}" (source transactions a stopped run had kept): ${removed.join(', ')}`);
  } catch (err) {
    log('warn', `left the local spool folders of subscription "${subname}": ${errorMessage(err)}`);
  }
}

export function notFound(subname: string): SyncError {
  return new SyncError(`the target has no state for subscription "${subname}"; check --subscription and --target, or start it with pg-live-sync run`, 'not_found');
}
