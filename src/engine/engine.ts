/**
 * The sync, top to bottom: check, slot, copy, stream, apply, checkpoint. Each stage is its own
 * module; this file decides which stages run, carries their results between them, keeps tables
 * joining and leaving the publication in step, and retries what a lost connection interrupted.
 */
import type pg from 'pg';
import { Applier } from './apply';
import { OpenTransactionApplier } from './openApply';
import { listPublishedTables, noReplicaIdentityWarning, type PublishedTable } from './catalog';
import { abandonGroup, checkpoint, checkpointDue, checkpointPipelined, type CheckpointResult } from './checkpoint';
import { connect, describeEndpoint, qualified, quoteIdent, tableKey, type Endpoint } from './connection';
import { addColumnSql, addedColumns, lostColumns, lostColumnsMessage, type AddedColumn } from './drift';
import { BackgroundAnalyzer, COPY_CHUNK_BYTES, copyTables, type CopyProgress } from './copy';
import { endHolders, holdSnapshot, HOLDER_GRACE_MS, type HeldSnapshot } from './snapshotHolder';
import { CheckError, errorMessage, isTransient, retryMessage, SyncError } from './errors';
import { formatLsn, maxLsn, parseLsn, type Lsn } from './lsn';
import { databaseIdentity, describeIdentity, otherDatabase, sameDatabaseProblem } from './identity';
import { checkSource, checkTarget, unmatchedTableMaps, type Finding } from './precheck';
import { applyCreatePlan, planCreateTables } from './schema';
import {
  createSlotWithSnapshot, dropSlotIfExists, dropTableSyncSlots, notOwnedSlots, slotInfo, slotNameFor, subscriptionSlots, tableSyncSlotName,
  validateSubscriptionName,
} from './slot';
import {
  adoptSlotPosition, deleteHeldSnapshot, ensureStateSchema, loadHeldSnapshots, recordHeldSnapshot, loadSubscription, loadTableProgress, markTableRemoved, promoteCaughtUpTables, resetSubscription,
  setConsistentLsn, setSubscriptionError, setTableError, setTableState, stateSchemaExists,
  loadColumnMaps, sameColumnMap, setColumnMapBeforeCopy, recordSourceIdentity, assertStateOwner,
  resetTableForResync, tablesToResync, upsertTableError, upsertTableRow, writeAppliedLsn, appliedLsnStatement, writeCopyProgress, type SubscriptionRow,
  loadSyncedColumns, recordSyncedColumns,
} from './state';
import { acquireRunLock, type LockSession } from './runLock';
import { ReplicationStream, type OpenTransactionEvent, type StreamEvent } from './stream';
import { counted, formatBytes } from './units';
import { resolveColumnMap, resolveTarget } from './tablemap';
import { syncTable, type TableSyncContext } from './tablesync';
import type { Logger, SyncedTable, SyncOptions, SyncPhase, SyncStatus, TableName, TableProgress, TableState } from './types';

/** With a group open and the stream quiet this long, commit rather than wait for more. */
const IDLE_COMMIT_MS = 20;
const STATUS_INTERVAL_MS = 1_000;
/** How often the publications are read for tables that joined or left. */
const PUBLICATION_POLL_MS = 2_000;
const MAX_RETRY_DELAY_MS = 30_000;
/**
 * While caught up, the source position that keepalives report is written to the target (then
 * confirmed to the slot) at most this often: an idle sync holds no WAL back, and WAL written
 * elsewhere on the source costs the target one small write a second, not one per keepalive.
 */
const RECORD_IDLE_MS = 1_000;
const MAX_TABLE_RETRY_DELAY_MS = 300_000;

export interface SyncEngineHooks {
  log: Logger;
  onStatus?(status: SyncStatus): void;
}

type Wake = 'stop' | 'idle' | 'task';

/** A table waiting for (or in) its own sync: copy, catch-up, handover. */
interface TableJob {
  published: PublishedTable;
  attempt: number;
  notBefore: number;
  running: boolean;
}

export class SyncEngine {
  private readonly source: Endpoint;
  private readonly target: Endpoint;
  private readonly slot: string;
  private readonly abort = new AbortController();
  /** Wakes the stream loop while it waits for the source. */
  private interrupt: ((why: Wake) => void) | null = null;
  private phase: SyncPhase = 'starting';
  private progress = new Map<string, TableProgress>();
  private serverWalEnd: Lsn = 0n;
  private stream: ReplicationStream | null = null;
  /** Commit time of the oldest source transaction received but not yet committed on the target. */
  private pendingSince: bigint | null = null;
  private changesApplied = 0;
  private transactionsApplied = 0;
  private locked = false;
  /** Whether this run held the lock at some point: its own errors are then the state's to show. */
  private everLocked = false;
  /** The target session holding the lock now (the main one); after a reconnect, no longer run()'s first. */
  private targetClient: pg.Client | null = null;
  private lockSession: LockSession | null = null;
  /** This run's lock sessions given up on a lost connection: a reconnect finding one still holding the lock ends it. */
  private abandonedLocks: LockSession[] = [];
  /** Work the stream loop does between two source transactions (handovers, table changes). */
  private mainTasks: (() => Promise<void>)[] = [];
  /** The position the target holds (applied_lsn; the copy's consistent point before streaming): the slot is never acknowledged past it. */
  private recorded: Lsn = 0n;
  /** A group whose COMMIT was sent and not yet answered (checkpointPipelined): at most one. */
  private committing: Promise<void> | null = null;
  private recordedAt = 0;
  private jobs = new Map<string, TableJob>();
  /** Tables whose resync waits for the main stream to let go of them. */
  private resyncing = new Set<string>();
  /** Per table, the source columns its target was last seen receiving (synced_columns). */
  private syncedColumns = new Map<string, string[]>();

  constructor(private readonly options: SyncOptions, private readonly hooks: SyncEngineHooks) {
    this.source = { url: options.source, role: 'source', configuredIn: options.configuredIn?.source };
    this.target = { url: options.target, role: 'target', configuredIn: options.configuredIn?.target };
    this.slot = slotNameFor(options.subscription);
  }

  /** Asks the engine to persist its progress and return from run(). */
  stop(): void {
    if (this.abort.signal.aborted) return;
    this.phase = 'stopping';
    this.hooks.log('info', 'stopping: committing applied changes and closing connections');
    this.abort.abort();
    this.interrupt?.('stop');
  }

  /**
   * Lag: bytes are the source's WAL end (read from the server every 2 s, or the stream's, whichever is later) past what the target has
   * applied and the slot confirmed; seconds run from the commit of the oldest transaction not yet
   * applied, 0 when none is.
   */
  status(): SyncStatus {
    const acked = this.stream?.acknowledged ?? (this.recorded === 0n ? null : this.recorded);
    const lagBytes = acked === null || this.serverWalEnd <= acked ? 0 : Number(this.serverWalEnd - acked);
    const lagSeconds = this.pendingSince === null ? 0 : Math.max(0, (Date.now() * 1000 - Number(this.pendingSince)) / 1e6);
    return {
      subscription: this.options.subscription,
      phase: this.phase,
      tables: [...this.progress.values()],
      appliedLsn: acked,
      lagBytes,
      lagSeconds,
      changesApplied: this.changesApplied,
      transactionsApplied: this.transactionsApplied,
    };
  }

