/**
 * Stage 4: apply changes to the target in source commit order. Source transactions are grouped
 * into target transactions (the checkpoint stage closes a group); a group never splits a source
 * transaction, so each source transaction is atomic on the target.
 *
 * Runs of the same operation on the same table are applied together, one statement for up to
 * BATCH_ROWS changes: inserts through COPY, updates and deletes as one set-based statement over
 * `unnest()` of text arrays, each value cast to its target column's type by the type's own input
 * function, as a parameter would be.
 *
 * Within a group, each target table keeps its own queue of batches, in its own order, so changes
 * to other tables in between do not cut a table's runs short (a pgbench transaction touches four
 * tables: applied in strict order that is four statements per transaction). This reorders changes
 * only between different tables inside one target transaction, which commits whole with its
 * applied_lsn: no other session can see the difference, and on the apply connection
 * (session_replication_role = replica) neither foreign keys nor ordinary triggers run, which are
 * the only ways one table's change can depend on another's. A table with triggers or rules that
 * do run there (ENABLE ALWAYS / REPLICA) is applied in strict order with every other table.
 * Within a table the order is kept, with two exceptions that give the same rows: a second update of
 * a row in the same batch with the same columns replaces the first, and a delete joins an earlier
 * delete batch when no batch after that touched its key (removing a row earlier cannot make an
 * insert or update of other rows fail).
 *
 * Statements are pipelined: a batch is handed to the connection and the next one is prepared
 * while the target executes it; results are awaited before COMMIT (or when one is needed), the
 * first failure is the one reported (what follows it fails only because the transaction is
 * aborted), and the group is rolled back as before. At most BATCH_BYTES of values are queued and
 * as much again in flight, whatever the size of a transaction.
 */
import { once } from 'node:events';
import type pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { firesOnReplica, targetColumns } from './catalog';
import { emptyTables, qualified, quoteIdent, tableKey } from './connection';
import { errorMessage, isTransient, SyncError } from './errors';
import { formatLsn, type Lsn } from './lsn';
import { RawTuple, tupleValues, UNCHANGED_TOAST, type Change, type Relation, type Tuple } from './stream';
import { columnList } from './copy';
import { mappedColumn } from './tablemap';
import type { Logger, SyncedTable } from './types';
import { counted } from './units';

const BATCH_ROWS = 5000;
/** Queued batches are sent early when wide: memory stays bounded whatever the values' size. */
const BATCH_BYTES = 8 * 1024 * 1024;
/** Statements handed to the connection and not yet answered: enough to keep the target busy. */
const MAX_IN_FLIGHT = 64;
const MAX_IN_FLIGHT_BYTES = BATCH_BYTES;
/**
 * A value this large is never copied whole into a statement: an insert's COPY data and an
 * update's values are written to the target in COPY_PIECE pieces (a text[] parameter would be
 * escaped, joined and serialised by pg, four copies of its size).
 */
const LARGE_VALUE = 1024 * 1024;
const COPY_PIECE = 1024 * 1024;

interface RelationPlan {
  relation: Relation;
  key: string;
  targetName: string;
  /** Quoted target column names, in the relation's column order. */
  columns: string[];
  /** Target column types (format_type), the casts for set-based statements. */
  types: string[];
  keyIndexes: number[];
  full: boolean;
  /** Per column: GENERATED ALWAYS AS IDENTITY on the target, which an UPDATE may not set. */
  alwaysIdentity: boolean[];
  /** A non-key column is such an identity: its updates cannot be batched (see updateOne). */
  identityOutsideKey: boolean;
  /** Quoted target columns the source does not send (generated ones excluded): kept when a row is replaced. */
  targetOnly: string[];
  /** Triggers or rules run on the apply connection: keep strict order with the other tables. */
  ordered: boolean;
  /**
   * Positions of the relation's columns the target receives, when the table's column map leaves
   * some out (null when it takes them all): every tuple is cut to these before anything else.
   */
  keep: number[] | null;
}

/** Consecutive changes that one statement can apply: same table, same operation, same shape. */
interface Batch {
  op: 'insert' | 'update' | 'delete';
  plan: RelationPlan;
  /** For updates: which columns are set (unchanged TOAST values are not). */
  shape: string;
  /** Inserts keep pgoutput's bytes (RawTuple) until COPY; updates and deletes are values. */
  rows: (Tuple | RawTuple)[];
  bytes: number;
  /**
   * Key of each row -> its index in rows; kept for updates and deletes, and for inserts once a
   * delete needs to know whether it may go before them (null until then).
   */
  keys: Map<string, number> | null;
}

/** The uncommitted work on the target: what a checkpoint will make durable. */
export interface OpenGroup {
  startedAt: number;
  transactions: number;
  changes: number;
  /** End LSN and commit time of the last source transaction applied in this group. */
  lastCommitLsn: Lsn | null;
  lastCommitTime: bigint | null;
}

/**
 * Which of a table's changes this applier writes: those of transactions whose commit record is at
 * or after `fromLsn` (earlier ones are already in the table's copy). Tables absent are skipped.
 */
export interface TableMode {
  table: SyncedTable;
  fromLsn: Lsn;
}

/**
 * A source table now has columns its target table lacks: added on the source, or renamed or
 * dropped on the target, which `previous` (the relation this run applied before, null when none)
 * tells apart (drift.ts). The engine either adds them on the target ('added'; the applier reads
 * the target's columns again) or takes the table out of the stream to sync on its own once it can
 * ('stopped').
 */
export type DriftHandler = (table: SyncedTable, missingColumns: string[], previous: Relation | null) => Promise<'added' | 'stopped'>;

/** A table's changes that found no row on the target, in one group. */
export interface MissingRowCount {
  schema: string;
  table: string;
  updates: number;
  deletes: number;
}

