/**
 * Stage 2: the initial copy. Up to N workers each import the slot's snapshot, so every table is
 * copied as of the slot's consistent point, and stream COPY TO from the source into COPY FROM on
 * the target. A table up to the chunk size is one target transaction (empty it, copy, state `f`):
 * a copy cut short leaves the target table as it was. A larger plain table is split into page
 * ranges (`ctid >= '(a,0)' AND ctid < '(b,0)'`, a TID Range Scan) that every worker takes from the
 * same queue as the whole tables: the table is emptied once with its chunk plan, then each chunk's
 * rows and its `done` mark commit in one transaction, and the last one moves the table to `f`.
 * A holder process (snapshotHolder.ts) keeps the snapshot importable so a run that dies can resume
 * the plan in the same snapshot without copying the finished chunks again.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type pg from 'pg';
import { from as copyFrom, to as copyTo } from 'pg-copy-streams';
import { connect, emptyTables, qualified, quoteIdent, type Endpoint } from './connection';
import { errorMessage, SyncError } from './errors';
import type { Lsn } from './lsn';
import { holdSnapshot, type HeldSnapshot } from './snapshotHolder';
import {
  deleteChunkPlan, deleteHeldSnapshot, finishChunk, loadChunkPlan, recordColumnMap, recordHeldSnapshot, recordTargetRelid, setTableState, writeChunkPlan, type ChunkRange,
} from './state';
import type { Logger, SyncedTable } from './types';
import { formatBytes, formatCount } from './units';

/**
 * Default --copy-chunk-size. Per chunk the cost is one target transaction and a plan row, nothing
 * next to 256 MiB of rows; a 2 GiB table still splits into 8, enough to keep 4 workers busy; and a
 * run killed mid-copy loses at most one chunk per worker.
 */
export const COPY_CHUNK_BYTES = 256 * 1024 * 1024;

export interface CopyProgress {
  table: SyncedTable;
  rows: number;
  bytes: number;
  done: boolean;
  chunks?: { done: number; total: number };
}

export interface CopyPlan {
  source: Endpoint;
  target: Endpoint;
  subscription: string;
  /** The slot whose consistent point the snapshot is: names the held snapshot in the state. */
  slot: string;
  snapshot: string;
  consistentLsn: Lsn;
  tables: SyncedTable[];
  workers: number;
  /** Plain tables larger than this are copied in chunks; 0: never. */
  chunkBytes: number;
  /**
   * A holder already keeping this snapshot (a resumed copy): chunk plans recorded for this
   * consistent point are resumed. Without one, a holder is started if any table is chunked.
   */
  holder: HeldSnapshot | null;
  log: Logger;
  onProgress(p: CopyProgress): void;
  /**
   * Takes each copied table's ANALYZE off the copy's path (it reads a 30,000-row sample: 0.4 s
   * for a 300 MB table, in which streaming could have started). Without it the worker runs it.
   */
  analyzer?: BackgroundAnalyzer;
  /** Called once every worker holds the snapshot: the exporting connection may then close. */
  onSnapshotImported(): Promise<void>;
  signal: AbortSignal;
}

export interface CopyFailure {
  table: SyncedTable;
  error: string;
}

/** A table copied in chunks, while its chunks are copied. */
interface ChunkedTable {
  t: SyncedTable;
  total: number;
  done: number;
  doneRows: number;
  doneBytes: number;
  inFlight: Set<RowCounter>;
  failed: boolean;
  started: number;
  lastReport: number;
}

type Work = { t: SyncedTable; size: number; chunk?: undefined } | { t: SyncedTable; size: number; chunk: ChunkRange; of: ChunkedTable };

/**
 * Copies every table it can; a table that fails (its target refuses the rows, say) is reported
 * back and the others go on. Throws only when stopped.
 */