  async run(): Promise<void> {
    const { options, hooks } = this;
    validateSubscriptionName(options.subscription);
    const statusTimer = setInterval(() => hooks.onStatus?.(this.status()), STATUS_INTERVAL_MS);
    statusTimer.unref();
    let source: pg.Client | null = null;
    let target: pg.Client | null = null;
    let failed = false;
    try {
      source = await connect(this.source);
      target = await connect(this.target);
      this.targetClient = target;
      const same = await sameDatabaseProblem(source, target, { source: describeEndpoint(options.source), target: describeEndpoint(options.target) });
      if (same) throw new CheckError([same]);
      // Before the state is read: reading it can run its owner's code too (a view).
      await assertStateOwner(target, 'writer');
      const fresh = !(await stateSchemaExists(target)) || (await loadSubscription(target, options.subscription)) === null;
      const src = await checkSource(source, this.source, options.publications, options.subscription);
      if (options.createTables) {
        refuseOnErrors(src.findings, fresh);
        await this.createMissingTables(src.published, { source, target });
      }
      const tgt = await checkTarget(target, this.target, src.published, options.tableMaps, { source, freshStart: fresh });
      const findings = [...src.findings, ...(await unmatchedTableMaps(source, options.tableMaps, src.published, options.publications)), ...tgt.findings];
      // On a fresh start every problem is bad input. Once running, a table's own problem puts
      // that table in error (retried) and the others go on.
      refuseOnErrors(findings, fresh);
      for (const f of findings) hooks.log(f.severity === 'error' ? 'error' : 'warn', f.message);
      await ensureStateSchema(target);
      await this.lock(target);
      if (!fresh) await this.checkSourceIdentity(source, target);
      if (!fresh) await this.refuseChangedColumnMaps(target);
      const started = await this.prepare(source, target, tgt.synced);
      await source.end();
      source = null;
      if (!started) return;
      target = await this.streamWithRetries(target);
    } catch (err) {
      failed = true;
      if (this.everLocked) await this.recordError(errorMessage(err));
      if (err instanceof SyncError) throw err;
      throw new SyncError(`stopped: ${errorMessage(err)}; nothing applied is lost: fix the cause and run again to resume`, 'fatal');
    } finally {
      clearInterval(statusTimer);
      // A stop waits for the statistics of the tables it copied (one sample each); a failure does not.
      await this.analyzer?.close(failed);
      this.phase = 'stopped';
      hooks.onStatus?.(this.status());
      const targets = new Set([target, this.targetClient]);
      await Promise.all([source, ...targets].map((c) => c?.end().catch(() => undefined)));
    }
  }

  /**
   * A fatal error goes to last_error, for `status`, Attach and the panel: through the session
   * that holds the lock, or a fresh one when that is gone (the error may be why).
   */
  private async recordError(message: string): Promise<void> {
    const { subscription } = this.options;
    if (this.targetClient && (await setSubscriptionError(this.targetClient, subscription, message).then(() => true, () => false))) return;
    const fresh = await connect(this.target).catch(() => null);
    if (!fresh) return;
    try {
      await setSubscriptionError(fresh, subscription, message).catch(() => undefined);
    } finally {
      await fresh.end().catch(() => undefined);
    }
  }

  /**
   * Rows already on the target were written under the column map they were copied with; streaming
   * on under another would put values in other columns (or leave them stale). A table not copied
   * yet, or with a resync asked for, takes the new map with its next copy.
   */
  private async refuseChangedColumnMaps(target: pg.Client): Promise<void> {
    const { options } = this;
    for (const r of await loadColumnMaps(target, options.subscription)) {
      const now = resolveColumnMap(options.tableMaps, r);
      if (sameColumnMap(now, r.columnMap)) continue;
      if (!r.held) {
        await setColumnMapBeforeCopy(target, options.subscription, r, now);
        continue;
      }
      const key = tableKey(r.schema, r.table);
      throw new SyncError(`the --table-map "columns" for ${key} (${JSON.stringify(now)}) differ from those its target rows were copied under (${JSON.stringify(r.columnMap)}); run with the same "columns" again, or copy the table afresh under the new ones: pg-live-sync resync --subscription ${options.subscription} --table '${key.replace(/'/g, "'\\''")}', then run with the new map`, 'usage');
    }
  }

  /**
   * A sync resumes only from the source database it started on: another server holding a slot of
   * the same name would have its changes applied here as if they were the source's. A promoted
   * physical standby keeps the system identifier, so a failover passes. State from before the
   * identity was recorded takes this source's.
   */
  private async checkSourceIdentity(source: pg.Client, target: pg.Client): Promise<void> {
    const subname = this.options.subscription;
    const was = (await loadSubscription(target, subname))?.sourceIdentity;
    const now = await databaseIdentity(source);
    if (otherDatabase(now, was)) {
      throw new SyncError(`the --source ${describeEndpoint(this.options.source)} is ${describeIdentity(now)}, but subscription "${subname}" on this target streams from ${describeIdentity(was!)}: this source's changes would be applied as if they were that one's; give the sync's own source in --source, or sync from this one under another --subscription (a copy afresh)`, 'source_changed');
    }
    if (now.systemId !== null && (was?.systemId !== now.systemId || was?.oid !== now.oid || was?.name !== now.name)) await recordSourceIdentity(target, subname, now);
  }

  private async lock(target: pg.Client): Promise<void> {
    this.lockSession = await acquireRunLock(target, this.options.subscription, this.abandonedLocks, this.hooks.log);
    this.locked = true;
    this.everLocked = true;
  }

  /**
   * Starts afresh (slot, then the first copy, all tables in one snapshot) unless the target's
   * state says this subscription already started. Returns false when stopped before streaming.
   */
  private async prepare(source: pg.Client, target: pg.Client, tables: SyncedTable[]): Promise<boolean> {
    const { options } = this;
    const log = this.hooks.log;
    const sub = await loadSubscription(target, options.subscription);
    if (sub?.consistentLsn != null) return sub.appliedLsn === null && options.copyData ? this.resumeFirstCopy(source, target, sub, tables) : true;

    if (sub === null) {
      // Slot names are cluster-wide but this state is per target: without a row here, they are not ours.
      const foreign = await subscriptionSlots(source, options.subscription);
      if (foreign.length > 0) throw new SyncError(notOwnedSlots(options.subscription, foreign, 'run'), 'slot_not_owned');
    } else {
      // Our row, written before the slot was created: a start that never recorded its slot's position left nothing worth keeping.
      if (await dropSlotIfExists(source, this.slot)) log('info', `dropped replication slot "${this.slot}" left by an unfinished earlier start`);
      await dropTableSyncSlots(source, options.subscription);
    }
    await resetSubscription(target, { subname: options.subscription, slotName: this.slot, publications: options.publications, source: describeEndpoint(options.source) }, tables);
    const identity = await databaseIdentity(source);
    if (identity.systemId !== null) await recordSourceIdentity(target, options.subscription, identity);
    for (const t of tables) this.progress.set(tableKey(t.source.schema, t.source.table), initialProgress(t));

    const created = await createSlotWithSnapshot(this.source, this.slot);
    log('info', `created replication slot "${this.slot}" at ${formatLsn(created.consistentLsn)}`);
    let exporterOpen = true;
    const closeExporter = async () => {
      if (!exporterOpen) return;
      exporterOpen = false;
      await created.exporter.end().catch(() => undefined);
    };
    try {
      await setConsistentLsn(target, options.subscription, created.consistentLsn);
      if (!options.copyData) {
        for (const t of tables) await setTableState(target, options.subscription, t.source, 'f', { lsn: created.consistentLsn });
        await this.copied(target, created.consistentLsn);
        return true;
      }
      return await this.firstCopy(target, created.snapshot, created.consistentLsn, tables, null, closeExporter);
    } catch (err) {
      if (this.abort.signal.aborted) return false;
      throw err;
    } finally {
      await closeExporter();
    }
  }

