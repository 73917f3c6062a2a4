/**
 * The sync, top to bottom: check, slot, copy, stream, apply, checkpoint. Each stage is its own
 * module; this file only decides which stages run and carries their results between them.
 */
import type pg from 'pg';
import { Applier } from './apply';
import { abandonGroup, checkpoint, checkpointDue } from './checkpoint';
import { connect, describeEndpoint, type Endpoint } from './connection';
import { copyTables, formatBytes, type CopyProgress } from './copy';
import { errorMessage, SyncError } from './errors';
import { formatLsn, maxLsn, type Lsn } from './lsn';
import { checkSource, checkTarget } from './precheck';
import { createSlotWithSnapshot, dropSlotIfExists, slotInfo, slotNameFor, validateSubscriptionName } from './slot';
import {
  ensureStateSchema, loadSubscription, loadTableProgress, promoteCaughtUpTables, resetSubscription,
  setConsistentLsn, setSubscriptionError, setTableState, tryLockSubscription, writeCopyProgress,
} from './state';
import { ReplicationStream, type StreamEvent } from './stream';
import type { Logger, SyncedTable, SyncOptions, SyncPhase, SyncStatus, TableProgress } from './types';

/** With a group open and the stream quiet this long, commit rather than wait for more. */
const IDLE_COMMIT_MS = 20;
const STATUS_INTERVAL_MS = 1_000;

export interface SyncEngineHooks {
  log: Logger;
  onStatus?(status: SyncStatus): void;
}

export class SyncEngine {
  private readonly source: Endpoint;
  private readonly target: Endpoint;
  private readonly slot: string;
  private readonly abort = new AbortController();
  /** Wakes the stream loop while it waits for the source: on stop, or when a group sits idle. */
  private interrupt: ((why: 'stop' | 'idle') => void) | null = null;
  private phase: SyncPhase = 'starting';
  private progress = new Map<string, TableProgress>();
  private serverWalEnd: Lsn = 0n;
  private stream: ReplicationStream | null = null;
  private pendingSince: bigint | null = null;
  private changesApplied = 0;
  private transactionsApplied = 0;