/**
 * The group's counts as the parameter of its position statement: pg reads it (toPostgres) when it
 * sends that statement, which is after every statement before it has answered and its count was
 * taken (see Applier.counted), and before any statement of the next group can have answered.
 * `taken` keeps what was written, for the run's own progress once the group commits.
 */
export class MissingRowCounts {
  taken: MissingRowCount[] = [];
  constructor(private readonly counts: Map<string, MissingRowCount>) {}

  toPostgres(): string | null {
    this.taken = [...this.counts.values()];
    this.counts.clear();
    return this.taken.length > 0 ? JSON.stringify(this.taken) : null;
  }
}

export class Applier {
  private readonly relations = new Map<number, Relation>();
  /** Per relation, the one described before it (a Relation message replaces it), for drift. */
  private readonly previousRelations = new Map<number, Relation>();
  private readonly plans = new Map<number, RelationPlan | null>();
  private readonly tables = new Map<string, TableMode>();
  /** Per target table, its batches not yet sent, in order. */
  private readonly queues = new Map<string, Batch[]>();
  private queuedRows = 0;
  private queuedBytes = 0;
  /** A table with `ordered` has queued batches: every other table's change sends them first. */
  private orderedQueued = false;
  private readonly inFlight: { done: Promise<void>; bytes: number }[] = [];
  private inFlightBytes = 0;
  /** Per source table, this group's changes that found no row, until its position statement takes them. */
  private readonly missing = new Map<string, MissingRowCount>();
  /** The first statement of the group that failed; the target transaction is aborted. */
  private failure: unknown = null;
  private skipping = false;
  private inSource = false;
  private finalLsn: Lsn = 0n;
  group: OpenGroup | null = null;
  /** Moves on every change to the table set: an open transaction's twin started before is stale. */
  private tablesVersion = 0;
  /**
   * A twin applying a transaction still open on the source (openApply.ts) knows only that its
   * commit will come after this: a change to a table whose part starts later cannot be decided.
   */
  private commitAfter: Lsn | null = null;

  constructor(
    private readonly target: pg.Client,
    /** Transactions whose commit ends at or before this are already on the target. */
    private appliedLsn: Lsn,
    private readonly log: Logger,
    private readonly onDrift: DriftHandler | null = null,
  ) {}

  /** Starts (or moves) applying a table; changes to the table set take effect at the next change. */
  setTable(table: SyncedTable, fromLsn: Lsn): void {
    this.tables.set(tableKey(table.source.schema, table.source.table), { table, fromLsn });
    this.plans.clear();
    this.tablesVersion++;
  }

  removeTable(schema: string, table: string): void {
    this.tables.delete(tableKey(schema, table));
    this.plans.clear();
    this.tablesVersion++;
  }

  get tableSetVersion(): number {
    return this.tablesVersion;
  }

  /** Transactions whose commit ends at or before this are on the target. */
  get applied(): Lsn {
    return this.appliedLsn;
  }

  /**
   * An applier on another connection with this one's tables and relations, for one transaction
   * the source has not committed yet, whose commit comes after `commitAfter`. It has no drift
   * handler: a column the target lacks fails it, and the transaction goes the ordinary way.
   */
  twin(target: pg.Client, commitAfter: Lsn): Applier {
    const twin = new Applier(target, 0n, this.log, null);
    for (const [k, v] of this.tables) twin.tables.set(k, v);
    for (const [k, v] of this.relations) twin.relations.set(k, v);
    twin.commitAfter = commitAfter;
    return twin;
  }

  /** Sends what is queued, then `sql`, without waiting (a SAVEPOINT: nothing queued may cross it). */
  async statement(sql: string): Promise<void> {
    await this.sendQueues();
    this.orderedQueued = false;
    if (this.failure) throw this.failure;
    this.sendRaw(sql);
  }

  /** Hands what is queued to the target, so it works while the stream waits for more. */
  async sendQueued(): Promise<void> {
    await this.sendQueues();
    this.orderedQueued = false;
    if (this.failure) throw this.failure;
  }

  applies(schema: string, table: string): boolean {
    return this.tables.has(tableKey(schema, table));
  }

  /** True between a source BEGIN and its COMMIT: the group cannot be closed here. */
  get inSourceTransaction(): boolean {
    return this.inSource;
  }

  /**
   * Applies one change; returns a promise only when there is something to wait for (a statement
   * to send, a plan to read): most changes are only queued, and an async call per change, with its
   * promise and microtask turns, cost more than queuing it.
   */
  apply(change: Change): Promise<void> | void {
    switch (change.tag) {
      case 'begin':
        this.inSource = true;
        // Replayed after a crash: the target already committed it together with its LSN.
        this.skipping = change.finalLsn < this.appliedLsn;
        this.finalLsn = change.finalLsn;
        if (!this.skipping && !this.group) {
          // Not awaited: it queues behind a group whose COMMIT may still be running (commitPipelined).
          this.sendRaw('BEGIN');
          this.group = { startedAt: Date.now(), transactions: 0, changes: 0, lastCommitLsn: null, lastCommitTime: null };
        }
        return;
      case 'commit':
        this.inSource = false;
        if (this.skipping) {
          this.skipping = false;
          return;
        }
        if (this.group) {
          this.group.transactions++;
          this.group.lastCommitLsn = change.endLsn;
          this.group.lastCommitTime = change.commitTime;
        }
        return;
      case 'relation':
        return this.describe(change.relation);
      case 'ignored':
        return;
    }
    if (this.skipping) return;
    if (!this.group) throw new Error(`pgoutput sent ${change.tag} outside a transaction`);
    this.group.changes++;
    if (change.tag === 'truncate') return this.truncate(change.relationOids, change.restartIdentity);
    const plan = this.plans.get(change.relationOid);
    if (plan === undefined) return this.planFor(change.relationOid).then((p) => this.applyRow(change, p));
    return this.applyRow(change, plan && this.current(plan));
  }