  /** Copies `tables` in the main slot's snapshot, then records the copy's position as applied. */
  private async firstCopy(target: pg.Client, snapshot: string, consistentLsn: Lsn, tables: SyncedTable[], holder: HeldSnapshot | null, onSnapshotImported: () => Promise<void>): Promise<boolean> {
    const { options } = this;
    this.phase = 'copying';
    try {
      // A table whose copy fails is left in `i` with its error; it syncs on its own later.
      await this.withCopyProgress(target, () =>
        copyTables({
          source: this.source,
          target: this.target,
          subscription: options.subscription,
          slot: this.slot,
          snapshot,
          consistentLsn,
          tables,
          workers: options.tableSyncWorkers,
          chunkBytes: options.copyChunkBytes ?? COPY_CHUNK_BYTES,
          holder,
          log: this.hooks.log,
          signal: this.abort.signal,
          onSnapshotImported,
          analyzer: (this.analyzer ??= new BackgroundAnalyzer(this.target, this.hooks.log)),
          onProgress: (p) => this.onCopyProgress(p),
        }),
      );
      await this.copied(target, consistentLsn);
      return true;
    } catch (err) {
      if (this.abort.signal.aborted) {
        this.hooks.log('info', 'stopped during the initial copy; the next run keeps the finished tables (and chunks) and copies the rest');
        return false;
      }
      throw err;
    }
  }

  /**
   * A first copy cut short (the slot exists, nothing streamed yet: applied_lsn unset). If its
   * snapshot is still held (copy_snapshot), the tables it did not finish are copied in that very
   * snapshot, chunked ones from their first unfinished chunk, and all of them join the main stream
   * at the slot's consistent point as if never interrupted. Otherwise they sync on their own later
   * (follow), copied afresh. Returns false when stopped.
   */
  private async resumeFirstCopy(source: pg.Client, target: pg.Client, sub: SubscriptionRow, tables: SyncedTable[]): Promise<boolean> {
    const log = this.hooks.log;
    const subname = this.options.subscription;
    const held = (await loadHeldSnapshots(target, subname, this.slot))[0];
    if (!held) return true;
    const forget = async (why: string | null) => {
      if (why) log('warn', `${why}; the tables the interrupted first copy did not finish are copied afresh, each through its own slot`);
      await endHolders(source, [held.holderPid]).catch(() => undefined);
      await deleteHeldSnapshot(target, subname, this.slot);
      return true;
    };
    const rows = new Map((await loadTableProgress(target, subname)).map((r) => [tableKey(r.schema, r.table), r]));
    const unfinished = tables.filter((t) => {
      const row = rows.get(tableKey(t.source.schema, t.source.table));
      return row !== undefined && !row.removed && (row.state === 'i' || row.state === 'd');
    });
    if (unfinished.length === 0) return forget(null);
    const slot = await slotInfo(source, this.slot);
    // Exact only while the slot still starts at the snapshot's point: then every change after it is still to come.
    if (!slot || held.consistentLsn !== sub.consistentLsn || (slot.confirmedFlush ?? 0n) > held.consistentLsn) {
      return forget(`the snapshot of the interrupted first copy no longer matches replication slot "${this.slot}"`);
    }
    let holder: HeldSnapshot;
    try {
      holder = await holdSnapshot(this.source, held.snapshot);
    } catch (err) {
      return forget(`the snapshot of the interrupted first copy can no longer be imported (${errorMessage(err)}): its holder process is gone (the source restarted, it was killed, or no run came within ${HOLDER_GRACE_MS / 60_000} minutes)`);
    }
    await recordHeldSnapshot(target, subname, { slotName: this.slot, consistentLsn: held.consistentLsn, snapshot: holder.snapshot, holderPid: holder.backendPid, holderOsPid: holder.osPid });
    // Adopted: this run's holder keeps the snapshot from now on.
    await endHolders(source, [held.holderPid]).catch(() => undefined);
    for (const row of rows.values()) this.progress.set(tableKey(row.schema, row.table), row);
    log('info', `resuming the interrupted first copy in its snapshot at ${formatLsn(held.consistentLsn)}: ${counted(unfinished.length, 'table')} left`);
    return this.firstCopy(target, holder.snapshot, held.consistentLsn, unfinished, holder, async () => undefined);
  }

  /** The copy holds the source as of the slot's consistent point: that is the applied position now. */
  private async copied(target: pg.Client, consistentLsn: Lsn): Promise<void> {
    await writeAppliedLsn(target, this.options.subscription, consistentLsn, null);
    this.recorded = consistentLsn;
  }

  private inFlight = new Map<string, CopyProgress>();
  private analyzer: BackgroundAnalyzer | undefined;

  private onCopyProgress(p: CopyProgress): void {
    const k = tableKey(p.table.source.schema, p.table.source.table);
    const tp = this.progress.get(k);
    if (tp) {
      tp.rowsCopied = p.rows;
      tp.bytesCopied = p.bytes;
      tp.state = p.done ? 'f' : 'd';
      if (p.chunks) tp.chunks = p.chunks;
      else delete tp.chunks;
      if (!p.done) tp.lastError = null;
    }
    if (p.done) this.inFlight.delete(k);
    else this.inFlight.set(k, p);
  }

  /** Records copy progress in the state table at least every second while `work` runs. */
  private async withCopyProgress<T>(stateClient: pg.Client, work: () => Promise<T>): Promise<T> {
    let writing: Promise<void> | null = null;
    const timer = setInterval(() => {
      if (writing || this.inFlight.size === 0) return;
      const rows = [...this.inFlight.values()].map((p) => ({ schema: p.table.source.schema, table: p.table.source.table, rowsCopied: p.rows, bytesCopied: p.bytes }));
      writing = writeCopyProgress(stateClient, this.options.subscription, rows)
        .catch((err) => this.hooks.log('warn', `could not record copy progress: ${errorMessage(err)}`))
        .finally(() => (writing = null));
    }, STATUS_INTERVAL_MS);
    try {
      return await work();
    } finally {
      clearInterval(timer);
      await writing;
    }
  }

  /**
   * Streams until stopped; a lost connection or a transient server error (deadlock, disk full, ...)
   * is logged and retried with backoff, from the target's state.
   */
  private async streamWithRetries(target: pg.Client): Promise<pg.Client> {
    const log = this.hooks.log;
    let attempt = 0;
    let client: pg.Client | null = target;
    for (;;) {
      const startedAt = Date.now();
      try {
        if (!client) {
          client = await connect(this.target);
          this.targetClient = client;
          this.locked = false;
          await this.lock(client);
        }
        await this.follow(client);
        return client;
      } catch (err) {
        if (this.abort.signal.aborted && !(err instanceof SyncError && err.code !== 'connect')) return client ?? target;
        // Held by a run that may be live (this run's own stale session was ended): wait for it rather than exit.
        const heldElsewhere = err instanceof SyncError && err.code === 'running';
        if (!isTransient(err) && !heldElsewhere) throw err;
        if (Date.now() - startedAt > 60_000) attempt = 0;
        attempt++;
        const delay = Math.min(MAX_RETRY_DELAY_MS, 1000 * 2 ** (attempt - 1));
        const retry = `retry ${attempt} in ${delay / 1000} s`;
        log('warn', heldElsewhere ? `${errorMessage(err)}; ${retry}` : retryMessage(err, retry));
        if (client) {
          if (this.locked && this.lockSession) this.abandonedLocks = [...this.abandonedLocks.slice(-9), this.lockSession];
          this.locked = false;
          this.lockSession = null;
          if (this.targetClient === client) this.targetClient = null;
          await client.end().catch(() => undefined);
          client = null;
        }
        this.stream = null;
        if (await this.sleep(delay)) return target;
      }
    }
  }