  constructor(private readonly options: SyncOptions, private readonly hooks: SyncEngineHooks) {
    this.source = { url: options.source, role: 'source' };
    this.target = { url: options.target, role: 'target' };
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

  status(): SyncStatus {
    const acked = this.stream?.acknowledged ?? null;
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
    try {
      source = await connect(this.source);
      target = await connect(this.target);
      const published = await checkSource(source, this.source, options.publications);
      const tables = await checkTarget(target, this.target, published, options.tableMaps);
      await ensureStateSchema(target);
      if (!(await tryLockSubscription(target, options.subscription))) {
        throw new SyncError(`subscription "${options.subscription}" is already running against this target (another pg-live-sync run holds it); stop that run first`, 'running');
      }
      const startLsn = await this.prepare(source, target, tables);
      if (startLsn === null) return;
      await source.end();
      source = null;
      await this.follow(target, this.tables, startLsn);
    } catch (err) {
      if (target && !(err instanceof SyncError && (err.code === 'running' || err.code === 'usage'))) {
        await setSubscriptionError(target, options.subscription, errorMessage(err)).catch(() => undefined);
      }
      throw err;
    } finally {
      clearInterval(statusTimer);
      this.phase = 'stopped';
      hooks.onStatus?.(this.status());
      await Promise.all([source?.end().catch(() => undefined), target?.end().catch(() => undefined)]);
    }
  }

  /**
   * Resumes where the target's state says, or starts afresh: slot, then copy. Returns the LSN to
   * stream from, or null when stopped before streaming.
   */
  private async prepare(source: pg.Client, target: pg.Client, published: SyncedTable[]): Promise<Lsn | null> {
    const { options } = this;
    const log = this.hooks.log;
    const sub = await loadSubscription(target, options.subscription);
    const states = sub ? await loadTableProgress(target, options.subscription) : [];
    const copyComplete = states.length > 0 && states.every((t) => t.state === 'f' || t.state === 's' || t.state === 'r');
    const resumable = sub !== null && (sub.appliedLsn !== null || (sub.consistentLsn !== null && copyComplete));

    if (resumable) {
      const info = await slotInfo(source, this.slot);
      if (!info) {
        throw new SyncError(`replication slot "${this.slot}" no longer exists on the source, so changes since ${formatLsn(sub.appliedLsn ?? sub.consistentLsn ?? 0n)} are gone; run pg-live-sync drop --subscription ${options.subscription} and run again to copy afresh`, 'slot_missing');
      }
      if (info.walStatus === 'lost') {
        throw new SyncError(`replication slot "${this.slot}" has lost WAL it needed (wal_status lost); run pg-live-sync drop --subscription ${options.subscription} and run again to copy afresh, and raise max_slot_wal_keep_size`, 'slot_lost');
      }
      for (const t of states) this.progress.set(key(t.schema, t.table), t);
      const inState = new Set(states.map((t) => key(t.schema, t.table)));
      for (const t of published.filter((p) => !inState.has(key(p.source.schema, p.source.table)))) {
        log('warn', `${t.source.schema}.${t.source.table} joined the publication after this sync started and is not synced; start a new subscription to include it`);
      }
      this.tables = published.filter((p) => inState.has(key(p.source.schema, p.source.table)));
      const start = maxLsn(sub.appliedLsn ?? 0n, sub.consistentLsn ?? 0n);
      log('info', `resuming subscription "${options.subscription}" from ${formatLsn(start)}`);
      return start;
    }

    // Fresh start. Anything left by an earlier attempt that never streamed is discarded.
    if (await dropSlotIfExists(source, this.slot)) log('info', `dropped replication slot "${this.slot}" left by an unfinished earlier start`);
    const publications = options.publications;
    await resetSubscription(target, { subname: options.subscription, slotName: this.slot, publications, source: describeEndpoint(options.source) }, published);
    this.tables = published;
    for (const t of published) this.progress.set(key(t.source.schema, t.source.table), initialProgress(t));

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
      if (options.copyData) {
        this.phase = 'copying';
        await this.copy(target, published, created.snapshot, created.consistentLsn, closeExporter);
        if (this.abort.signal.aborted) throw new SyncError('stopped during the initial copy', 'stopped');
      } else {
        await closeExporter();
        for (const t of published) {
          await setTableState(target, options.subscription, t.source, 'f', { lsn: created.consistentLsn });
          this.progress.get(key(t.source.schema, t.source.table))!.state = 'f';
        }
      }
      return created.consistentLsn;
    } catch (err) {
      await closeExporter();
      // Nothing half-created stays on the source: the next run starts afresh anyway.
      await dropSlotIfExists(source, this.slot).catch(() => undefined);
      if (err instanceof SyncError && err.code === 'stopped') {
        log('info', 'stopped before the initial copy finished; the next run starts the copy again');
        return null;
      }
      throw err;
    }
  }

  private tables: SyncedTable[] = [];