  private async describe(relation: Relation): Promise<void> {
    await this.flush();
    const before = this.relations.get(relation.relationOid);
    if (before) this.previousRelations.set(relation.relationOid, before);
    this.relations.set(relation.relationOid, relation);
    this.plans.delete(relation.relationOid);
  }

  private async truncate(relationOids: number[], restartIdentity: boolean): Promise<void> {
    await this.flush();
    const names: string[] = [];
    for (const oid of relationOids) {
      const plan = await this.planFor(oid);
      if (plan) names.push(plan.targetName);
    }
    if (names.length > 0) await emptyTables(this.target, names, restartIdentity);
  }

  private applyRow(change: Extract<Change, { tag: 'insert' | 'update' | 'delete' }>, plan: RelationPlan | null): Promise<void> | void {
    if (!plan) return;
    switch (change.tag) {
      case 'insert':
        return this.add('insert', plan, '', cutInserted(plan, change.new), null);
      case 'update': {
        const row = cut(plan, change.new);
        const shape = row.map((v) => (v === UNCHANGED_TOAST ? '0' : '1')).join('');
        // A key change (old key sent) or FULL identity needs the old values: one row at a time.
        if (plan.full || change.key || plan.keyIndexes.length === 0 || plan.identityOutsideKey) {
          return this.sendBefore(plan).then(() => this.updateOne(plan, cut(plan, change.key ?? change.old ?? change.new), row));
        }
        if (hasLargeValue(row)) return this.sendBefore(plan).then(() => this.updateWide(plan, row));
        return this.add('update', plan, shape, row, this.keyOf(plan, row));
      }
      case 'delete': {
        const identity = change.key ? cut(plan, change.key) : change.old ? cut(plan, change.old) : null;
        if (!identity) throw new Error(`pgoutput sent a DELETE on ${plan.targetName} without an old key`);
        if (plan.full || plan.keyIndexes.length === 0) return this.sendBefore(plan).then(() => this.deleteOne(plan, identity));
        return this.add('delete', plan, '', identity, this.keyOf(plan, identity));
      }
    }
  }

  /** Queues a change; a promise only when batches must be sent first or now. */
  private add(op: Batch['op'], plan: RelationPlan, shape: string, row: Tuple | RawTuple, key: string | null): Promise<void> | void {
    if (plan.ordered || this.orderedQueued) return this.addInOrder(op, plan, shape, row, key);
    if (this.enqueue(op, plan, shape, row, key)) return this.sendQueues();
  }

  private async addInOrder(op: Batch['op'], plan: RelationPlan, shape: string, row: Tuple | RawTuple, key: string | null): Promise<void> {
    await this.sendQueues(plan.targetName);
    this.orderedQueued = plan.ordered;
    if (this.enqueue(op, plan, shape, row, key)) await this.sendQueues();
  }

  /** Adds the change to its table's queue; true when the queues are full and must be sent. */
  private enqueue(op: Batch['op'], plan: RelationPlan, shape: string, row: Tuple | RawTuple, key: string | null): boolean {
    let queue = this.queues.get(plan.targetName);
    if (!queue) this.queues.set(plan.targetName, (queue = []));
    const last = queue.length > 0 ? queue[queue.length - 1] : null;
    let b: Batch | null = last && last.op === op && last.plan === plan && last.shape === shape ? last : null;
    let bytes = 0;
    if (row instanceof RawTuple) bytes = row.bytes.length;
    else for (const v of row) if (typeof v === 'string') bytes += v.length;
    if (op === 'update' && b) {
      const at = b.keys!.get(key!);
      if (at !== undefined) {
        if (!plan.ordered) {
          // Same row, same columns set: the later values are what applying both would leave.
          let replaced = 0;
          for (const v of b.rows[at] as Tuple) if (typeof v === 'string') replaced += v.length;
          b.rows[at] = row;
          b.bytes += bytes - replaced;
          this.queuedBytes += bytes - replaced;
          return false;
        }
        b = null;
      }
    } else if (op === 'delete' && !plan.ordered) {
      b = this.deleteBatchFor(queue, plan, key!);
    }
    if (!b) queue.push((b = { op, plan, shape, rows: [], bytes: 0, keys: op === 'insert' ? null : new Map() }));
    if (b.keys) b.keys.set(key ?? this.rowKey(plan, row), b.rows.length);
    b.rows.push(row);
    b.bytes += bytes;
    this.queuedRows++;
    this.queuedBytes += bytes;
    return this.queuedRows >= BATCH_ROWS || this.queuedBytes >= BATCH_BYTES;
  }

  /**
   * The batch a delete of `key` joins: the nearest earlier delete batch of the table with no batch
   * after it touching the key, else a new one at the end.
   */
  private deleteBatchFor(queue: Batch[], plan: RelationPlan, key: string): Batch | null {
    for (let i = queue.length - 1; i >= 0; i--) {
      const b = queue[i];
      if (b.plan !== plan) return null;
      if (b.op === 'delete') return b.keys!.has(key) ? null : b;
      if (!b.keys) b.keys = new Map(b.rows.map((r, n) => [this.rowKey(plan, r), n]));
      if (b.keys.has(key)) return null;
    }
    return null;
  }

  /** What must reach the target before a statement of its own on `plan`'s table. */
  private async sendBefore(plan: RelationPlan): Promise<void> {
    if (plan.ordered || this.orderedQueued) {
      await this.sendQueues();
      this.orderedQueued = false;
    } else await this.sendTable(plan);
  }

  /** Hands every queued batch (but those of `except`) to the connection, each table in its order. */
  private async sendQueues(except?: string): Promise<void> {
    for (const [table, queue] of this.queues) {
      if (table === except) continue;
      this.queues.delete(table);
      await this.sendQueue(queue);
    }
  }

  private async sendTable(plan: RelationPlan): Promise<void> {
    const queue = this.queues.get(plan.targetName);
    if (!queue) return;
    this.queues.delete(plan.targetName);
    await this.sendQueue(queue);
  }