  /** Resolves true if stopped while sleeping. */
  private sleep(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      if (this.abort.signal.aborted) return resolve(true);
      const t = setTimeout(() => resolve(false), ms);
      this.abort.signal.addEventListener('abort', () => {
        clearTimeout(t);
        resolve(true);
      }, { once: true });
    });
  }

  /**
   * One streaming session: decides each table's part from the target's state, starts the table
   * syncs that are due, and applies the main stream until stopped or a connection is lost.
   */
  private async follow(target: pg.Client): Promise<void> {
    const { options } = this;
    const log = this.hooks.log;
    const sub = await loadSubscription(target, options.subscription);
    if (!sub || sub.consistentLsn === null) throw new SyncError(`the state of subscription "${options.subscription}" disappeared from the target; run pg-live-sync drop, then run again`, 'state_missing');
    const catalog = await connect(this.source, { applicationName: 'pg_live_sync_catalog' });
    // Checked on every reconnect too: the --source URL may reach another server by now.
    const startLsn = await this.checkSourceIdentity(catalog, target).then(() => this.startPosition(catalog, target, sub)).catch(async (err) => {
      await catalog.end().catch(() => undefined);
      throw err;
    });
    this.recorded = startLsn;
    const stateClient = await connect(this.target, { applicationName: 'pg_live_sync_state' });
    const jobsAbort = new AbortController();
    const stopJobs = () => jobsAbort.abort();
    this.abort.signal.addEventListener('abort', stopJobs, { once: true });
    const running = new Set<Promise<void>>();
    let pollTimer: NodeJS.Timeout | undefined;
    let stream: ReplicationStream | null = null;
    let openApply: OpenTransactionApplier | null = null;
    const applier = new Applier(target, startLsn, log, (table, missing, previous) => {
      // The relation this run applied before, else what the state recorded (drift.ts).
      const recorded = previous ? previous.columns.map((c) => c.name) : this.syncedColumns.get(tableKey(table.source.schema, table.source.table)) ?? null;
      return this.schemaDrift(catalog, target, stateClient, table, missing, true, recorded);
    });
    /** Every source transaction committing before this has been seen by this stream. */
    let processed = startLsn;
    try {
      // Each table's part, from its state.
      const published = new Map((await listPublishedTables(catalog, options.publications)).map((p) => [tableKey(p.schema, p.table), p]));
      for (const t of await tablesToResync(target, options.subscription)) {
        await resetTableForResync(target, options.subscription, t);
        log('warn', resyncReason(t));
      }
      const states = await loadTableProgress(target, options.subscription);
      this.syncedColumns = await loadSyncedColumns(target, options.subscription);
      const slotsInUse = new Set<string>();
      // One pass over the target's catalog for every table, not one per table.
      const checked = await checkTarget(stateClient, this.target, [...published.values()], options.tableMaps);
      const syncedByKey = new Map(checked.synced.map((t) => [tableKey(t.source.schema, t.source.table), t]));
      for (const row of states) this.progress.set(tableKey(row.schema, row.table), row);
      for (const row of states) {
        const key = tableKey(row.schema, row.table);
        const pub = published.get(key);
        if (row.removed) continue;
        if (!pub) {
          await markTableRemoved(target, options.subscription, row);
          row.removed = true;
          log('warn', `${key} left the publication: no longer synced; its target data stays`);
          continue;
        }
        let table = syncedByKey.get(key);
        const drift = checked.driftOnly.get(key);
        if ((row.state === 'r' || row.state === 's') && drift) {
          // Columns added on the source (or lost on the target) while no run was streaming.
          if ((await this.schemaDrift(catalog, target, stateClient, drift.table, drift.columns, false, this.syncedColumns.get(key) ?? null)) === 'stopped') continue;
          table = (await checkTarget(stateClient, this.target, [pub], options.tableMaps)).synced[0];
        }
        if ((row.state === 'r' || row.state === 's') && !table) {
          // A ready table that can no longer be written (renamed or altered on the target).
          throw new SyncError(checked.tableErrors.get(key) ?? `${key} cannot be synced any more`, 'target_table');
        }
        if ((row.state === 'r' || row.state === 's') && table) {
          await this.noteSyncedColumns(target, table.source, table.columns.map((c) => c.name));
          applier.setTable(table, row.state === 'r' ? 0n : (row.lsn ?? 0n));
        } else if (row.state === 'f' && table && row.lsn !== null && row.lsn >= startLsn && !(await slotInfo(catalog, tableSyncSlotName(options.subscription, pub.relid)))) {
          // Copied in the main slot's snapshot: the main stream takes it from its copy position.
          await this.noteSyncedColumns(target, table.source, table.columns.map((c) => c.name));
          await setTableState(target, options.subscription, row, 's', { lsn: row.lsn });
          row.state = 's';
          applier.setTable(table, row.lsn);
        } else {
          // A copy cut short (`d`) may resume in its slot's held snapshot (tablesync.ts).
          if (row.state === 'f' || row.state === 'd') slotsInUse.add(tableSyncSlotName(options.subscription, pub.relid));
          this.queueJob(pub);
        }
      }
      for (const [key, pub] of published) {
        if (!this.progress.has(key) || this.progress.get(key)!.removed) await this.tableJoined(stateClient, pub);
      }
      for (const slot of await dropTableSyncSlots(catalog, options.subscription, slotsInUse)) log('info', `dropped table-sync slot "${slot}" that no table needs`);
      await this.promote(target, startLsn);
      await target.query('SET session_replication_role = replica');

      openApply = options.streaming !== false && options.applyWhileOpen !== false
        ? new OpenTransactionApplier({ target: this.target, log, main: applier, mainConnection: target, watch: stateClient })
        : null;
      stream = await ReplicationStream.start(this.source, this.slot, options.publications, startLsn, { spoolBase: options.spoolDir, streaming: options.streaming, openCommits: openApply ?? undefined });
      this.stream = stream;
      this.phase = 'streaming';
      await setSubscriptionError(target, options.subscription, null);
      log('info', `streaming from ${formatLsn(startLsn)}`);

      // Table syncs run beside the main stream and meet it at a handover.
      let pausedFor: ((at: Lsn) => void)[] = [];
      const ctx: TableSyncContext = {
        source: this.source,
        target: this.target,
        subscription: options.subscription,
        publications: options.publications,
        copyChunkBytes: options.copyChunkBytes ?? COPY_CHUNK_BYTES,
        spoolDir: options.spoolDir,
        streaming: options.streaming,
        log,
        signal: jobsAbort.signal,
        onProgress: (p) => this.onCopyProgress(p),
        onState: (t, state, lsn) => this.setProgressState(t.source.schema, t.source.table, state, lsn),
        main: {
          position: () => processed,
          pause: () => new Promise<Lsn>((resolve, reject) => {
            if (jobsAbort.signal.aborted) return reject(new SyncError('stopped', 'stopped'));
            jobsAbort.signal.addEventListener('abort', () => reject(new SyncError('stopped', 'stopped')), { once: true });
            pausedFor.push(resolve);
            this.interrupt?.('task');
          }),
          resume: (table, from) => {
            if (from !== null && !this.progress.get(tableKey(table.source.schema, table.source.table))?.removed) {
              applier.setTable(table, from);
              this.setProgressState(table.source.schema, table.source.table, 's', from);
            }
            resumeMain?.();
          },
        },
      };
      let resumeMain: (() => void) | null = null;
      const startDueJobs = () => {
        const busy = [...this.jobs.values()].filter((j) => j.running).length;
        let free = Math.max(1, options.tableSyncWorkers) - busy;
        for (const [key, job] of this.jobs) {
          if (free <= 0 || job.running || job.notBefore > Date.now()) continue;
          free--;
          job.running = true;
          const p = this.runJob(ctx, catalog, stateClient, key, job).finally(() => running.delete(p));
          running.add(p);
        }
      };
      let polling = false;
      let backgroundError: unknown = null;
      pollTimer = setInterval(() => {
        startDueJobs();
        if (polling) return;
        polling = true;
        this.pollPublications(catalog, stateClient, applier)
          .then((published) => this.pollResyncs(stateClient, applier, published))
          .then(() => this.readServerWalEnd(catalog))
          .then(startDueJobs)
          .catch((err) => {
            // A lost connection here is the whole session's: reconnect everything the same way.
            if (isTransient(err)) {
              backgroundError ??= err;
              this.interrupt?.('task');
            } else log('warn', `could not read the publications: ${errorMessage(err)}`);
          })
          .finally(() => (polling = false));
      }, PUBLICATION_POLL_MS);
      startDueJobs();

      const batches = stream.eventBatches()[Symbol.asyncIterator]();
      let next: Promise<IteratorResult<StreamEvent[]>> | null = null;
      // Events already received: taken one by one without waiting, the loop's checks still between them.
      let received: StreamEvent[] = [];
      let at = 0;
      let lastEventAt = Date.now();
      const idleTimer = setInterval(() => {
        if (applier.inSourceTransaction) return;
        if (applier.group ? Date.now() - lastEventAt >= IDLE_COMMIT_MS : processed > this.recorded && Date.now() - this.recordedAt >= RECORD_IDLE_MS) this.interrupt?.('idle');
      }, IDLE_COMMIT_MS);
      try {
        while (!this.abort.signal.aborted) {
          if (backgroundError) throw backgroundError;
          // Between source transactions: hand tables over, apply table set changes.
          if (!applier.inSourceTransaction && (pausedFor.length > 0 || this.mainTasks.length > 0)) {
            await this.checkpoint(target, applier, stream);
            for (const task of this.mainTasks.splice(0)) await task();
            const waiting = pausedFor;
            pausedFor = [];
            for (const resolve of waiting) {
              const resumed = new Promise<void>((r) => (resumeMain = r));
              resolve(processed);
              await Promise.race([resumed, new Promise<void>((r) => jobsAbort.signal.addEventListener('abort', () => r(), { once: true }))]);
              resumeMain = null;
            }
            await this.settleIdle(target, applier, processed);
            continue;
          }
          if (at === received.length) {
            const pending = (next ??= batches.next());
            const got = await new Promise<IteratorResult<StreamEvent[]> | Wake>((resolve, reject) => {
              this.interrupt = resolve;
              pending.then(resolve, reject);
            });
            this.interrupt = null;
            if (got === 'stop') break;
            if (got === 'task') continue;
            if (got === 'idle') {
              await this.checkpoint(target, applier, stream);
              await this.settleIdle(target, applier, processed);
              if (this.recorded > stream.acknowledged) stream.acknowledge(this.recorded, true);
              continue;
            }
            next = null;
            if (got.done) throw new SyncError('the source ended the replication stream', 'stream_ended');
            received = got.value;
            at = 0;
          }
          const ev = received[at++];
          if (ev.walEnd > this.serverWalEnd) this.serverWalEnd = ev.walEnd;
          if (ev.kind === 'keepalive') {
            if (applier.inSourceTransaction) {
              if (ev.replyRequested) stream.acknowledge(stream.acknowledged, true);
              continue;
            }
            // Everything before this keepalive has been seen: commit what is open, record the
            // server's WAL end as applied, then the slot may move there, so an idle sync never
            // holds WAL back (and a source shutting down, which asks until it is answered, gets
            // its answer) and the slot is never ahead of the target's state.
            processed = maxLsn(processed, ev.walEnd);
            stream.received(ev.walEnd);
            if (applier.group) await this.checkpoint(target, applier, stream);
            await this.settleIdle(target, applier, processed, ev.replyRequested);
            stream.acknowledge(this.recorded, true);
            continue;
          }
          lastEventAt = Date.now();
          if (ev.kind !== 'change') {
            if (openApply) processed = await this.openTransactionEvent(ev, openApply, target, applier, stream, processed);
            continue;
          }
          const change = ev.change;
          // Most changes are only queued: no promise, no turn of the event loop.
          const applying = applier.apply(change);
          if (applying) await applying;
          // A replayed transaction the target already holds is not pending.
          if (change.tag === 'begin' && applier.group && this.pendingSince === null) this.pendingSince = change.commitTime;
          if (change.tag === 'commit') {
            processed = maxLsn(processed, change.endLsn);
            if (checkpointDue(applier.group)) await this.checkpoint(target, applier, stream, true);
          }
        }
        if (applier.inSourceTransaction) {
          // The group committing before this one is acknowledged if it made it.
          await this.committed().catch(() => undefined);
          await abandonGroup(target, applier);
        } else {
          // A clean stop records and confirms everything seen, so a caught-up sync shows no lag.
          await this.checkpoint(target, applier, stream);
          await this.settleIdle(target, applier, processed, true);
          stream.acknowledge(this.recorded, true);
        }
      } finally {
        clearInterval(idleTimer);
      }
    } catch (err) {
      await abandonGroup(target, applier).catch(() => undefined);
      throw err;
    } finally {
      // A COMMIT still unanswered is the target's to keep or not: the next session starts from its state.
      this.committing = null;
      clearInterval(pollTimer);
      this.abort.signal.removeEventListener('abort', stopJobs);
      jobsAbort.abort();
      await Promise.allSettled([...running]);
      for (const job of this.jobs.values()) job.running = false;
      // Tasks left for this session's applier; the next session decides from the target's state.
      this.mainTasks.length = 0;
      this.resyncing.clear();
      await openApply?.close();
      if (stream) {
        await stream.close();
        const streamed = stream.spool?.committed;
        const spooled = streamed && streamed.transactions > 0
          ? ` (${streamed.transactions} of them streamed while open, ${formatBytes(streamed.bytes)} spooled, ${openApply?.applied.transactions ?? 0} applied while open)`
          : '';
        log('info', `stopped at ${formatLsn(stream.acknowledged)} after ${counted(this.transactionsApplied, 'transaction')}${spooled}, ${counted(this.changesApplied, 'change')}`);
      }
      await Promise.all([catalog.end().catch(() => undefined), stateClient.end().catch(() => undefined)]);
    }
  }

  /**
   * A transaction the source streams while open, applied while open (openApply.ts) beside the
   * main applier. Each segment is applied only after everything the stream delivered before it is
   * committed on the target, and its commit waits for the same, so target commits keep the
   * source's order. Returns the new `processed`.
   */
  private async openTransactionEvent(ev: OpenTransactionEvent, open: OpenTransactionApplier, target: pg.Client, applier: Applier, stream: ReplicationStream, processed: Lsn): Promise<Lsn> {
    switch (ev.kind) {
      case 'open-start':
        if (ev.first ? open.hasRoom : open.holds(ev.xid)) {
          await this.checkpoint(target, applier, stream);
          if (ev.first) await open.begin(ev.xid, processed);
        }
        return processed;
      case 'open-change':
        await open.change(ev);
        return processed;
      case 'open-stop':
        await open.segmentEnd(ev.xid);
        return processed;
      case 'open-abort':
        await open.abort(ev.xid, ev.subxid);
        return processed;
      case 'open-commit': {
        await this.checkpoint(target, applier, stream);
        const committed = await open.commit(ev, async (client, at, commitTime, missing) => {
          await writeAppliedLsn(client, this.options.subscription, at, commitTime, missing);
          if (this.handedOverBy(at)) await this.promote(client, at);
        });
        // Not committed here: the stream replays it from the spool next.
        if (!committed) return processed;
        applier.committed(ev.endLsn);
        // pgoutput counts what it described to the streamed transaction as described for good.
        for (const relation of committed.relations) {
          const learning = applier.apply(relation);
          if (learning) await learning;
        }
        this.pendingSince = null;
        this.checkpointed(committed.done, stream);
        return maxLsn(processed, ev.endLsn);
      }
    }
  }

  /**
   * Where the main stream starts: the target's applied position. Runs acknowledge to the slot only
   * what the target committed (durably: synchronous_commit is on), so a slot confirmed past it was
   * moved by another sync of the same name, or the target lost commits (fsync off, a restore):
   * either way the changes in between are not on this target.
   */
  private async startPosition(catalog: pg.Client, target: pg.Client, sub: SubscriptionRow): Promise<Lsn> {
    const { subscription } = this.options;
    const start = maxLsn(sub.appliedLsn ?? 0n, sub.consistentLsn ?? 0n);
    const info = await slotInfo(catalog, this.slot);
    if (!info) {
      throw new SyncError(`replication slot "${this.slot}" no longer exists on the source, so changes since ${formatLsn(start)} are gone; run pg-live-sync drop --subscription ${subscription} and run again to copy afresh`, 'slot_missing');
    }
    if (info.walStatus === 'lost') {
      throw new SyncError(`replication slot "${this.slot}" has lost WAL it needed (wal_status lost); run pg-live-sync drop --subscription ${subscription} and run again to copy afresh, and raise max_slot_wal_keep_size`, 'slot_lost');
    }
    const confirmed = info.confirmedFlush ?? 0n;
    if (sub.acksAppliedOnly) {
      if (confirmed > start) {
        throw new SyncError(`replication slot "${this.slot}" is confirmed up to ${formatLsn(confirmed)} on the source, past the ${formatLsn(start)} this target holds: the changes in between are not on this target and the source no longer keeps them (either another sync of subscription "${subscription}", into another target database, moved the slot, or this target lost commits after they were confirmed: a crash with fsync off, or with synchronous_commit off under an earlier pg-live-sync, or a restore from a backup); copy afresh: run this target under another --subscription, or if no other target uses the slot, run pg-live-sync drop --subscription ${subscription} here and run again`, 'slot_moved');
      }
      return start;
    }
    // State from an older version, which acknowledged idle positions without recording them.
    await adoptSlotPosition(target, subscription, confirmed);
    return maxLsn(start, confirmed);
  }

  /**
   * Commits the open group with its position (promoting tables it makes ready), then acknowledges
   * it. `pipelined`: when the group hands no table over, its COMMIT is sent and the stream goes on
   * without waiting for the answer (acknowledged when it comes); any other checkpoint first waits
   * for that answer, so groups commit in order and none after a failed one.
   */
  private async checkpoint(target: pg.Client, applier: Applier, stream: ReplicationStream, pipelined = false): Promise<void> {
    await this.committed();
    const lsn = applier.group?.lastCommitLsn ?? null;
    if (pipelined && lsn !== null && !this.handedOverBy(lsn)) {
      const sent = await checkpointPipelined(applier, (at, commitTime, missing) => appliedLsnStatement(this.options.subscription, at, commitTime, missing));
      if (sent) {
        this.pendingSince = null;
        this.committing = sent.committed.then((done) => this.checkpointed(done, stream));
        // Seen by the next checkpoint (or the next statement, which fails the same way).
        this.committing.catch(() => undefined);
        return;
      }
    }
    const done = await checkpoint(target, applier, async (client, at, commitTime, missing) => {
      await writeAppliedLsn(client, this.options.subscription, at, commitTime, missing);
      if (this.handedOverBy(at)) await this.promote(client, at);
    });
    this.pendingSince = null;
    if (done) this.checkpointed(done, stream);
  }

  /** Waits for the pipelined COMMIT in flight, if any; throws if its group failed. */
  private async committed(): Promise<void> {
    const committing = this.committing;
    if (!committing) return;
    try {
      await committing;
    } finally {
      if (this.committing === committing) this.committing = null;
    }
  }

  private checkpointed(done: CheckpointResult, stream: ReplicationStream): void {
    // A pipelined COMMIT answering after its session ended must not move the position back.
    this.recorded = maxLsn(this.recorded, done.lsn);
    this.recordedAt = Date.now();
    for (const m of done.missing) {
      const tp = this.progress.get(tableKey(m.schema, m.table));
      if (!tp) continue;
      tp.missingUpdates += m.updates;
      tp.missingDeletes += m.deletes;
    }
    stream.acknowledge(done.lsn, true);
    this.transactionsApplied += done.transactions;
    this.changesApplied += done.changes;
  }

  private handedOverBy(lsn: Lsn): boolean {
    return [...this.progress.values()].some((t) => t.state === 's' && t.lsn !== null && t.lsn <= lsn && !t.removed);
  }

  /**
   * With nothing open and everything before `processed` seen, `processed` is as good as an
   * applied position: record it, so tables handed over there become ready without waiting for a
   * source write, and so the slot may be acknowledged that far (at most every RECORD_IDLE_MS
   * otherwise, or at once when the source asks for a reply).
   */
  private async settleIdle(target: pg.Client, applier: Applier, processed: Lsn, now = false): Promise<void> {
    if (applier.group || applier.inSourceTransaction) return;
    await this.committed();
    const handover = this.handedOverBy(processed);
    if (!handover && (processed <= this.recorded || (!now && Date.now() - this.recordedAt < RECORD_IDLE_MS))) return;
    await target.query('BEGIN');
    try {
      await writeAppliedLsn(target, this.options.subscription, processed, null);
      if (handover) await this.promote(target, processed);
      await target.query('COMMIT');
    } catch (err) {
      await target.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
    applier.committed(processed);
    this.recorded = processed;
    this.recordedAt = Date.now();
  }

  /**
   * A column added on the source (drift.ts). With --apply-ddl add-column the target gets it in the
   * open target transaction, so it commits with the first changes that carry it, existing rows
   * filled as the source's are; a volatile DEFAULT's per-row values never reach the WAL, so such a
   * table is also copied afresh. Otherwise the table alone stops with the ALTER to run, and syncs on
   * its own (copied afresh) once the target has the column; the others stream on.
   */
  private async schemaDrift(
    catalog: pg.Client, target: pg.Client, stateClient: pg.Client, table: SyncedTable, missing: string[], inTransaction: boolean, recorded: string[] | null,
  ): Promise<'added' | 'stopped'> {
    const key = tableKey(table.source.schema, table.source.table);
    const targetName = qualified(table.target.schema, table.target.table);
    const lost = lostColumns(missing, recorded);
    if (lost.length > 0) return this.stopTable(catalog, stateClient, table, await lostColumnsMessage(catalog, stateClient, table, lost));
    const columns = await addedColumns(catalog, table.source, missing);
    const sql = addColumnSql(table.target, columns);
    const names = missing.map((c) => quoteIdent(c)).join(', ');
    let why: string;
    const added = this.options.applyDdl?.includes('add-column') && columns.length === missing.length
      ? await this.addColumns(target, sql, inTransaction).then(() => null, (err: unknown) => errorMessage(err))
      : undefined;
    if (added === null) {
      this.hooks.log('warn', `${key} has new column(s) ${names} on the source; added them to ${targetName}: ${sql.join(' ')}`);
      // Known to this run only: the state records it once the target is seen to have the columns
      // (next start, or the table's copy), so an ALTER rolled back with its group is not taken as done.
      this.syncedColumns.set(key, [...(recorded ?? table.columns.map((c) => c.name)), ...missing]);
      if (!columns.some((c) => c.rewritten)) return 'added';
      why = `${key}: the source filled its new column(s) ${names} row by row (a volatile DEFAULT), which the WAL does not carry; copying it afresh through its own slot while the other tables stream`;
    } else {
      why = driftStopped(table, columns, missing, added ?? null);
    }
    return this.stopTable(catalog, stateClient, table, why);
  }

  /** Takes a table out of the stream with `why` as its error; it syncs (copied afresh) on its own once it can. */
  private async stopTable(catalog: pg.Client, stateClient: pg.Client, table: SyncedTable, why: string): Promise<'stopped'> {
    const key = tableKey(table.source.schema, table.source.table);
    const pub = (await listPublishedTables(catalog, this.options.publications)).find((p) => tableKey(p.schema, p.table) === key);
    this.jobs.delete(key);
    await resetTableForResync(stateClient, this.options.subscription, table.source);
    await setTableError(stateClient, this.options.subscription, table.source, why);
    const tp = this.progress.get(key);
    if (tp) Object.assign(tp, { state: 'i', lsn: null, rowsCopied: 0, bytesCopied: 0, lastError: why });
    this.hooks.log('error', why);
    if (pub) this.queueJob(pub);
    return 'stopped';
  }

  /** Records the source columns the table's target receives, when they changed (synced_columns). */
  private async noteSyncedColumns(client: pg.Client, source: TableName, names: string[]): Promise<void> {
    const key = tableKey(source.schema, source.table);
    const known = this.syncedColumns.get(key);
    if (known && known.length === names.length && known.every((c, i) => c === names[i])) return;
    await recordSyncedColumns(client, this.options.subscription, source, names);
    this.syncedColumns.set(key, names);
  }

  /** Inside the open target transaction a savepoint keeps a failed ALTER from aborting it. */
  private async addColumns(target: pg.Client, sql: string[], inTransaction: boolean): Promise<void> {
    await target.query(inTransaction ? 'SAVEPOINT pg_live_sync_ddl' : 'BEGIN');
    try {
      for (const statement of sql) await target.query(statement);
      await target.query(inTransaction ? 'RELEASE SAVEPOINT pg_live_sync_ddl' : 'COMMIT');
    } catch (err) {
      await target.query(inTransaction ? 'ROLLBACK TO SAVEPOINT pg_live_sync_ddl' : 'ROLLBACK');
      throw err;
    }
  }

  /** Tables whose handover position the main stream has passed are ready: s -> r. */
  private async promote(client: pg.Client, lsn: Lsn): Promise<void> {
    const n = await promoteCaughtUpTables(client, this.options.subscription, lsn);
    if (n === 0) return;
    for (const t of this.progress.values()) {
      if (t.state === 's' && t.lsn !== null && t.lsn <= lsn && !t.removed) t.state = 'r';
    }
  }

  private setProgressState(schema: string, table: string, state: TableState, lsn: Lsn | null): void {
    const tp = this.progress.get(tableKey(schema, table));
    if (tp) {
      tp.state = state;
      tp.lsn = lsn;
    }
  }

  /**
   * --create-tables: creates what the target lacks for these tables in one transaction, or
   * refuses (nothing created) naming what the user must do first. Without clients it uses
   * connections of its own, as the engine's are shared by tasks running meanwhile.
   */
  private async createMissingTables(published: PublishedTable[], clients?: { source: pg.Client; target: pg.Client }): Promise<void> {
    const source = clients?.source ?? (await connect(this.source));
    try {
      const target = clients?.target ?? (await connect(this.target));
      try {
        const plan = await planCreateTables(source, target, published, this.options.tableMaps);
        if (plan.errors.length > 0) throw new CheckError(plan.errors.map((f) => f.message));
        await applyCreatePlan(target, plan);
        for (const t of plan.tables) this.hooks.log('info', `created target table ${qualified(t.target.schema, t.target.table)} for ${tableKey(t.source.schema, t.source.table)} (--create-tables)`);
        for (const n of plan.notes) this.hooks.log('warn', n);
        for (const s of plan.optional) this.hooks.log('info', `not created, run it on the target if wanted: ${s}`);
      } finally {
        if (!clients) await target.end().catch(() => undefined);
      }
    } finally {
      if (!clients) await source.end().catch(() => undefined);
    }
  }

  private queueJob(published: PublishedTable): void {
    const key = tableKey(published.schema, published.table);
    const job = this.jobs.get(key);
    if (job) job.published = published;
    else this.jobs.set(key, { published, attempt: 0, notBefore: 0, running: false });
  }

  /** A table published now but not synced: record it and queue its own sync. */
  private async tableJoined(stateClient: pg.Client, pub: PublishedTable): Promise<void> {
    const key = tableKey(pub.schema, pub.table);
    const check = await checkTarget(stateClient, this.target, [pub], this.options.tableMaps);
    const table = check.synced[0];
    if (table) {
      await upsertTableRow(stateClient, this.options.subscription, table);
      this.progress.set(key, initialProgress(table));
    } else {
      const error = check.tableErrors.get(key) ?? 'cannot be synced';
      const target = resolveTarget(this.options.tableMaps, { schema: pub.schema, table: pub.table });
      await upsertTableError(stateClient, this.options.subscription, { schema: pub.schema, table: pub.table, relid: pub.relid, publication: pub.publications[0], target }, error);
      this.progress.set(key, { ...initialProgress({ ...pub, source: { schema: pub.schema, table: pub.table }, target }), lastError: error });
    }
    this.hooks.log('info', `${key} joined the publication; syncing it on its own`);
    this.queueJob(pub);
  }

  /**
   * A logical walsender puts each record's own LSN in XLogData's WAL-end field, and its keepalives
   * only how far decoding has read: while the sync is behind, neither shows how far the source has
   * written, and lag in bytes read as a few hundred bytes 40 s behind. The server says it.
   */
  private async readServerWalEnd(catalog: pg.Client): Promise<void> {
    const r = await catalog.query(`SELECT (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text AS lsn`);
    const lsn = r.rows[0]?.lsn ? parseLsn(r.rows[0].lsn as string) : 0n;
    if (lsn > this.serverWalEnd) this.serverWalEnd = lsn;
  }

  /**
   * Finds tables that joined or left the publications since the last look, and gives each queued
   * table sync the catalog as it stands now: a retry must see the fix the user made on the source
   * (a column list, a replica identity), not the snapshot taken when the table joined.
   */
  private async pollPublications(catalog: pg.Client, stateClient: pg.Client, applier: Applier): Promise<Map<string, PublishedTable>> {
    const published = new Map((await listPublishedTables(catalog, this.options.publications)).map((p) => [tableKey(p.schema, p.table), p]));
    for (const [key, pub] of published) {
      const known = this.progress.get(key);
      if (!known || known.removed) await this.tableJoined(stateClient, pub);
      else {
        const job = this.jobs.get(key);
        if (job && !job.running) job.published = pub;
      }
    }
    for (const [key, tp] of this.progress) {
      if (tp.removed || published.has(key)) continue;
      tp.removed = true;
      this.jobs.delete(key);
      this.mainTasks.push(async () => applier.removeTable(tp.schema, tp.table));
      this.interrupt?.('task');
      await markTableRemoved(stateClient, this.options.subscription, tp);
      this.hooks.log('warn', `${key} left the publication: no longer synced; its target data stays`);
    }
    return published;
  }

  /**
   * Tables to copy afresh while streaming (asked for by pg-live-sync resync, or their target table
   * was created again): the main stream lets go of the table between two source transactions, and
   * it syncs on its own like a table that joined. A table whose own sync is under way is taken up
   * once that is done.
   */
  private async pollResyncs(stateClient: pg.Client, applier: Applier, published: Map<string, PublishedTable>): Promise<void> {
    for (const t of await tablesToResync(stateClient, this.options.subscription)) {
      const key = tableKey(t.schema, t.table);
      const pub = published.get(key);
      if (!pub || this.jobs.get(key)?.running || this.resyncing.has(key)) continue;
      this.resyncing.add(key);
      const restart = async () => {
        try {
          applier.removeTable(t.schema, t.table);
          // Out of the queue first, so no attempt starts while the row is reset.
          this.jobs.delete(key);
          await resetTableForResync(stateClient, this.options.subscription, t);
          const tp = this.progress.get(key);
          if (tp) Object.assign(tp, { state: 'i', lsn: null, rowsCopied: 0, bytesCopied: 0, lastError: null });
          this.hooks.log('warn', resyncReason(t));
          this.queueJob(pub);
        } finally {
          this.resyncing.delete(key);
        }
      };
      if (applier.applies(t.schema, t.table)) {
        this.mainTasks.push(restart);
        this.interrupt?.('task');
      } else await restart();
    }
  }

  /** One attempt at a table's own sync; failures are recorded on the table and retried with backoff. */
  private async runJob(ctx: TableSyncContext, catalog: pg.Client, stateClient: pg.Client, key: string, job: TableJob): Promise<void> {
    const { options } = this;
    const pub = job.published;
    try {
      if (pub.publishesUpdateOrDelete && !pub.hasUsableIdentity) this.hooks.log('warn', noReplicaIdentityWarning(pub));
      if (options.createTables) await this.createMissingTables([pub]);
      let check = await checkTarget(stateClient, this.target, [pub], options.tableMaps);
      const drift = check.driftOnly.get(key);
      const lost = drift ? lostColumns(drift.columns, this.syncedColumns.get(key) ?? null) : [];
      if (drift && lost.length > 0) throw new SyncError(await lostColumnsMessage(catalog, stateClient, drift.table, lost), 'target_column');
      if (drift) {
        const columns = await addedColumns(catalog, drift.table.source, drift.columns);
        if (!options.applyDdl?.includes('add-column') || columns.length < drift.columns.length) throw new SyncError(driftStopped(drift.table, columns, drift.columns, null), 'schema_drift');
        // Copied afresh anyway: the columns need no fill.
        const sql = addColumnSql(drift.table.target, columns.map((c) => ({ ...c, fill: null })));
        await this.addColumns(stateClient, sql, false);
        this.hooks.log('warn', `${key}: added its source's new column(s) to the target before copying it: ${sql.join(' ')}`);
        check = await checkTarget(stateClient, this.target, [pub], options.tableMaps);
      }
      const table = check.synced[0];
      if (!table) throw new SyncError(check.tableErrors.get(key) ?? `${key} cannot be synced`, 'table');
      const row = (await loadTableProgress(stateClient, options.subscription)).find((r) => tableKey(r.schema, r.table) === key);
      if (!options.copyData && row?.state === 'i') {
        // Without copies, a table joins the stream where the stream is.
        await new Promise<void>((resolve, reject) => {
          this.mainTasks.push(async () => {
            try {
              const at = ctx.main.position();
              await setTableState(stateClient, options.subscription, table.source, 's', { lsn: at });
              ctx.main.resume(table, at);
              resolve();
            } catch (err) {
              reject(err);
            }
          });
          this.interrupt?.('task');
        });
      } else {
        const from = await syncTable(ctx, table, { state: row?.state ?? 'i', lsn: row?.lsn ?? null });
        this.hooks.log('info', `${key} caught up; the main stream applies it from ${formatLsn(from)}`);
      }
      await setTableError(stateClient, options.subscription, table.source, null);
      await this.noteSyncedColumns(stateClient, table.source, table.columns.map((c) => c.name));
      const tp = this.progress.get(key);
      if (tp) tp.lastError = null;
      this.jobs.delete(key);
    } catch (err) {
      job.running = false;
      if (ctx.signal.aborted) return;
      const error = errorMessage(err);
      job.attempt++;
      const delay = Math.min(MAX_TABLE_RETRY_DELAY_MS, 5_000 * 2 ** (job.attempt - 1));
      job.notBefore = Date.now() + delay;
      this.hooks.log('error', `${key}: ${error} (retrying in ${Math.round(delay / 1000)} s; other tables go on)`);
      const tp = this.progress.get(key);
      if (tp) tp.lastError = error;
      await setTableError(stateClient, options.subscription, { schema: pub.schema, table: pub.table }, error).catch(() => undefined);
    }
  }
}

