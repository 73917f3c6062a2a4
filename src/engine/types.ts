import type { DdlKind } from './drift';
import type { Lsn } from './lsn';

/** What `run` is asked to do; the CLI and the extension both build one of these. */
export interface SyncOptions {
  source: string;
  target: string;
  publications: string[];
  subscription: string;
  tableMaps: TableMap[];
  tableSyncWorkers: number;
  copyData: boolean;
  /** Tables larger than this many bytes are copied in page ranges by all workers (copy.ts); 0 never splits; default COPY_CHUNK_BYTES. */
  copyChunkBytes?: number;
  /** Create the target tables (and the types, schemas, sequences they need) the target lacks (schema.ts); default false. */
  createTables?: boolean;
  /** Source DDL to apply to the target as it streams by (drift.ts); default none. */
  applyDdl?: DdlKind[];
  /** Where transactions the source streams while still open wait for their commit (spool.ts); a folder of the user's own (spool.ts spoolBase); default ~/.cache/pg-live-sync/spool. */
  spoolDir?: string;
  /** false: never ask the source to stream open transactions (protocol 1); default true on PostgreSQL 14+. */
  streaming?: boolean;
  /**
   * false: a streamed open transaction waits in the spool and is applied at its commit; default
   * true: it is also applied as it arrives, in its own target transaction committed at its commit
   * (openApply.ts).
   */
  applyWhileOpen?: boolean;
  /** Where the user fixes each URL, for errors (the extension names its connections); default the CLI flags. */
  configuredIn?: { source: string; target: string };
}

/** `--table-map`: a whole table, or (without `table`) every table of a schema. */
export interface TableMap {
  source: { schema: string; table?: string };
  target: { schema: string; table?: string };
  /** Only with `source.table`: source column -> target column, or null to leave it out of the target. */
  columns?: ColumnMap;
}

/** Source column name -> target column name; null excludes the column (never copied, streamed or verified). */
export type ColumnMap = Record<string, string | null>;

export interface TableName {
  schema: string;
  table: string;
}

/** Per-table states, as in PostgreSQL's pg_subscription_rel and Tiger's connector. */
export type TableState = 'i' | 'd' | 'f' | 's' | 'r';

export const TABLE_STATE_WORDS: Record<TableState, string> = {
  i: 'init',
  d: 'copying',
  f: 'catching up',
  s: 'synced',
  r: 'ready',
};

export interface SourceColumn {
  name: string;
  type: string;
  typeOid: number;
}

/** A source column as a synced table carries it: `target` is its name on the target (the map's, else its own). */
export interface SyncedColumn extends SourceColumn {
  target: string;
}

/** A published source table with everything later stages need to copy and apply it. */
export interface SyncedTable {
  relid: number;
  source: TableName;
  target: TableName;
  publications: string[];
  /** Published columns the target receives, excluded ones left out. */
  columns: SyncedColumn[];
  /** The table's `--table-map` column map ({} without one): its excluded columns are dropped from streamed rows. */
  columnMap: ColumnMap;
  /** Publication row filters, OR-ed; null when any publication takes every row. */
  rowFilter: string | null;
  /** Binary COPY only where every column is a built-in type with the same type on the target. */
  copyFormat: 'binary' | 'text';
  /** A partitioned table is read with SELECT (COPY TO refuses it) and includes its partitions. */
  partitioned: boolean;
  approximateRows: number;
  approximateSize: number;
}

export interface TableProgress {
  schema: string;
  table: string;
  targetSchema: string;
  targetTable: string;
  state: TableState;
  /** Copy position (`f`), or where the main stream takes over (`s`, `r`). */
  lsn: Lsn | null;
  /** Left the publication: no longer synced, target data kept. */
  removed: boolean;
  rowsCopied: number;
  bytesCopied: number;
  approximateRows: number;
  approximateSize: number;
  lastError: string | null;
  /** Source UPDATEs and DELETEs that found no row on the target (it was changed outside the sync). */
  missingUpdates: number;
  missingDeletes: number;
  /** A table copied in page ranges (copy_chunk): how many of its chunks have committed. */
  chunks?: { done: number; total: number };
}

export type SyncPhase = 'starting' | 'copying' | 'streaming' | 'stopping' | 'stopped';

export interface SyncStatus {
  subscription: string;
  phase: SyncPhase;
  tables: TableProgress[];
  appliedLsn: Lsn | null;
  /** Bytes of source WAL written past what the target has applied. */
  lagBytes: number;
  /** Seconds since the commit of the oldest source change not yet applied (0 when caught up). */
  lagSeconds: number;
  changesApplied: number;
  transactionsApplied: number;
}

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type Logger = (level: LogLevel, message: string) => void;
