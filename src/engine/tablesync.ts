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
import { errorMessage, SyncError } from './errors';
import { formatLsn, maxLsn, type Lsn } from './lsn';
import { endHolders, holdSnapshot, HOLDER_GRACE_MS, type HeldSnapshot } from './snapshotHolder';
import { createSlotWithSnapshot, dropSlotIfExists, slotInfo, tableSyncSlotName } from './slot';
import { deleteHeldSnapshot, loadHeldSnapshots, recordHeldSnapshot, setTableState, type HeldSnapshotRow } from './state';
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
  /** Tables larger than this are copied in chunks (copy.ts), resumable in the table slot's held snapshot. */
  copyChunkBytes: number;
  /** Base folder for open streamed transactions (spool.ts). */
  spoolDir?: string;
  streaming?: boolean;
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
    const copied = resumeFrom.state === 'f' && resumeFrom.lsn !== null && (await slotInfo(admin, slot)) !== null;
    const resumed = resumeFrom.state === 'd' ? await resumeHeldCopy(ctx, admin, table, slot) : null;
    if (copied) {
      position = resumeFrom.lsn!;
      ctx.log('info', `resuming the catch-up of ${table.source.schema}.${table.source.table} from its own slot`);
    } else if (resumed !== null) {
      position = resumed;
      ctx.onState(table, 'f', position);
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
          slot,
          snapshot: created.snapshot,
          consistentLsn: created.consistentLsn,
          tables: [table],
          workers: 1,
          chunkBytes: ctx.copyChunkBytes,
          holder: null,
          log: ctx.log,
          onProgress: ctx.onProgress,
          onSnapshotImported: closeExporter,
          signal: ctx.signal,
        });
        if (failures.length > 0) throw new SyncError(failures[0].error, 'copy');
      } catch (err) {
        await closeExporter();
        // Stopped: the next run may resume the copy in this slot's held snapshot (resumeHeldCopy).
        if (!ctx.signal.aborted) await dropSlotIfExists(admin, slot).catch(() => undefined);
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

/**
 * A copy of this table cut short (`d`) whose slot still stands at its consistent point and whose
 * snapshot is still held: the copy goes on in that snapshot (finished chunks are kept) and the
 * table is at `f` at the slot's consistent point, exactly as if never interrupted, since the slot
 * was created at that point and nothing has been decoded from it yet. Returns that point, or null
 * (after ending any holder left) when the copy must start afresh.
 */
async function resumeHeldCopy(ctx: TableSyncContext, admin: pg.Client, table: SyncedTable, slot: string): Promise<Lsn | null> {
  const target = await connect(ctx.target, { applicationName: 'pg_live_sync_tablesync' });
  let holder: HeldSnapshot | null = null;
  let held: HeldSnapshotRow | undefined;
  try {
    held = (await loadHeldSnapshots(target, ctx.subscription, slot))[0];
    if (!held) return null;
    const info = await slotInfo(admin, slot);
    let why: string | null = null;
    if (!info || (info.confirmedFlush ?? 0n) > held.consistentLsn) why = `its slot "${slot}" no longer stands where the copy's snapshot was taken`;
    else {
      try {
        holder = await holdSnapshot(ctx.source, held.snapshot);
      } catch (err) {
        why = `the snapshot of its interrupted copy can no longer be imported (${errorMessage(err)}): its holder process is gone (the source restarted, it was killed, or no run came within ${HOLDER_GRACE_MS / 60_000} minutes)`;
      }
    }
    await endHolders(admin, [held.holderPid]).catch(() => undefined);
    if (!holder) {
      ctx.log('warn', `${table.source.schema}.${table.source.table}: ${why}; copying it afresh`);
      await deleteHeldSnapshot(target, ctx.subscription, slot);
      return null;
    }
    await recordHeldSnapshot(target, ctx.subscription, { slotName: slot, consistentLsn: held.consistentLsn, snapshot: holder.snapshot, holderPid: holder.backendPid, holderOsPid: holder.osPid });
  } finally {
    await target.end().catch(() => undefined);
  }
  ctx.log('info', `resuming the interrupted copy of ${table.source.schema}.${table.source.table} in its snapshot at ${formatLsn(held.consistentLsn)}`);
  const failures = await copyTables({
    source: ctx.source,
    target: ctx.target,
    subscription: ctx.subscription,
    slot,
    snapshot: holder.snapshot,
    consistentLsn: held.consistentLsn,
    tables: [table],
    workers: 1,
    chunkBytes: ctx.copyChunkBytes,
    holder,
    log: ctx.log,
    onProgress: ctx.onProgress,
    onSnapshotImported: async () => undefined,
    signal: ctx.signal,
  });
  if (failures.length > 0) {
    await dropSlotIfExists(admin, slot).catch(() => undefined);
    throw new SyncError(failures[0].error, 'copy');
  }
  return held.consistentLsn;
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
    stream = await ReplicationStream.start(ctx.source, slot, ctx.publications, from, { spoolBase: ctx.spoolDir, streaming: ctx.streaming });
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
      // Open transactions come only as Begin, changes, Commit here (no openCommits asked).
      if (ev.kind !== 'change') continue;
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