  private async sendQueue(queue: Batch[]): Promise<void> {
    // Taken off the queue as sent, so a sent batch's rows are not held while later ones wait.
    for (let b = queue.shift(); b; b = queue.shift()) {
      this.queuedRows -= b.rows.length;
      this.queuedBytes -= b.bytes;
      await this.send(b);
    }
  }

  /** Applies everything queued and waits for the target's answers; the checkpoint calls it before COMMIT. */
  async flush(): Promise<void> {
    await this.sendQueues();
    this.orderedQueued = false;
    await this.settle();
  }

  /** Waits for every statement in flight; throws the group's first failure. */
  private async settle(): Promise<void> {
    while (this.inFlight.length > 0) await this.inFlight.shift()!.done;
    this.inFlightBytes = 0;
    if (this.failure) throw this.failure;
  }

  /**
   * Hands a statement to the connection without waiting for it (pg runs its queue in order);
   * `then` sees its result. Waits only while too much is in flight.
   */
  private async pipeline(plan: RelationPlan, op: string, bytes: number, run: () => Promise<pg.QueryResult>, then: (r: pg.QueryResult) => void): Promise<void> {
    if (this.failure) throw this.failure;
    const done = this.exec(plan, op, run).then(then, (err: unknown) => {
      this.failure ??= err;
    });
    this.inFlight.push({ done, bytes });
    this.inFlightBytes += bytes;
    while (this.inFlight.length > MAX_IN_FLIGHT || (this.inFlightBytes > MAX_IN_FLIGHT_BYTES && this.inFlight.length > 1)) {
      const oldest = this.inFlight.shift()!;
      await oldest.done;
      this.inFlightBytes -= oldest.bytes;
      if (this.failure) throw this.failure;
    }
  }

  private async send(b: Batch): Promise<void> {
    const { plan } = b;
    if (b.op === 'insert') return this.copyRows(plan, b.rows, b.bytes);
    // Column i of the batch travels as one text[] parameter and is cast back per value.
    const used = b.op === 'update' ? [...b.shape].flatMap((s, i) => (s === '1' || plan.keyIndexes.includes(i) ? [i] : [])) : plan.keyIndexes;
    const rows = b.rows as Tuple[];
    const params = used.map((i) => rows.map((r) => r[i] as string | null));
    const source = `unnest(${used.map((_, p) => `$${p + 1}::text[]`).join(', ')}) AS u(${used.map((i) => `c${i}`).join(', ')})`;
    const val = (i: number) => `u.c${i}::${plan.types[i]}`;
    const keyMatch = plan.keyIndexes.map((i) => `t.${plan.columns[i]} = ${val(i)}`).join(' AND ');
    let sql: string;
    if (b.op === 'update') {
      // Key columns are equal by construction (a key change goes through updateOne), and setting an
      // identity key is refused by the target.
      const sets = [...b.shape].flatMap((s, i) => (s === '1' && !plan.keyIndexes.includes(i) ? [`${plan.columns[i]} = ${val(i)}`] : []));
      if (sets.length === 0) return;
      sql = `UPDATE ${plan.targetName} AS t SET ${sets.join(', ')} FROM ${source} WHERE ${keyMatch}`;
    } else {
      sql = `DELETE FROM ${plan.targetName} AS t USING ${source} WHERE ${keyMatch}`;
    }
    // The answer's handler keeps only counts: the rows are free once their statement is built.
    const { op, bytes } = b;
    const n = b.rows.length;
    await this.pipeline(plan, op, bytes, () => this.counted(sql, params, (r) => {
      if ((r.rowCount ?? 0) < n) this.missingRows(op, plan, n - (r.rowCount ?? 0));
    }), () => undefined);
  }

  /**
   * Inserts go through COPY: pgoutput's values are already each type's text form, which is what
   * COPY's text format reads, once backslashes, tabs, newlines and carriage returns are escaped.
   */
  private async copyRows(plan: RelationPlan, rows: (Tuple | RawTuple)[], bytes: number): Promise<void> {
    const wide = rows.some((r) => r instanceof RawTuple && r.bytes.length >= LARGE_VALUE);
    const data = wide ? copyPieces(rows) : copyData(rows, bytes);
    const sql = `COPY ${plan.targetName}${columnList(plan.columns.join(', '))} FROM STDIN`;
    await this.pipeline(plan, 'insert', bytes, () => this.copyIn(sql, data, rows.length), () => undefined);
  }

  /** Runs COPY FROM STDIN with `data`; pieces are each written once the target has taken the one before. */
  private copyIn(sql: string, data: Buffer | Iterable<Buffer>, rowCount: number): Promise<pg.QueryResult> {
    return new Promise<pg.QueryResult>((resolve, reject) => {
      const stream = this.target.query(copyFrom(sql));
      stream.on('error', reject);
      stream.on('finish', () => resolve({ rowCount } as pg.QueryResult));
      if (Buffer.isBuffer(data)) {
        stream.end(data);
        return;
      }
      const pieces = data;
      (async () => {
        // once() rejects on the stream's 'error': the loop never waits for a drain that cannot come.
        for (const piece of pieces) if (!stream.write(piece)) await once(stream, 'drain');
        stream.end();
      })().catch(reject);
    });
  }