export async function copyTables(plan: CopyPlan): Promise<CopyFailure[]> {
  const workers: { source: pg.Client; target: pg.Client }[] = [];
  const failures: CopyFailure[] = [];
  let holder = plan.holder;
  try {
    const addWorker = async () => {
      const source = await connect(plan.source, { applicationName: 'pg_live_sync_copy' });
      const target = await connect(plan.target, { applicationName: 'pg_live_sync_copy' });
      workers.push({ source, target });
      await source.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      await source.query(`SET TRANSACTION SNAPSHOT '${plan.snapshot.replace(/'/g, "''")}'`);
      await target.query('SET session_replication_role = replica');
    };
    await addWorker();
    const queue = await planWork(plan, workers[0].source, workers[0].target, failures);
    // The snapshot's exporter is still open: the other workers, and the holder, import it now,
    // the holder's process starting while the workers connect.
    const holding = !holder && queue.some((w) => w.chunk)
      ? holdSnapshot(plan.source, plan.snapshot).catch((err) => {
        plan.log('warn', `could not start the snapshot holder (${errorMessage(err)}); the chunked copy cannot resume after a crash, it would start again`);
        return null;
      })
      : Promise.resolve(holder);
    const added = await (async () => {
      while (workers.length < Math.min(plan.workers, queue.length)) await addWorker();
    })().then(() => null, (err: unknown) => ({ err }));
    holder = await holding;
    if (added) {
      // Not recorded in the state yet, so no next run could adopt it: it would only hold back vacuum.
      if (holder && holder !== plan.holder) holder.release();
      throw added.err;
    }
    if (holder && holder !== plan.holder) {
      await recordHeldSnapshot(workers[0].target, plan.subscription, {
        slotName: plan.slot, consistentLsn: plan.consistentLsn, snapshot: holder.snapshot, holderPid: holder.backendPid, holderOsPid: holder.osPid,
      });
    }
    await plan.onSnapshotImported();
    await Promise.all(
      workers.map(async (w) => {
        for (let work = queue.shift(); work; work = queue.shift()) {
          if (plan.signal.aborted) return;
          if (work.chunk && work.of.failed) continue;
          try {
            if (work.chunk) await copyOneChunk(plan, w.source, w.target, work.of, work.chunk);
            else await copyOneTable(plan, w.source, w.target, work.t);
          } catch (err) {
            if (plan.signal.aborted) throw err;
            if (work.chunk) work.of.failed = true;
            const error = errorMessage(err);
            failures.push({ table: work.t, error });
            plan.log('error', error);
            await setTableState(w.target, plan.subscription, work.t.source, 'i', { rowsCopied: 0, bytesCopied: 0, lastError: error }).catch(() => undefined);
            // The source transaction holding the snapshot may be broken too: later tables then fail
            // fast and are retried on their own, like this one.
          }
        }
      }),
    );
    if (plan.signal.aborted) throw new SyncError('stopped during the copy', 'stopped');
    if (holder) {
      // Done (a failed table is copied afresh later, in another snapshot): the holder has no use left.
      await deleteHeldSnapshot(workers[0].target, plan.subscription, plan.slot, holder.backendPid).catch(() => undefined);
      holder.release();
      holder = null;
    }
    return failures;
  } finally {
    // Stopped or failed: a holder stays for the next run (it ends by itself if none comes).
    await Promise.all(workers.flatMap((w) => [w.source.end().catch(() => undefined), w.target.end().catch(() => undefined)]));
  }
}

/**
 * The work queue: whole tables, and the chunks of tables larger than the chunk size, largest
 * first so the long jobs start early. A chunked table is emptied with its plan here, one
 * transaction each, unless a plan of this snapshot is resumed (then only its unfinished chunks).
 */
