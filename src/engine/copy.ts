/**
 * Stage 2: the initial copy. Up to N workers each import the slot's snapshot, so every table is
 * copied as of the slot's consistent point, and stream COPY TO from the source into COPY FROM on
 * the target. Each table's copy, and its move to state `f`, is one target transaction: a copy cut
 * short leaves the target table as it was.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { connect, emptyTables, qualified, quoteIdent, type Endpoint } from './connection';
import { errorMessage, SyncError } from './errors';
import type { Lsn } from './lsn';
import { recordColumnMap, recordTargetRelid, setTableState } from './state';
import type { Logger, SyncedTable } from './types';
import { formatBytes, formatCount } from './units';

export interface CopyProgress {
  table: SyncedTable;
  rows: number;
  bytes: number;
  done: boolean;
}

export interface CopyPlan {
  source: Endpoint;
  target: Endpoint;
  subscription: string;
  snapshot: string;
  consistentLsn: Lsn;
  tables: SyncedTable[];
  workers: number;
  log: Logger;
  onProgress(p: CopyProgress): void;
  /** Called once every worker holds the snapshot: the exporting connection may then close. */
  onSnapshotImported(): Promise<void>;
  signal: AbortSignal;
}

export interface CopyFailure {
  table: SyncedTable;
  error: string;
}

/**
 * Copies every table it can; a table that fails (its target refuses the rows, say) is reported
 * back and the others go on. Throws only when stopped.
 */
export async function copyTables(plan: CopyPlan): Promise<CopyFailure[]> {
  const queue = [...plan.tables].sort((a, b) => b.approximateSize - a.approximateSize);
  const n = Math.max(1, Math.min(plan.workers, queue.length));
  const workers: { source: pg.Client; target: pg.Client }[] = [];
  const failures: CopyFailure[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const source = await connect(plan.source, { applicationName: 'pg_live_sync_copy' });
      const target = await connect(plan.target, { applicationName: 'pg_live_sync_copy' });
      workers.push({ source, target });
      await source.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      await source.query(`SET TRANSACTION SNAPSHOT '${plan.snapshot.replace(/'/g, "''")}'`);
      await target.query('SET session_replication_role = replica');
    }
    await plan.onSnapshotImported();
    await Promise.all(
      workers.map(async (w) => {
        for (let t = queue.shift(); t; t = queue.shift()) {
          if (plan.signal.aborted) return;
          try {
            await copyOneTable(plan, w.source, w.target, t);
          } catch (err) {
            if (plan.signal.aborted) throw err;
            const error = errorMessage(err);
            failures.push({ table: t, error });
            plan.log('error', error);
            await setTableState(w.target, plan.subscription, t.source, 'i', { rowsCopied: 0, bytesCopied: 0, lastError: error }).catch(() => undefined);
            // The source transaction holding the snapshot may be broken too: later tables then fail
            // fast and are retried on their own, like this one.
          }
        }
      }),
    );
    if (plan.signal.aborted) throw new SyncError('stopped during the copy', 'stopped');
    return failures;
  } finally {
    await Promise.all(workers.flatMap((w) => [w.source.end().catch(() => undefined), w.target.end().catch(() => undefined)]));
  }
}

async function copyOneTable(plan: CopyPlan, source: pg.Client, target: pg.Client, t: SyncedTable): Promise<void> {
  const sourceName = qualified(t.source.schema, t.source.table);
  const targetName = qualified(t.target.schema, t.target.table);

  await setTableState(target, plan.subscription, t.source, 'd', { rowsCopied: 0, bytesCopied: 0, lastError: null });
  const started = Date.now();
  await target.query('BEGIN');
  try {
    await emptyTables(target, [targetName], false);
    const counter = rowCounter(t);
    let lastReport = 0;
    const report = (done: boolean) => plan.onProgress({ table: t, rows: counter.rows, bytes: counter.bytes, done });
    counter.onChunk = () => {
      const now = Date.now();
      if (now - lastReport >= 250) {
        lastReport = now;
        report(false);
      }
    };
    await pipeRows(source, target, t, null, counter, plan.signal);
    await setTableState(target, plan.subscription, t.source, 'f', { lsn: plan.consistentLsn, rowsCopied: counter.rows, bytesCopied: counter.bytes });
    await recordTargetRelid(target, plan.subscription, t.source);
    await recordColumnMap(target, plan.subscription, t);
    await target.query('COMMIT');
    report(true);
    const secs = Math.max(0.001, (Date.now() - started) / 1000);
    plan.log('info', `copied ${sourceName} -> ${targetName}: ${formatCount(counter.rows)} rows, ${formatBytes(counter.bytes)} in ${secs.toFixed(1)} s (${formatBytes(counter.bytes / secs)}/s, ${t.copyFormat})`);
  } catch (err) {
    await target.query('ROLLBACK').catch(() => undefined);
    if (plan.signal.aborted) throw err;
    throw new SyncError(`copy of ${sourceName} into ${targetName} failed: ${errorMessage(err)}; fix the target table (types and constraints must accept the source rows) and run again`, 'copy');
  }
  // A freshly filled table has no statistics until autovacuum gets to it, and the planner meanwhile
  // guesses badly; a sample of it costs little next to the copy. The copy stands if this fails.
  try {
    await target.query(`ANALYZE ${targetName}`);
  } catch (err) {
    plan.log('warn', `ANALYZE ${targetName} after its copy failed: ${errorMessage(err)}; run it on the target yourself`);
  }
}