  /**
   * An update carrying a large value (hasLargeValue): its values go through COPY into a temporary
   * table in pieces, and the row is set from there, so no statement holds a copy of the value.
   */
  private async updateWide(plan: RelationPlan, row: Tuple): Promise<void> {
    const params: (string | null)[] = [];
    const where = this.whereClause(plan, row, params);
    const sets: string[] = [];
    const values: [number, string | null][] = [];
    let bytes = 0;
    row.forEach((v, i) => {
      if (v === UNCHANGED_TOAST || plan.keyIndexes.includes(i)) return;
      values.push([i, v]);
      if (v !== null) bytes += v.length;
      sets.push(`${plan.columns[i]} = (SELECT v FROM pg_temp.pg_live_sync_value WHERE i = ${i})::${plan.types[i]}`);
    });
    if (sets.length === 0) return;
    const none = () => undefined;
    await this.pipeline(plan, 'update', 0, () => this.target.query(`CREATE TEMP TABLE IF NOT EXISTS pg_live_sync_value (i int, v text) ON COMMIT DELETE ROWS`), none);
    await this.pipeline(plan, 'update', bytes, () => this.copyIn('COPY pg_temp.pg_live_sync_value (i, v) FROM STDIN', valuePieces(values), values.length), none);
    await this.pipeline(plan, 'update', 0, () => this.counted(`UPDATE ${plan.targetName} SET ${sets.join(', ')} WHERE ${where}`, params, (r) => {
      if (r.rowCount === 0) this.missingRows('update', plan, 1);
    }), none);
    await this.pipeline(plan, 'update', 0, () => this.target.query(`TRUNCATE pg_temp.pg_live_sync_value`), none);
  }

  /**
   * Closes the group without waiting for the target: what is queued, then `statements` (its
   * position and COMMIT), go to the connection behind what is in flight, and the next group's
   * BEGIN and statements may follow at once, so the target runs the end of one group while the
   * next is decoded. `committed` settles once COMMIT has answered, and resolves only if every
   * statement of the group (and before it) succeeded: a COMMIT in an aborted transaction answers
   * ROLLBACK, not an error, so both are checked. A failure is also left as the applier's, so the
   * next group fails too and is rolled back.
   */
  async commitPipelined(lsn: Lsn, statements: [string, unknown[]][]): Promise<{ committed: Promise<void> }> {
    await this.sendQueues();
    this.orderedQueued = false;
    if (this.failure) throw this.failure;
    let last: Promise<pg.QueryResult> | null = null;
    for (const [sql, params] of statements) last = this.sendRaw(sql, params);
    const before = this.inFlight.map((f) => f.done);
    const committed = (async () => {
      const r = await last!;
      await Promise.all(before);
      if (this.failure) throw this.failure;
      if (r.command !== 'COMMIT') throw new Error(`the target answered ${r.command} to COMMIT: a statement of the group failed`);
    })();
    // Not left unhandled in between: the caller awaits it before anything else commits.
    committed.catch(() => undefined);
    this.appliedLsn = lsn;
    this.group = null;
    // Wrapped: an async function returning the promise itself would wait for it.
    return { committed };
  }

  /** A statement of the group's own (BEGIN, its position, COMMIT) sent without waiting, its failure the group's. */
  private sendRaw(sql: string, params: unknown[] = []): Promise<pg.QueryResult> {
    const sent = this.target.query(sql, params);
    const done = sent.then(() => undefined, (err: unknown) => {
      this.failure ??= err;
    });
    this.inFlight.push({ done, bytes: 0 });
    return sent;
  }

  /** The group is durable on the target (checkpoint committed it). */
  committed(lsn: Lsn | null): void {
    if (lsn !== null) this.appliedLsn = lsn;
    this.group = null;
    // Rolled back: what was queued or in flight belonged to the discarded group.
    this.queues.clear();
    this.queuedRows = 0;
    this.queuedBytes = 0;
    this.orderedQueued = false;
    this.inFlight.length = 0;
    this.inFlightBytes = 0;
    this.failure = null;
    this.missing.clear();
  }

  private keyOf(plan: RelationPlan, row: Tuple): string {
    return JSON.stringify(plan.keyIndexes.map((i) => this.keyValue(plan, row, i)));
  }

  /** keyOf for a row already applied as is (an insert): no checks. */
  private rowKey(plan: RelationPlan, row: Tuple | RawTuple): string {
    const values = tupleValues(row);
    return JSON.stringify(plan.keyIndexes.map((i) => values[i]));
  }

  private keyValue(plan: RelationPlan, row: Tuple, i: number): string {
    const v = row[i];
    if (v === UNCHANGED_TOAST || v === null) {
      throw new SyncError(`key column ${plan.columns[i]} of ${plan.targetName} arrived without a value; give the source table a primary key or REPLICA IDENTITY FULL`, 'replica_identity');
    }
    return v;
  }

  /** The plan for a relation's changes in the current transaction, or null when they are not ours. */
  private async planFor(relationOid: number): Promise<RelationPlan | null> {
    let plan = this.plans.get(relationOid);
    if (plan === undefined) {
      const relation = this.relations.get(relationOid);
      if (!relation) throw new Error(`pgoutput sent a change for relation ${relationOid} before describing it`);
      plan = await this.plan(relation);
      this.plans.set(relationOid, plan);
    }
    return plan && this.current(plan);
  }

  /** The plan when the table's changes in the current transaction are ours (see TableMode), else null. */
  private current(plan: RelationPlan): RelationPlan | null {
    const mode = this.tables.get(plan.key);
    if (mode && this.commitAfter !== null && mode.fromLsn > this.commitAfter) {
      throw new Error(`${plan.targetName} takes changes only from ${formatLsn(mode.fromLsn)} on, and this transaction's commit position is not known yet`);
    }
    return mode && this.finalLsn >= mode.fromLsn ? plan : null;
  }