async function planWork(plan: CopyPlan, source: pg.Client, target: pg.Client, failures: CopyFailure[]): Promise<Work[]> {
  const work: Work[] = [];
  const block = plan.chunkBytes > 0 ? Number((await source.query(`SELECT current_setting('block_size')::int AS b`)).rows[0].b) : 8192;
  const chunkPages = Math.max(1, Math.floor(plan.chunkBytes / block));
  for (const t of plan.tables) {
    const targetName = qualified(t.target.schema, t.target.table);
    // A partitioned root is read with SELECT across its partitions: its ctids are not one table's.
    if (plan.chunkBytes <= 0 || t.partitioned) {
      work.push({ t, size: t.approximateSize });
      continue;
    }
    try {
      let chunks = plan.holder ? await loadChunkPlan(target, plan.subscription, t.source, targetName, plan.consistentLsn) : null;
      const resumed = chunks !== null;
      if (!chunks) {
        // The size now, not as of the snapshot: pages added since only make the open-ended last chunk longer.
        const bytes = Number((await source.query(`SELECT pg_relation_size($1::oid) AS bytes`, [t.relid])).rows[0].bytes);
        const pages = Math.ceil(bytes / block);
        if (pages <= chunkPages) {
          work.push({ t, size: bytes });
          continue;
        }
        const ranges = chunkRanges(pages, chunkPages);
        await target.query('BEGIN');
        try {
          await setTableState(target, plan.subscription, t.source, 'd', { rowsCopied: 0, bytesCopied: 0, lastError: null });
          await emptyTables(target, [targetName], false);
          await writeChunkPlan(target, plan.subscription, t.source, targetName, plan.consistentLsn, ranges);
          await target.query('COMMIT');
        } catch (err) {
          await target.query('ROLLBACK').catch(() => undefined);
          throw err;
        }
        chunks = ranges.map((r) => ({ ...r, rows: 0, bytes: 0, done: false }));
      }
      const doneChunks = chunks.filter((c) => c.done);
      const of: ChunkedTable = {
        t, total: chunks.length, done: doneChunks.length, inFlight: new Set(), failed: false, started: Date.now(), lastReport: 0,
        doneRows: doneChunks.reduce((a, c) => a + c.rows, 0), doneBytes: doneChunks.reduce((a, c) => a + c.bytes, 0),
      };
      if (resumed) plan.log('info', `resuming the chunked copy of ${qualified(t.source.schema, t.source.table)}: ${of.done} of ${of.total} chunks were done and are not copied again`);
      reportChunked(plan, of, false);
      for (const c of chunks) if (!c.done) work.push({ t, size: chunkPages * block, chunk: c, of });
    } catch (err) {
      if (plan.signal.aborted) throw err;
      const error = `copy of ${qualified(t.source.schema, t.source.table)} into ${targetName} failed: ${errorMessage(err)}; fix the target table and run again`;
      failures.push({ table: t, error });
      plan.log('error', error);
      await setTableState(target, plan.subscription, t.source, 'i', { rowsCopied: 0, bytesCopied: 0, lastError: error }).catch(() => undefined);
    }
  }
  // Stable: a table's chunks stay in page order.
  return work.sort((a, b) => b.size - a.size);
}

/**
 * A table of `pages` pages in page ranges of at most about `chunkPages`, all of the same size
 * rather than full ones and a short remainder: 321 MB at 256 MiB would otherwise be one worker
 * copying four fifths of the table alone. The last range is open-ended (pages added later).
 */
export function chunkRanges(pages: number, chunkPages: number): ChunkRange[] {
  const count = Math.max(1, Math.ceil(pages / chunkPages));
  const first = (i: number) => Math.floor((i * pages) / count);
  return Array.from({ length: count }, (_, i) => ({ chunk: i, firstPage: first(i), endPage: i === count - 1 ? null : first(i + 1) }));
}

function reportChunked(plan: CopyPlan, of: ChunkedTable, done: boolean): void {
  let rows = of.doneRows;
  let bytes = of.doneBytes;
  for (const c of of.inFlight) {
    rows += c.rows;
    bytes += c.bytes;
  }
  plan.onProgress({ table: of.t, rows, bytes, done, chunks: { done: of.done, total: of.total } });
}

/** Only the integers we computed go into the condition: COPY takes no parameters. */
function ctidRange(c: ChunkRange): string {
  if (!Number.isSafeInteger(c.firstPage) || (c.endPage !== null && !Number.isSafeInteger(c.endPage))) throw new Error(`bad chunk page range ${c.firstPage}..${c.endPage}`);
  return c.endPage === null ? `ctid >= '(${c.firstPage},0)'::tid` : `ctid >= '(${c.firstPage},0)'::tid AND ctid < '(${c.endPage},0)'::tid`;
}

async function copyOneChunk(plan: CopyPlan, source: pg.Client, target: pg.Client, of: ChunkedTable, chunk: ChunkRange): Promise<void> {
  const t = of.t;
  const sourceName = qualified(t.source.schema, t.source.table);
  const targetName = qualified(t.target.schema, t.target.table);
  const counter = rowCounter(t);
  let complete = false;
  await target.query('BEGIN');
  try {
    of.inFlight.add(counter);
    counter.onChunk = () => {
      const now = Date.now();
      if (now - of.lastReport >= 250) {
        of.lastReport = now;
        reportChunked(plan, of, false);
      }
    };
    await pipeRows(source, target, t, ctidRange(chunk), counter, plan.signal);
    complete = await finishChunk(target, plan.subscription, t.source, chunk.chunk, counter.rows, counter.bytes, plan.consistentLsn);
    if (complete) {
      await recordTargetRelid(target, plan.subscription, t.source);
      await recordColumnMap(target, plan.subscription, t);
    }
    await target.query('COMMIT');
  } catch (err) {
    await target.query('ROLLBACK').catch(() => undefined);
    if (plan.signal.aborted) throw err;
    throw new SyncError(`copy of ${sourceName} (chunk ${chunk.chunk + 1} of ${of.total}) into ${targetName} failed: ${errorMessage(err)}; fix the target table (types and constraints must accept the source rows) and run again`, 'copy');
  } finally {
    of.inFlight.delete(counter);
  }
  of.done++;
  of.doneRows += counter.rows;
  of.doneBytes += counter.bytes;
  reportChunked(plan, of, complete);
  if (!complete) return;
  const secs = Math.max(0.001, (Date.now() - of.started) / 1000);
  plan.log('info', `copied ${sourceName} -> ${targetName} in ${of.total} chunks: ${formatCount(of.doneRows)} rows, ${formatBytes(of.doneBytes)} in ${secs.toFixed(1)} s (${formatBytes(of.doneBytes / secs)}/s, ${t.copyFormat})`);
  await analyze(plan, target, targetName);
}

