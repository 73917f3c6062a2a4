/**
 * Stage 2b: a table that is not covered by the first copy (it joined the publication while running,
 * or its copy failed or was cut short) syncs on its own, the way PostgreSQL's tablesync worker
 * does: a slot of its own with an exported snapshot, a copy in that snapshot (`d`, then `f` at the
 * slot's consistent point), a catch-up from that slot while the main stream goes on without the
 * table, then a handover at an exact position (`s`), after which the main stream applies it.
 *
 * The handover is exact because both streams decode the same WAL in commit order: the main stream
 * pauses between transactions at position P (it has seen every transaction committing before P),
 * the catch-up applies the table's transactions up to P and no further, and the main stream
 * applies the table from P on. If the catch-up is already past P, the main stream skips the table
 * up to where the catch-up got.
 */
import type pg from 'pg';
import { Applier } from './apply';
import { checkpoint, checkpointDue } from './checkpoint';
import { connect, type Endpoint } from './connection';
import { copyTables, type CopyProgress } from './copy';
import { SyncError } from './errors';
import { maxLsn, type Lsn } from './lsn';
import { createSlotWithSnapshot, dropSlotIfExists, slotInfo, tableSyncSlotName } from './slot';
import { setTableState } from './state';
import { ReplicationStream } from './stream';
import type { Logger, SyncedTable, TableState } from './types';

export interface MainStream {
  /** Transactions committing before this have all been seen by the main stream. */
  position(): Lsn;
  /** Pauses the main stream between transactions; resolves with where it stopped. */
  pause(): Promise<Lsn>;
  /** Lets it go on, applying the table from `from` on (null: the handover did not happen). */
  resume(table: SyncedTable, from: Lsn | null): void;
}

export interface TableSyncContext {
  source: Endpoint;
  target: Endpoint;
  subscription: string;
  publications: string[];
  log: Logger;
  signal: AbortSignal;
  main: MainStream;
  onProgress(p: CopyProgress): void;
  onState(table: SyncedTable, state: TableState, lsn: Lsn | null): void;
}

/** Copies (unless resuming a finished copy) and catches up one table; returns where the main stream took it over. */
export async function syncTable(ctx: TableSyncContext, table: SyncedTable, resumeFrom: { state: TableState; lsn: Lsn | null }): Promise<Lsn> {
  const slot = tableSyncSlotName(ctx.subscription, table.relid);
  const admin = await connect(ctx.source, { applicationName: 'pg_live_sync_tablesync' });
  try {
    let position: Lsn;
    if (resumeFrom.state === 'f' && resumeFrom.lsn !== null && (await slotInfo(admin, slot))) {
      position = resumeFrom.lsn;
      ctx.log('info', `resuming the catch-up of ${table.source.schema}.${table.source.table} from its own slot`);
    } else {
      // Anything an interrupted attempt left is discarded: the copy starts from an empty table.
      await dropSlotIfExists(admin, slot);
      const created = await createSlotWithSnapshot(ctx.source, slot);
      let exporterOpen = true;
      const closeExporter = async () => {
        if (exporterOpen) {
          exporterOpen = false;
          await created.exporter.end().catch(() => undefined);
        }
      };
      try {
        const failures = await copyTables({
          source: ctx.source,
          target: ctx.target,
          subscription: ctx.subscription,
          snapshot: created.snapshot,
          consistentLsn: created.consistentLsn,
          tables: [table],
          workers: 1,
          log: ctx.log,
          onProgress: ctx.onProgress,
          onSnapshotImported: closeExporter,
          signal: ctx.signal,
        });
        if (failures.length > 0) throw new SyncError(failures[0].error, 'copy');
      } catch (err) {
        await closeExporter();
        await dropSlotIfExists(admin, slot).catch(() => undefined);
        throw err;
      }
      position = created.consistentLsn;
      ctx.onState(table, 'f', position);
    }
    const takeover = await catchUp(ctx, table, slot, position);
    await dropSlotIfExists(admin, slot).catch((err) => ctx.log('warn', `could not drop slot "${slot}": ${(err as Error).message}; drop it by hand`));
    return takeover;
  } finally {
    await admin.end().catch(() => undefined);
  }
}

async function catchUp(ctx: TableSyncContext, table: SyncedTable, slot: string, from: Lsn): Promise<Lsn> {
  const target = await connect(ctx.target, { applicationName: 'pg_live_sync_tablesync' });
  let stream: ReplicationStream | null = null;
  let paused = false;
  let takeover: Lsn | null = null;
  try {
    await target.query('SET session_replication_role = replica');
    // Every transaction committing before `position` is in the target table.
    let position = from;
    const writePosition = (client: pg.Client, lsn: Lsn) => setTableState(client, ctx.subscription, table.source, 'f', { lsn });
    const applier = new Applier(target, from, ctx.log);
    applier.setTable(table, 0n);
    let mainAt: Lsn | null = null;
    // Chase without holding anything up until reaching where the main stream was when the
    // catch-up began; only then pause it, for the (short) rest of the way.
    const chaseTo = ctx.main.position();
    const commit = async () => {
      const done = await checkpoint(target, applier, writePosition);
      if (done) stream!.acknowledge(done.lsn, true);
    };
    /** The main stream pauses once the catch-up has reached where it was. */
    const maybeHandOver = async (): Promise<boolean> => {
      if (mainAt === null) {
        if (position < chaseTo) return false;
        await commit();
        mainAt = await ctx.main.pause();
        paused = true;
      }
      if (position < mainAt) return false;
      await commit();
      takeover = maxLsn(position, mainAt);
      await setTableState(target, ctx.subscription, table.source, 's', { lsn: takeover });
      return true;
    };
    stream = await ReplicationStream.start(ctx.source, slot, ctx.publications, from);
    const opened = stream;
    // A quiet stream may not send anything for a long time: closing it ends the wait on stop.
    ctx.signal.addEventListener('abort', () => void opened.close(), { once: true });
    for await (const ev of stream.events()) {
      if (ctx.signal.aborted) break;
      if (ev.kind === 'keepalive') {
        if (!applier.inSourceTransaction) {
          position = maxLsn(position, ev.walEnd);
          stream.acknowledge(applier.group ? stream.acknowledged : ev.walEnd, true);
          if (await maybeHandOver()) break;
        }
        continue;
      }
      const change = ev.change;
      // A transaction committing at or after the main stream's pause point is the main stream's.
      if (change.tag === 'begin' && mainAt !== null && change.finalLsn >= mainAt) {
        // Everything committing before this one has been seen: the catch-up is at the pause point.
        position = maxLsn(position, change.finalLsn);
        if (await maybeHandOver()) break;
      }
      await applier.apply(change);
      if (change.tag === 'commit') {
        position = maxLsn(position, change.endLsn);
        if (checkpointDue(applier.group)) await commit();
        if (await maybeHandOver()) break;
      }
    }
    if (takeover === null) throw new SyncError(`the catch-up of ${table.source.schema}.${table.source.table} stopped before its handover`, 'stopped');
    return takeover;
  } finally {
    if (paused) ctx.main.resume(table, takeover);
    await stream?.close();
    await target.query('ROLLBACK').catch(() => undefined);
    await target.end().catch(() => undefined);
  }
}