  private async plan(relation: Relation, driftHandled = false): Promise<RelationPlan | null> {
    const key = tableKey(relation.schema, relation.table);
    const table = this.tables.get(key)?.table;
    if (!table) return null;
    // The catalog reads queue behind the statements in flight: a failure there is theirs to report.
    await this.settle();
    const sourceName = qualified(relation.schema, relation.table);
    const targetName = qualified(table.target.schema, table.target.table);
    const cols = await targetColumns(this.target, table.target);
    if (!cols) throw new SyncError(`target table ${targetName} (for ${sourceName}) no longer exists, renamed or dropped on the target; restore it under that name and run again`, 'target_table');
    // Stored generated columns are the target's to compute: never written, never read back.
    const byName = new Map(cols.filter((c) => !c.generated).map((c) => [c.name, c]));
    // The column map renames and leaves out; a column it does not name (one added since) keeps its name.
    const kept = relation.columns.flatMap((c, i) => {
      const target = mappedColumn(table.columnMap, c.name);
      return target === null ? [] : [{ ...c, at: i, target }];
    });
    const absent = kept.filter((c) => !byName.has(c.target));
    if (absent.length > 0 && this.onDrift && !driftHandled && absent.every((c) => c.target === c.name)) {
      await this.flush();
      const previous = this.previousRelations.get(relation.relationOid) ?? null;
      if ((await this.onDrift(table, absent.map((c) => c.name), previous)) === 'added') return this.plan(relation, true);
      this.tables.delete(key);
      return null;
    }
    const missing = absent.find((c) => c.target !== c.name) ?? absent[0];
    if (missing && missing.target !== missing.name) {
      throw new SyncError(`target table ${targetName} has no column ${quoteIdent(missing.target)}, the target name --table-map "columns" gives source column ${quoteIdent(missing.name)} of ${sourceName}; add it on the target (ALTER TABLE ${targetName} ADD COLUMN ${quoteIdent(missing.target)} ...) or fix the map, and run again`, 'target_column');
    }
    if (missing) {
      throw new SyncError(`source table ${sourceName} has column ${quoteIdent(missing.name)} that target table ${targetName} lacks (or computes as a generated column); add it on the target (ALTER TABLE ${targetName} ADD COLUMN ...) and run again`, 'target_column');
    }
    const sent = new Set(kept.map((c) => c.target));
    const ordered = await firesOnReplica(this.target, table.target);
    const alwaysIdentity = kept.map((c) => byName.get(c.target)!.alwaysIdentity);
    return {
      relation,
      key,
      targetName,
      columns: kept.map((c) => quoteIdent(c.target)),
      types: kept.map((c) => byName.get(c.target)!.type),
      keyIndexes: kept.flatMap((c, i) => (c.isKey ? [i] : [])),
      full: relation.replicaIdentity === 'full',
      alwaysIdentity,
      identityOutsideKey: kept.some((c, i) => alwaysIdentity[i] && !c.isKey),
      targetOnly: [...byName.values()].filter((c) => !sent.has(c.name)).map((c) => quoteIdent(c.name)),
      ordered,
      keep: kept.length === relation.columns.length ? null : kept.map((c) => c.at),
    };
  }

  /**
   * Rows are found by their replica identity. For FULL every old value is compared in the text
   * its type's output function prints (what pgoutput sent; `::text` differs for bool, inet,
   * char(n)), so types without an equality operator (json, point) work too, and exactly one row is
   * touched (by tableoid and ctid), so duplicate rows stay duplicates. `num_nulls` tells a NULL
   * from a composite whose fields are all NULL, which IS NULL cannot.
   */
  private whereClause(plan: RelationPlan, identity: Tuple, params: (string | null)[]): string {
    if (plan.full) {
      const conds: string[] = [];
      identity.forEach((v, i) => {
        if (v === UNCHANGED_TOAST) return;
        if (v === null) conds.push(`num_nulls(${plan.columns[i]}) = 1`);
        else {
          params.push(v);
          conds.push(`format('%s', ${plan.columns[i]}) = $${params.length}`);
        }
      });
      return `(tableoid, ctid) = (SELECT tableoid, ctid FROM ${plan.targetName} WHERE ${conds.join(' AND ') || 'true'} LIMIT 1)`;
    }
    if (plan.keyIndexes.length === 0) {
      throw new SyncError(`${qualified(plan.relation.schema, plan.relation.table)} has no replica identity on the source, so its UPDATE or DELETE cannot be applied; on the source run ALTER TABLE ... REPLICA IDENTITY FULL (or add a primary key)`, 'replica_identity');
    }
    return plan.keyIndexes
      .map((i) => {
        params.push(this.keyValue(plan, identity, i));
        return `${plan.columns[i]} = $${params.length}`;
      })
      .join(' AND ');
  }

  /**
   * The target refuses to UPDATE a GENERATED ALWAYS identity column to a value, which native
   * replication does. Such columns are left out of the SET and required to be unchanged instead;
   * when one did change, the row is replaced (see replaceRow).
   */
  private async updateOne(plan: RelationPlan, identity: Tuple, row: Tuple): Promise<void> {
    const params: (string | null)[] = [];
    const sets: string[] = [];
    const unchangedIdentity: string[] = [];
    row.forEach((v, i) => {
      if (v === UNCHANGED_TOAST) return; // the target already holds it; never overwrite
      params.push(v);
      if (plan.alwaysIdentity[i]) unchangedIdentity.push(`${plan.columns[i]} IS NOT DISTINCT FROM $${params.length}::${plan.types[i]}`);
      else sets.push(`${plan.columns[i]} = $${params.length}`);
    });
    if (sets.length === 0 && unchangedIdentity.length === 0) return;
    const where = this.whereClause(plan, identity, params);
    if (unchangedIdentity.length > 0) {
      const matches = [`(${where})`, ...unchangedIdentity].join(' AND ');
      const sql = sets.length > 0
        ? `UPDATE ${plan.targetName} SET ${sets.join(', ')} WHERE ${matches}`
        : `SELECT 1 FROM ${plan.targetName} WHERE ${matches} LIMIT 1`;
      // What to do next depends on the answer: wait for it (and for everything before it).
      await this.settle();
      const r = await this.exec(plan, 'update', () => this.target.query(sql, params));
      if (r.rowCount === 0) await this.replaceRow(plan, identity, row);
      return;
    }
    await this.pipeline(plan, 'update', 0, () => this.counted(`UPDATE ${plan.targetName} SET ${sets.join(', ')} WHERE ${where}`, params, (r) => {
      if (r.rowCount === 0) this.missingRows('update', plan, 1);
    }), () => undefined);
  }