async function copyOneTable(plan: CopyPlan, source: pg.Client, target: pg.Client, t: SyncedTable): Promise<void> {
  const sourceName = qualified(t.source.schema, t.source.table);
  const targetName = qualified(t.target.schema, t.target.table);

  await setTableState(target, plan.subscription, t.source, 'd', { rowsCopied: 0, bytesCopied: 0, lastError: null });
  const started = Date.now();
  await target.query('BEGIN');
  try {
    await emptyTables(target, [targetName], false);
    await deleteChunkPlan(target, plan.subscription, t.source);
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
  await analyze(plan, target, targetName);
}

/**
 * A freshly filled table has no statistics until autovacuum gets to it, and the planner meanwhile
 * guesses badly; a sample of it costs little next to the copy. The copy stands if this fails.
 */
async function analyze(plan: CopyPlan, target: pg.Client, targetName: string): Promise<void> {
  if (plan.analyzer) return plan.analyzer.add(targetName);
  try {
    await target.query(`ANALYZE ${targetName}`);
  } catch (err) {
    plan.log('warn', analyzeFailed(targetName, err));
  }
}

const analyzeFailed = (targetName: string, err: unknown) => `ANALYZE ${targetName} after its copy failed: ${errorMessage(err)}; run it on the target yourself`;

/**
 * ANALYZEs copied tables one after the other on a target connection of its own, beside the copy
 * and the stream (it takes a lock that writes do not wait for). Statistics are a convenience for
 * the target's queries, not part of the data: a run that stops first leaves them to autovacuum.
 */
export class BackgroundAnalyzer {
  private chain: Promise<void> = Promise.resolve();
  private client: pg.Client | null = null;
  private closed = false;

  constructor(private readonly target: Endpoint, private readonly log: Logger) {}

  add(targetName: string): void {
    if (this.closed) return;
    this.chain = this.chain.then(async () => {
      if (this.closed) return;
      try {
        this.client ??= await connect(this.target, { applicationName: 'pg_live_sync_analyze' });
        if (this.closed) return;
        await this.client.query(`ANALYZE ${targetName}`);
      } catch (err) {
        if (!this.closed) this.log('warn', analyzeFailed(targetName, err));
      }
    });
  }

  /** Waits for the queued ANALYZEs unless `abandon`, then closes the connection. */
  async close(abandon: boolean): Promise<void> {
    if (abandon) {
      // A target that went away would keep an ANALYZE waiting: end it, the queue unwinds.
      this.closed = true;
      await this.client?.end().catch(() => undefined);
    }
    await this.chain;
    this.closed = true;
    await this.client?.end().catch(() => undefined);
    this.client = null;
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
  // A table with no columns still has rows: `COPY t ()` is a syntax error, `COPY t` copies them.
  const selectSql = conditions.length > 0 || t.partitioned
    ? `COPY (SELECT ${columns} FROM ${t.partitioned ? '' : 'ONLY '}${sourceName}${conditions.length > 0 ? ` WHERE ${conditions.map((c) => `(${c})`).join(' AND ')}` : ''}) TO STDOUT (${format})`
    : `COPY ${sourceName}${columnList(columns)} TO STDOUT (${format})`;
  const reader = source.query(copyTo(selectSql));
  const writer = target.query(copyFrom(`COPY ${targetName}${columnList(targetColumns)} FROM STDIN (${format})`));
  await pipeline(reader, counter, writer, signal ? { signal } : {});
  return counter;
}

/** A COPY statement's column list: none at all for a table without columns. */
export function columnList(joined: string): string {
  return joined === '' ? '' : ` (${joined})`;
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