export function rowCounter(t: SyncedTable): RowCounter {
  return t.copyFormat === 'binary' ? new BinaryRowCounter() : new TextRowCounter();
}

/**
 * Streams a table's published rows (only those matching `where`, a condition on the source
 * table, when given) from source COPY TO into target COPY FROM, inside the caller's target
 * transaction; `counter` sees every byte. `verify --fix` re-copies chunks through this too.
 */
export async function pipeRows(source: pg.Client, target: pg.Client, t: SyncedTable, where: string | null, counter: RowCounter = rowCounter(t), signal?: AbortSignal): Promise<RowCounter> {
  const sourceName = qualified(t.source.schema, t.source.table);
  const targetName = qualified(t.target.schema, t.target.table);
  // Read by source name, written by the map's target name, in the same order.
  const columns = t.columns.map((c) => quoteIdent(c.name)).join(', ');
  const targetColumns = t.columns.map((c) => quoteIdent(c.target)).join(', ');
  const format = t.copyFormat === 'binary' ? 'FORMAT binary' : 'FORMAT text';
  const conditions = [t.rowFilter, where].filter((c): c is string => c !== null);
  // COPY TO refuses a partitioned table; a SELECT on it reads every partition.
  const selectSql = conditions.length > 0 || t.partitioned
    ? `COPY (SELECT ${columns} FROM ${t.partitioned ? '' : 'ONLY '}${sourceName}${conditions.length > 0 ? ` WHERE ${conditions.map((c) => `(${c})`).join(' AND ')}` : ''}) TO STDOUT (${format})`
    : `COPY ${sourceName} (${columns}) TO STDOUT (${format})`;
  const reader = source.query(copyTo(selectSql));
  const writer = target.query(copyFrom(`COPY ${targetName} (${targetColumns}) FROM STDIN (${format})`));
  await pipeline(reader, counter, writer, signal ? { signal } : {});
  return counter;
}

/** Passes COPY data through unchanged while counting rows and bytes. */
export abstract class RowCounter extends Transform {
  rows = 0;
  bytes = 0;
  onChunk: () => void = () => undefined;
  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    this.count(chunk);
    this.onChunk();
    cb(null, chunk);
  }
  protected abstract count(chunk: Buffer): void;
}

/** Text COPY ends every row with a raw newline; newlines inside values are escaped as `\n`. */
export class TextRowCounter extends RowCounter {
  protected count(chunk: Buffer): void {
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, i + 1)) this.rows++;
  }
}

/**
 * Binary COPY: an 11-byte signature, flags, a header extension, then per row an int16 field count
 * followed by (int32 length, bytes) per field; a field count of -1 ends the data. Rows are counted
 * by walking those lengths, a few bytes at a time, across chunk boundaries.
 */
export class BinaryRowCounter extends RowCounter {
  private skip = 19; // signature (11) + flags (4) + extension length (4); extension assumed empty
  private need: 'count' | 'length' = 'count';
  private fieldsLeft = 0;
  private partial: number[] = [];

  protected count(chunk: Buffer): void {
    let p = 0;
    while (p < chunk.length) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, chunk.length - p);
        this.skip -= n;
        p += n;
        continue;
      }
      const width = this.need === 'count' ? 2 : 4;
      let value: number;
      if (this.partial.length === 0 && p + width <= chunk.length) {
        value = width === 2 ? chunk.readInt16BE(p) : chunk.readInt32BE(p);
        p += width;
      } else {
        while (this.partial.length < width && p < chunk.length) this.partial.push(chunk[p++]);
        if (this.partial.length < width) return;
        const bytes = Buffer.from(this.partial);
        this.partial = [];
        value = width === 2 ? bytes.readInt16BE(0) : bytes.readInt32BE(0);
      }
      if (this.need === 'count') {
        const fields = value;
        if (fields === -1) {
          this.skip = Number.MAX_SAFE_INTEGER;
          continue;
        }
        this.rows++;
        this.fieldsLeft = fields;
        this.need = fields > 0 ? 'length' : 'count';
      } else {
        const len = value;
        this.skip = len > 0 ? len : 0;
        this.fieldsLeft--;
        this.need = this.fieldsLeft > 0 ? 'length' : 'count';
      }
    }
  }
}