  /**
   * An update that changes a GENERATED ALWAYS identity column: the old row is deleted and the new
   * one inserted with OVERRIDING SYSTEM VALUE in one statement; unchanged TOAST values and the
   * columns only the target has are carried over from the deleted row.
   */
  private async replaceRow(plan: RelationPlan, identity: Tuple, row: Tuple): Promise<void> {
    const params: (string | null)[] = [];
    const where = this.whereClause(plan, identity, params);
    const values = row.map((v, i) => {
      if (v === UNCHANGED_TOAST) return `d.${plan.columns[i]}`;
      params.push(v);
      return `$${params.length}::${plan.types[i]}`;
    });
    const columns = [...plan.columns, ...plan.targetOnly];
    values.push(...plan.targetOnly.map((c) => `d.${c}`));
    const sql = `WITH d AS (DELETE FROM ${plan.targetName} WHERE ${where} RETURNING *)
      INSERT INTO ${plan.targetName} (${columns.join(', ')}) OVERRIDING SYSTEM VALUE SELECT ${values.join(', ')} FROM d`;
    const r = await this.exec(plan, 'update', () => this.target.query(sql, params));
    if (r.rowCount === 0) this.missingRows('update', plan, 1);
  }

  private async deleteOne(plan: RelationPlan, identity: Tuple): Promise<void> {
    const params: (string | null)[] = [];
    const where = this.whereClause(plan, identity, params);
    await this.pipeline(plan, 'delete', 0, () => this.counted(`DELETE FROM ${plan.targetName} WHERE ${where}`, params, (r) => {
      if (r.rowCount === 0) this.missingRows('delete', plan, 1);
    }), () => undefined);
  }

  /**
   * A statement the target refuses (constraint, type, permission) names the table and stops the
   * sync; connection trouble and transient conditions (deadlock, disk full, ...) are not the
   * table's fault and go up as they are, to be retried.
   */
  private async exec(plan: RelationPlan, op: string, run: () => Promise<pg.QueryResult>): Promise<pg.QueryResult> {
    try {
      return await run();
    } catch (err) {
      const e = err as { code?: string; detail?: string };
      if (!e.code || isTransient(err)) throw err;
      if (e.code === '23505') {
        // The detail names only the key ("Key (id)=(42) already exists."), never the rest of the row.
        throw new SyncError(`applying a source ${op} to ${plan.targetName} failed: ${errorMessage(err)}${e.detail ? ` (${e.detail})` : ''}; a target row the source does not have holds that key (or the target has a unique constraint the source lacks): delete that row (or drop the constraint) on the target and run again, nothing is lost`, 'apply');
      }
      throw new SyncError(`applying a source ${op} to ${plan.targetName} failed: ${errorMessage(err)}; fix the target table (its constraints and types must accept the source rows) and run again, nothing is lost`, 'apply');
    }
  }

  /**
   * client.query whose `count` runs in pg's own callback, which pg calls before it sends the next
   * statement; a promise's then() would run only after that, too late for the position statement
   * that follows the group's last statement (MissingRowCounts).
   */
  private counted(sql: string, params: unknown[], count: (r: pg.QueryResult) => void): Promise<pg.QueryResult> {
    return new Promise((resolve, reject) => {
      this.target.query(sql, params, (err: Error, r: pg.QueryResult) => {
        if (err) return reject(err);
        count(r);
        resolve(r);
      });
    });
  }

  private missingRows(op: 'update' | 'delete' | 'insert', plan: RelationPlan, n: number): void {
    // As PostgreSQL's own subscriber does: the row is gone on the target; report, count and go on.
    this.log('warn', `${op} found no row for ${counted(n, 'change')} in ${plan.targetName}: the target was changed outside the sync; pg-live-sync verify compares the table with the source`);
    let c = this.missing.get(plan.key);
    if (!c) this.missing.set(plan.key, (c = { schema: plan.relation.schema, table: plan.relation.table, updates: 0, deletes: 0 }));
    if (op === 'delete') c.deletes += n;
    else c.updates += n;
  }

  /** This group's changes that found no row, for its position statement. */
  missingRowCounts(): MissingRowCounts {
    return new MissingRowCounts(this.missing);
  }
}

/** A tuple as the target receives it: the columns the map leaves out are dropped. */
function cut(plan: RelationPlan, row: Tuple): Tuple {
  return plan.keep === null ? row : plan.keep.map((i) => row[i]);
}

/** An inserted row as the target receives it: kept as pgoutput's bytes unless the map leaves columns out. */
function cutInserted(plan: RelationPlan, row: Tuple | RawTuple): Tuple | RawTuple {
  if (plan.keep === null) return row;
  return cut(plan, row instanceof RawTuple ? tupleValues(row) : row);
}

/**
 * COPY text data for a batch of inserts. A RawTuple's values are copied byte for byte from what
 * pgoutput sent, escaping only as needed: both connections use client_encoding UTF8, where the four
 * characters COPY escapes are single bytes below 0x80 and every byte of a multibyte character is
 * 0x80 or above, so a byte scan finds exactly them, and no string is made per value.
 */