/** A table stopped by columns added on the source: the ALTER to run (no fill: it is copied afresh). */
function driftStopped(table: SyncedTable, columns: AddedColumn[], missing: string[], failure: string | null): string {
  const key = tableKey(table.source.schema, table.source.table);
  const targetName = qualified(table.target.schema, table.target.table);
  const names = missing.map((c) => quoteIdent(c)).join(', ');
  const sql = addColumnSql(table.target, columns.map((c) => ({ ...c, fill: null }))).join(' ');
  const then = 'the table is then copied afresh by itself while the other tables stream';
  return failure === null
    ? `source table ${key} has new column(s) ${names} that target table ${targetName} lacks; run on the target: ${sql} (or run with --apply-ddl add-column); ${then}`
    : `source table ${key} has new column(s) ${names}, and adding them to target table ${targetName} failed (${failure}); fix that and run on the target: ${sql}; ${then}`;
}

function resyncReason(t: { schema: string; table: string; target: TableName; requested: boolean }): string {
  const why = t.requested
    ? 'pg-live-sync resync asked for it'
    : `its target table ${qualified(t.target.schema, t.target.table)} was dropped and created again on the target (another OID), so the rows copied into it are gone`;
  return `${tableKey(t.schema, t.table)}: ${why}; copying it afresh through its own slot while the other tables stream`;
}

/** Refuses with every error at once, as `check` lists them, so one round of fixes is enough. */
function refuseOnErrors(findings: Finding[], tableErrorsToo: boolean): void {
  const errors = findings.filter((f) => f.severity === 'error' && (tableErrorsToo || !f.table));
  if (errors.length > 0) throw new CheckError(errors.map((f) => f.message));
}

/** A table's progress before its copy starts. */
function initialProgress(t: { source: { schema: string; table: string }; target: { schema: string; table: string }; approximateRows: number; approximateSize: number }): TableProgress {
  return {
    schema: t.source.schema,
    table: t.source.table,
    targetSchema: t.target.schema,
    targetTable: t.target.table,
    state: 'i',
    lsn: null,
    removed: false,
    rowsCopied: 0,
    bytesCopied: 0,
    approximateRows: t.approximateRows,
    approximateSize: t.approximateSize,
    lastError: null,
    missingUpdates: 0,
    missingDeletes: 0,
  };
}