  private async copy(target: pg.Client, tables: SyncedTable[], snapshot: string, consistentLsn: Lsn, closeExporter: () => Promise<void>): Promise<void> {
    const { options } = this;
    const inFlight = new Map<string, CopyProgress>();
    let writing = false;
    const timer = setInterval(() => {
      if (writing || inFlight.size === 0) return;
      writing = true;
      const rows = [...inFlight.values()].map((p) => ({ schema: p.table.source.schema, table: p.table.source.table, rowsCopied: p.rows, bytesCopied: p.bytes }));
      writeCopyProgress(target, options.subscription, rows)
        .catch((err) => this.hooks.log('warn', `could not record copy progress: ${errorMessage(err)}`))
        .finally(() => (writing = false));
    }, STATUS_INTERVAL_MS);
    try {
      await copyTables({
        source: this.source,
        target: this.target,
        subscription: options.subscription,
        snapshot,
        consistentLsn,
        tables,
        workers: options.tableSyncWorkers,
        log: this.hooks.log,
        signal: this.abort.signal,
        onSnapshotImported: closeExporter,
        onProgress: (p) => {
          const k = key(p.table.source.schema, p.table.source.table);
          const tp = this.progress.get(k)!;
          tp.rowsCopied = p.rows;
          tp.bytesCopied = p.bytes;
          tp.state = p.done ? 'f' : 'd';
          if (p.done) inFlight.delete(k);
          else inFlight.set(k, p);
        },
      });
    } catch (err) {
      if (this.abort.signal.aborted) throw new SyncError('stopped during the initial copy', 'stopped');
      throw err;
    } finally {
      clearInterval(timer);
      while (writing) await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Streams from `startLsn` until stopped, applying in commit order and checkpointing. */
  private async follow(target: pg.Client, tables: SyncedTable[], startLsn: Lsn): Promise<void> {
    const { options } = this;
    const log = this.hooks.log;
    const promoted = await promoteCaughtUpTables(target, options.subscription, startLsn);
    for (const t of this.progress.values()) if (t.state === 'f' || t.state === 's') t.state = 'r';
    if (promoted > 0) log('info', `${promoted} table(s) ready; streaming changes`);
    await target.query('SET session_replication_role = replica');

    const stream = await ReplicationStream.start(this.source, this.slot, options.publications, startLsn);
    this.stream = stream;
    await setSubscriptionError(target, options.subscription, null);
    this.phase = 'streaming';
    const applier = new Applier(target, tables, startLsn, log);
    const events = stream.events()[Symbol.asyncIterator]();
    let next: Promise<IteratorResult<StreamEvent>> | null = null;
    let lastEventAt = Date.now();
    const idleTimer = setInterval(() => {
      if (applier.group && !applier.inSourceTransaction && Date.now() - lastEventAt >= IDLE_COMMIT_MS) this.interrupt?.('idle');
    }, IDLE_COMMIT_MS);
    try {
      while (!this.abort.signal.aborted) {
        const pending = (next ??= events.next());
        const got = await new Promise<IteratorResult<StreamEvent> | 'stop' | 'idle'>((resolve, reject) => {
          this.interrupt = resolve;
          pending.then(resolve, reject);
        });
        this.interrupt = null;
        if (got === 'stop') break;
        if (got === 'idle') {
          await this.checkpoint(target, applier, stream);
          continue;
        }
        next = null;
        lastEventAt = Date.now();
        if (got.done) throw new SyncError('the source ended the replication stream; run again to resume', 'stream_ended');
        const ev = got.value;
        if (ev.walEnd > this.serverWalEnd) this.serverWalEnd = ev.walEnd;
        if (process.env.PG_LIVE_SYNC_DEBUG) log('debug', `event ${ev.kind} walEnd ${formatLsn(ev.walEnd)}`);
        if (ev.kind === 'keepalive') {
          // Everything before this keepalive has been handled; with nothing uncommitted, the
          // slot may move to the server's WAL end, so an idle sync never holds WAL back.
          const idleNow = !applier.group && !applier.inSourceTransaction;
          if (idleNow) stream.acknowledge(ev.walEnd, true);
          else if (ev.replyRequested) stream.acknowledge(stream.acknowledged, true);
          continue;
        }
        const change = ev.change;
        if (process.env.PG_LIVE_SYNC_DEBUG) log('debug', `change ${change.tag} ${JSON.stringify(change, (_k, v) => (typeof v === 'bigint' ? v.toString() : typeof v === 'symbol' ? 'UNCHANGED' : v)).slice(0, 200)}`);
        if (change.tag === 'begin' && this.pendingSince === null) this.pendingSince = change.commitTime;
        await applier.apply(change);
        if (change.tag === 'commit' && checkpointDue(applier.group)) await this.checkpoint(target, applier, stream);
      }
      if (applier.inSourceTransaction) await abandonGroup(target, applier);
      else await this.checkpoint(target, applier, stream);
    } catch (err) {
      await abandonGroup(target, applier).catch(() => undefined);
      if (err instanceof SyncError) throw err;
      if (this.abort.signal.aborted) return;
      throw new SyncError(`streaming stopped: ${errorMessage(err)}; nothing applied is lost: once the source and target are reachable, run again to resume`, 'stream_lost');
    } finally {
      clearInterval(idleTimer);
      await stream.close();
      log('info', `stopped at ${formatLsn(stream.acknowledged)} after ${this.transactionsApplied} transaction(s), ${this.changesApplied} change(s)`);
    }
  }

  private async checkpoint(target: pg.Client, applier: Applier, stream: ReplicationStream): Promise<void> {
    const done = await checkpoint(target, this.options.subscription, applier, stream);
    this.pendingSince = null;
    if (done) {
      this.transactionsApplied += done.transactions;
      this.changesApplied += done.changes;
    }
  }
}

function key(schema: string, table: string): string {
  return `${schema}.${table}`;
}

function initialProgress(t: SyncedTable): TableProgress {
  return {
    schema: t.source.schema,
    table: t.source.table,
    targetSchema: t.target.schema,
    targetTable: t.target.table,
    state: 'i',
    rowsCopied: 0,
    bytesCopied: 0,
    approximateRows: t.approximateRows,
    approximateSize: t.approximateSize,
    lastError: null,
  };
}


export { formatBytes };