function copyData(rows: (Tuple | RawTuple)[], bytes: number): Buffer {
  let out = Buffer.allocUnsafe(Math.ceil(bytes * 1.25) + 1024);
  let o = 0;
  const room = (need: number) => {
    if (o + need > out.length) out = Buffer.concat([out.subarray(0, o), Buffer.allocUnsafe(need + out.length)]);
  };
  for (const row of rows) {
    if (!(row instanceof RawTuple) || !rawCopyable(row.bytes)) {
      const line = Buffer.from(copyLine(tupleValues(row)));
      room(line.length);
      o += line.copy(out, o);
      continue;
    }
    const b = row.bytes;
    // Escaping at most doubles a value's bytes, and a null's one kind byte becomes a tab and `\N`;
    // a wide row is measured instead, so one large value does not take three times its size.
    room(b.length > 65_536 ? copyLength(b) : 3 * b.length + 1);
    const n = b.readUInt16BE(0);
    let p = 2;
    for (let c = 0; c < n; c++) {
      if (c > 0) out[o++] = 0x09;
      if (b[p++] === 0x6e) {
        out[o++] = 0x5c; // \N
        out[o++] = 0x4e;
        continue;
      }
      const end = p + 4 + b.readUInt32BE(p);
      p += 4;
      for (; p < end; p++) {
        const ch = b[p];
        if (ch !== 0x5c && ch !== 0x09 && ch !== 0x0a && ch !== 0x0d) out[o++] = ch;
        else {
          out[o++] = 0x5c;
          out[o++] = ch === 0x09 ? 0x74 : ch === 0x0a ? 0x6e : ch === 0x0d ? 0x72 : 0x5c;
        }
      }
    }
    out[o++] = 0x0a;
  }
  return out.subarray(0, o);
}

/**
 * COPY text data for a batch with a large row, in pieces of about COPY_PIECE bytes: a large
 * RawTuple's line is escaped piece by piece straight from pgoutput's bytes, never whole.
 */
function* copyPieces(rows: (Tuple | RawTuple)[]): Generator<Buffer> {
  for (const row of rows) {
    if (row instanceof RawTuple && row.bytes.length >= LARGE_VALUE && rawCopyable(row.bytes)) yield* rawLinePieces(row.bytes);
    else yield copyData([row], row instanceof RawTuple ? row.bytes.length : 0);
  }
}

/** One RawTuple's COPY line (as copyData writes it), in pieces. */
function* rawLinePieces(b: Buffer): Generator<Buffer> {
  // Room past COPY_PIECE for the few bytes written before the next check.
  const fresh = () => Buffer.allocUnsafe(COPY_PIECE + 16);
  let out = fresh();
  let o = 0;
  const n = b.readUInt16BE(0);
  let p = 2;
  for (let c = 0; c < n; c++) {
    if (c > 0) out[o++] = 0x09;
    if (b[p++] === 0x6e) {
      out[o++] = 0x5c; // \N
      out[o++] = 0x4e;
      continue;
    }
    const end = p + 4 + b.readUInt32BE(p);
    p += 4;
    while (p < end) {
      for (; p < end && o < COPY_PIECE; p++) {
        const ch = b[p];
        if (ch !== 0x5c && ch !== 0x09 && ch !== 0x0a && ch !== 0x0d) out[o++] = ch;
        else {
          out[o++] = 0x5c;
          out[o++] = ch === 0x09 ? 0x74 : ch === 0x0a ? 0x6e : ch === 0x0d ? 0x72 : 0x5c;
        }
      }
      if (o >= COPY_PIECE) {
        yield out.subarray(0, o);
        out = fresh();
        o = 0;
      }
    }
  }
  out[o++] = 0x0a;
  yield out.subarray(0, o);
}

/** COPY text lines `i<TAB>value` for updateWide's temporary table, in pieces of about COPY_PIECE characters. */
function* valuePieces(values: [number, string | null][]): Generator<Buffer> {
  for (const [i, v] of values) {
    if (v === null) {
      yield Buffer.from(`${i}\t\\N\n`);
      continue;
    }
    yield Buffer.from(`${i}\t`);
    for (let at = 0; at < v.length;) {
      let to = Math.min(v.length, at + COPY_PIECE);
      // Never between the two halves of a surrogate pair: each would be encoded as U+FFFD.
      const last = v.charCodeAt(to - 1);
      if (to < v.length && last >= 0xd800 && last <= 0xdbff) to--;
      const part = v.slice(at, to);
      yield Buffer.from(COPY_SPECIAL.test(part) ? part.replace(COPY_ESCAPES, escapeCopyChar) : part);
      at = to;
    }
    yield Buffer.from('\n');
  }
}

/** A value large enough for updateWide. */
function hasLargeValue(row: Tuple): boolean {
  for (const v of row) if (typeof v === 'string' && v.length >= LARGE_VALUE) return true;
  return false;
}

/** The exact length of a RawTuple's COPY line. */
function copyLength(b: Buffer): number {
  const n = b.readUInt16BE(0);
  let p = 2;
  let size = 3 * n; // the tabs and newline, and room for every column's `\N`
  for (let c = 0; c < n; c++) {
    if (b[p++] === 0x6e) continue;
    const end = p + 4 + b.readUInt32BE(p);
    for (p += 4; p < end; p++) {
      const ch = b[p];
      size += ch === 0x5c || ch === 0x09 || ch === 0x0a || ch === 0x0d ? 2 : 1;
    }
  }
  return size;
}

/** Only text and null values: no binary (never requested) or unchanged-TOAST markers to decode. */
function rawCopyable(b: Buffer): boolean {
  const n = b.readUInt16BE(0);
  let p = 2;
  for (let c = 0; c < n; c++) {
    const kind = b[p++];
    if (kind === 0x74) p += 4 + b.readUInt32BE(p);
    else if (kind !== 0x6e) return false;
  }
  return true;
}

function copyLine(row: Tuple): string {
  let line = '';
  for (let c = 0; c < row.length; c++) {
    const v = row[c];
    if (c > 0) line += '\t';
    line += v === null ? '\\N' : COPY_SPECIAL.test(v as string) ? (v as string).replace(COPY_ESCAPES, escapeCopyChar) : (v as string);
  }
  return line + '\n';
}

const COPY_SPECIAL = /[\\\n\r\t]/;
const COPY_ESCAPES = /[\\\n\r\t]/g;
const COPY_ESCAPED: Record<string, string> = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t' };
function escapeCopyChar(ch: string): string {
  return COPY_ESCAPED[ch];
}
