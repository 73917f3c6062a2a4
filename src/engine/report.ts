/**
 * What a sync looks like from outside a run: read from the target's `_pg_live_sync` state and,
 * when the source is reachable, its slot. `status`, the extension's read-only attach and its
 * tree all read a sync this way, so a run elsewhere (the CLI on a server) looks the same.
 */
import type pg from 'pg';
import { connect, type Endpoint } from './connection';
import { SyncError } from './errors';
import { formatLsn } from './lsn';
import { dropSlotIfExists, dropTableSyncSlots, notOwnedSlots, slotInfo, subscriptionSlots, validateSubscriptionName, type SlotInfo } from './slot';
import { deleteSubscriptionRows, loadSubscription, loadTableProgress, stateSchemaExists, type SubscriptionRow } from './state';
import type { Logger, TableProgress } from './types';

export interface SyncReport {
  subscription: SubscriptionRow;
  tables: TableProgress[];
  /** null when the source was not asked or the slot is missing (see slotMissing). */
  slot: SlotInfo | null;
  slotMissing: boolean;
  /** Source WAL written past what the target applied; null without the source. */
  lagBytes: number | null;
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
  let slot: SlotInfo | null = null;
  let lagBytes: number | null = null;
  if (source) {
    slot = await slotInfo(source, subscription.slotName);
    const applied = subscription.appliedLsn ?? subscription.consistentLsn;
    if (applied !== null) {
      const r = await source.query(`SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint AS lag`, [formatLsn(applied)]);
      lagBytes = Math.max(0, Number(r.rows[0].lag));
    }
  }
  return { subscription, tables, slot, slotMissing: source !== null && slot === null, lagBytes, running: lock.rows[0].running as boolean };
}

/**
 * Removes a sync: its slots on the source and its state on the target; the target's data stays.
 * Only slots this target's state records are dropped: a sync of the same name into another target
 * has slots of the same names. Returns the slots left on the source for that reason.
 */
export async function dropSync(sourceEp: Endpoint, targetEp: Endpoint, subname: string, log: Logger): Promise<{ notOwned: string[] }> {
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
        return { notOwned };
      }
      const dropped = await dropSlotIfExists(source, sub.slotName);
      log('info', dropped ? `dropped replication slot "${sub.slotName}" on the source` : `no replication slot "${sub.slotName}" on the source`);
      for (const s of await dropTableSyncSlots(source, subname)) log('info', `dropped table-sync slot "${s}" on the source`);
      await target.query('BEGIN');
      await deleteSubscriptionRows(target, subname);
      await target.query('COMMIT');
      log('info', `removed the state of subscription "${subname}" from the target; the target tables and their data stay`);
      return { notOwned: [] };
    } finally {
      await target.end();
    }
  } finally {
    await source.end();
  }
}

export function notFound(subname: string): SyncError {
  return new SyncError(`the target has no state for subscription "${subname}"; check --subscription and --target, or start it with pg-live-sync run`, 'not_found');
}
