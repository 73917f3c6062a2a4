/**
 * `pg-live-sync verify`: each ready table, source against target, as row counts and checksums over
 * ranges of its key, and with `--fix` a fresh copy of just the ranges that differ.
 *
 * Chunks. A table with a primary key or replica identity index is cut into ranges of that key,
 * (after, upTo], every `chunkRows`-th key of the source (a keyset walk over the index), the last
 * range open-ended so rows only the target has are found too. A range selects the same rows on
 * both sides because it is a range of values; where a text key column sorts differently on the two
 * servers (collation or its version), it is compared under COLLATE "C" on both (slower: the index
 * is not used). Physical ranges (ctid) would not do: the same row sits at different places in the
 * two clusters. A table without such a key is compared whole. A chunk's checksum is the sum of a
 * 64-bit hash of each row's text form, over the published columns in the source's order (both
 * sessions print values alike: see `connect`), so row order does not matter; count and checksum
 * are computed by the servers, and memory holds only the list of range boundaries.
 *
 * Consistency while the sync runs. The target trails the source, so a chunk read on both sides at
 * about the same time may differ only because changes are on their way. A chunk equal at the first
 * reading is taken as equal (a wrong target would have to hold exactly the source's rows). A
 * difference counts only if it survives this: read the source chunk (one statement, so one snapshot) together with the
 * source's WAL insert position X, read after the snapshot, so every commit it sees ends before X;
 * wait until the target has applied everything up to X (its `applied_lsn`, or the slot's
 * confirmed position, which the sync moves only once all before it is committed on the target);
 * read the target chunk; then read the source chunk again with a fingerprint of its row versions
 * (tableoid, ctid, xmin). The target read saw every source commit up to X and none after the
 * second source read, so if no row version of the chunk changed between the two source reads, the
 * source chunk at the target's position equalled both, and a difference is the target's. Only a
 * row both inserted and deleted between the two source reads escapes the fingerprint, so a
 * difference must be seen twice this way before it is reported. A chunk the source changes in
 * every round is compared again in halves (rows written all the time are few); a range still
 * changing at 1/64 of a chunk is reported as changing, not as different.
 *
 * With no sync running the target is compared as it is: exact when the source is idle. Changes
 * the slot holds that the target has not applied yet would show up as differences, so the report
 * says when there are any (the slot is peeked, not consumed).
 *
 * `--fix` works only with the sync stopped, and holds the sync's lock so none starts meanwhile: per
 * table, one target transaction (session_replication_role = replica) deletes each differing range
 * and copies the source's rows of that range. It commits only if the slot holds no change the
 * target has yet to apply, read after the copies: then the source rows copied are exactly those at
 * the target's position, and resuming the sync applies nothing twice.
 */
import type pg from 'pg';
import { columnCollations, keyColumns, listPublishedTables, targetColumns } from './catalog';
import { connect, emptyTables, qualified, quoteIdent, quoteLiteral, tableKey, type Endpoint } from './connection';
import { pipeRows } from './copy';
import { SyncError } from './errors';
import { formatLsn, maxLsn, parseLsn, type Lsn } from './lsn';
import { checkTarget } from './precheck';
import { notFound, readSyncReport } from './report';
import { slotInfo, validateSubscriptionName } from './slot';
import { loadColumnMaps, loadSubscription, tryLockSubscription, type SubscriptionRow } from './state';
import { TABLE_STATE_WORDS, type Logger, type SyncedTable, type TableMap, type TableName } from './types';
import { counted, formatCount } from './units';

export const DEFAULT_CHUNK_ROWS = 10_000;
/** How long verify waits, per chunk, for a running sync to apply what the source had when read. */
export const VERIFY_CATCH_UP_SECONDS = 60;
/** Comparisons of one range before giving up on a range the source keeps changing. */
const MAX_ROUNDS = 6;
/** Halvings of a chunk the source keeps changing: down to 1/64 of it. */
const MAX_SPLITS = 6;
/** Times a difference must be seen with the source chunk unchanged around the target read. */
const CONFIRMATIONS = 2;
const POLL_MS = 20;
/** Decoded slot rows looked at for changes not yet applied; more than this counts as behind. */
const PEEK_ROWS = 1000;

export interface VerifyOptions {
  source: Endpoint;
  target: Endpoint;
  subscription: string;
  /** Source tables to compare; empty: every table of the sync. */
  tables: TableName[];
  chunkRows: number;
  fix: boolean;
  /** How long a chunk waits for the running sync to apply up to the source's position. */
  catchUpTimeoutMs: number;
  log: Logger;
}

/** Key values (text form) bounding a chunk: (after, upTo]; null is open. */
export interface KeyRange {
  after: string[] | null;
  upTo: string[] | null;
}

/** mismatch: the target differs; changing: the source kept changing it; behind: the target did not catch up in time. */
export type Verdict = 'match' | 'mismatch' | 'changing' | 'behind';

export interface ChunkSide {
  rows: number;
  checksum: string;
}

export interface ChunkReport {
  /** 1-based, of TableReport.chunks. */
  index: number;
  /** null: the whole table (it has no key). */
  range: KeyRange | null;
  verdict: Verdict;
  source: ChunkSide;
  target: ChunkSide;
  /** With --fix: rows copied from the source into the range, and whether it matches afterwards. */
  fixed?: { rows: number; matches: boolean };
}

export interface TableReport {
  source: TableName;
  target: TableName;
  /** Key column names; [] when compared whole. */
  key: string[];
  chunks: number;
  sourceRows: number;
  /** The chunks that did not match. */
  problems: ChunkReport[];
  /** Why the table was not compared, else null. */
  skipped: string | null;
}

export interface VerifyReport {
  subscription: string;
  /** A run held the sync: differences were re-checked once the target had caught up. */
  running: boolean;
  /** No run, and the slot holds changes the target has not applied: differences may be only those. */
  behind: boolean;
  tables: TableReport[];
}

interface KeyColumn {
  name: string;
  /** Its name on the target, through the table's column map. */
  target: string;
  sourceType: string;
  targetType: string;
  /** Sorted differently on the two servers: compared under COLLATE "C". */
  collate: boolean;
}

interface TablePlan {
  t: SyncedTable;
  key: KeyColumn[];
}

interface SourceRead extends ChunkSide {
  versions: string;
  lsn: Lsn;
}

export async function verifySync(opts: VerifyOptions): Promise<VerifyReport> {
  validateSubscriptionName(opts.subscription);
  const source = await connect(opts.source, { applicationName: 'pg_live_sync_verify' });
  try {
    const target = await connect(opts.target, { applicationName: 'pg_live_sync_verify' });
    try {
      return await new Verifier(source, target, opts).run();
    } finally {
      await target.end();
    }
  } finally {
    await source.end();
  }
}

class Verifier {
  /** The source position the target is known to have applied up to. */
  private caught: Lsn = 0n;
  private running = false;
  private sub!: SubscriptionRow;

  constructor(private readonly source: pg.Client, private readonly target: pg.Client, private readonly opts: VerifyOptions) {}

  async run(): Promise<VerifyReport> {
    const { opts, source, target } = this;
    const found = await readSyncReport(target, opts.subscription, source);
    if (!found) throw notFound(opts.subscription);
    this.sub = found.subscription;
    // Held until this session ends: no run starts while chunks are re-copied.
    if (opts.fix && !(await tryLockSubscription(target, opts.subscription))) {
      throw new SyncError(`subscription "${opts.subscription}" is running; verify --fix re-copies chunks only while the sync is stopped: stop it (it keeps its place), run verify --fix, then run the sync again`, 'running');
    }
    this.running = !opts.fix && found.running;
    const behind = !this.running && (await this.pendingChanges());
    if (opts.fix && behind) throw this.behindError();

    const rows = found.tables.filter((r) => (opts.tables.length === 0 ? !r.removed : opts.tables.some((n) => n.schema === r.schema && n.table === r.table)));
    for (const n of opts.tables) {
      if (!rows.some((r) => r.schema === n.schema && r.table === n.table)) {
        throw new SyncError(`table ${tableKey(n.schema, n.table)} is not synced by subscription "${opts.subscription}"; give --table the source table's name as status prints it`, 'usage');
      }
    }
    const published = new Map((await listPublishedTables(source, this.sub.publications)).map((p) => [tableKey(p.schema, p.table), p]));
    // The names the rows were copied under, whatever maps a run is given now.
    const columnMaps = new Map((await loadColumnMaps(target, opts.subscription)).map((m) => [tableKey(m.schema, m.table), m.columnMap]));
    const maps: TableMap[] = rows.map((r) => ({ source: { schema: r.schema, table: r.table }, target: { schema: r.targetSchema, table: r.targetTable }, columns: columnMaps.get(tableKey(r.schema, r.table)) ?? {} }));
    const ready = rows.flatMap((r) => (r.state === 'r' && !r.removed && published.has(tableKey(r.schema, r.table)) ? [published.get(tableKey(r.schema, r.table))!] : []));
    const checked = await checkTarget(target, opts.target, ready, maps);
    const synced = new Map(checked.synced.map((t) => [tableKey(t.source.schema, t.source.table), t]));

    const tables: TableReport[] = [];
    for (const r of rows) {
      const k = tableKey(r.schema, r.table);
      const report: TableReport = { source: { schema: r.schema, table: r.table }, target: { schema: r.targetSchema, table: r.targetTable }, key: [], chunks: 0, sourceRows: 0, problems: [], skipped: null };
      tables.push(report);
      const t = synced.get(k);
      if (r.removed) report.skipped = 'it left the publication and is no longer synced';
      else if (r.state !== 'r') report.skipped = `its state is ${r.state} (${TABLE_STATE_WORDS[r.state]}): only ready tables are compared; run verify again once it is ready`;
      else if (!published.has(k)) report.skipped = 'it is no longer published; the next run of the sync marks it removed';
      else if (!t) report.skipped = checked.tableErrors.get(k) ?? 'the target table cannot be compared';
      if (report.skipped || !t) continue;
      const plan = await this.plan(t);
      report.key = plan.key.map((c) => c.name);
      await this.verifyTable(plan, report);
      if (opts.fix && report.problems.length > 0) await this.fix(plan, report.problems);
    }
    return { subscription: opts.subscription, running: this.running, behind, tables };
  }

  private async plan(t: SyncedTable): Promise<TablePlan> {
    const names = await keyColumns(this.source, t.relid);
    // A key column left out of the publication's column list (or by the column map) cannot bound ranges on the target.
    const columns = names.map((n) => t.columns.find((c) => c.name === n));
    if (names.length === 0 || !columns.every((c) => c !== undefined)) return { t, key: [] };
    const targetNames = columns.map((c) => c!.target);
    const [targetCols, sourceColl, targetColl] = await Promise.all([
      targetColumns(this.target, t.target),
      columnCollations(this.source, t.source, names),
      columnCollations(this.target, t.target, targetNames),
    ]);
    const targetType = new Map((targetCols ?? []).map((c) => [c.name, c.type]));
    const key = columns.map((c) => {
      const s = sourceColl.get(c!.name) ?? null;
      const d = targetColl.get(c!.target) ?? null;
      return { name: c!.name, target: c!.target, sourceType: c!.type, targetType: targetType.get(c!.target)!, collate: s !== null && d !== null && s !== d };
    });
    return { t, key };
  }

  private async verifyTable(p: TablePlan, report: TableReport): Promise<void> {
    const name = `${tableKey(p.t.source.schema, p.t.source.table)} -> ${qualified(p.t.target.schema, p.t.target.table)}`;
    const ranges: (KeyRange | null)[] = p.key.length === 0 ? [null] : chunkRanges(await this.boundaries(p));
    report.chunks = ranges.length;
    this.opts.log('info', `verifying ${name}: ${counted(ranges.length, 'chunk')}${p.key.length === 0 ? ' (no key: the whole table at once)' : ` by (${p.key.map((k) => quoteIdent(k.name)).join(', ')})`}`);
    for (const [i, range] of ranges.entries()) {
      const c = await this.compare(p, range);
      report.sourceRows += c.source.rows;
      if (c.verdict !== 'match') report.problems.push({ index: i + 1, range, ...c });
    }
  }

  /** Every chunkRows-th key of the source, in key order. */
  private async boundaries(p: TablePlan): Promise<string[][]> {
    const out: string[][] = [];
    for (let after = await this.keyAt(p, { after: null, upTo: null }, this.opts.chunkRows - 1); after !== null; after = await this.keyAt(p, { after, upTo: null }, this.opts.chunkRows - 1)) {
      out.push(after);
    }
    return out;
  }

  /** The key of the row `offset` rows into a range of the source, in key order (a keyset walk over the index). */
  private async keyAt(p: TablePlan, range: KeyRange, offset: number): Promise<string[] | null> {
    const params: unknown[] = [];
    const where = conditions(p.t.rowFilter, rangeCondition(p.key, range, 'source', parameter(params)));
    params.push(offset);
    const r: pg.QueryArrayResult<string[]> = await this.source.query({
      text: `SELECT ${p.key.map((k, i) => `${quoteIdent(k.name)}::text AS k${i}`).join(', ')}
               FROM ${sourceFrom(p.t)}${where} ORDER BY ${keyExpressions(p.key, 'source').join(', ')} OFFSET $${params.length} LIMIT 1`,
      values: params,
      rowMode: 'array',
    });
    return r.rows[0] ?? null;
  }

  /**
   * One chunk's verdict. A chunk the source keeps changing is compared again in halves, down to
   * 1/64 of it: rows written all the time are few, and a smaller range is less often touched.
   */
  private async compare(p: TablePlan, range: KeyRange | null, depth = 0): Promise<{ verdict: Verdict; source: ChunkSide; target: ChunkSide }> {
    const whole = await this.compareOnce(p, range);
    if (whole.verdict !== 'changing' || range === null || depth >= MAX_SPLITS) return whole;
    const middle = await this.middleKey(p, range, whole.source.rows);
    if (middle === null) return whole;
    const halves = [await this.compare(p, { after: range.after, upTo: middle }, depth + 1), await this.compare(p, { after: middle, upTo: range.upTo }, depth + 1)];
    const verdict = halves.some((h) => h.verdict === 'mismatch') ? 'mismatch' : (halves.find((h) => h.verdict !== 'match')?.verdict ?? 'match');
    const sum = (a: ChunkSide, b: ChunkSide) => ({ rows: a.rows + b.rows, checksum: (BigInt(a.checksum) + BigInt(b.checksum)).toString() });
    return { verdict, source: sum(halves[0].source, halves[1].source), target: sum(halves[0].target, halves[1].target) };
  }

  /** Re-checked while the sync runs (see the top of this file). */
  private async compareOnce(p: TablePlan, range: KeyRange | null): Promise<{ verdict: Verdict; source: ChunkSide; target: ChunkSide }> {
    let s = await this.readSource(p, range);
    let t = await this.readTarget(p, range);
    const result = (verdict: Verdict) => ({ verdict, source: side(s), target: t });
    if (same(s, t)) return result('match');
    if (!this.running) return result('mismatch');
    let confirmed = 0;
    for (let round = 0; round < MAX_ROUNDS; round++) {
      if (!(await this.caughtUp(s.lsn))) return result('behind');
      t = await this.readTarget(p, range);
      if (same(s, t)) return result('match');
      const again = await this.readSource(p, range);
      if (again.versions === s.versions && ++confirmed >= CONFIRMATIONS) return result('mismatch');
      s = again;
    }
    return result('changing');
  }

  /** The key halfway through a range on the source, or null when it holds too few rows to split. */
  private async middleKey(p: TablePlan, range: KeyRange, rows: number): Promise<string[] | null> {
    if (rows < 2) return null;
    return this.keyAt(p, range, Math.floor(rows / 2) - 1);
  }

  private async readSource(p: TablePlan, range: KeyRange | null): Promise<SourceRead> {
    const params: unknown[] = [];
    const where = conditions(p.t.rowFilter, range && rangeCondition(p.key, range, 'source', parameter(params)));
    // The insert position is read after the statement's snapshot: every commit it sees ends before it.
    const r = await this.source.query(
      `SELECT ${aggregates(p.t, 'source')},
              coalesce(sum(hashtextextended(concat_ws(':', tableoid, ctid, xmin), 0)), 0)::text AS versions,
              pg_current_wal_insert_lsn()::text AS lsn
         FROM ${sourceFrom(p.t)}${where}`,
      params,
    );
    const row = r.rows[0];
    return { rows: Number(row.rows), checksum: row.checksum, versions: row.versions, lsn: parseLsn(row.lsn) };
  }

  private async readTarget(p: TablePlan, range: KeyRange | null): Promise<ChunkSide> {
    const params: unknown[] = [];
    const where = conditions(null, range && rangeCondition(p.key, range, 'target', parameter(params)));
    const r = await this.target.query(`SELECT ${aggregates(p.t, 'target')} FROM ${qualified(p.t.target.schema, p.t.target.table)}${where}`, params);
    return { rows: Number(r.rows[0].rows), checksum: r.rows[0].checksum };
  }

  /** Waits until the running sync has applied every source commit before `lsn`; false on timeout. */
  private async caughtUp(lsn: Lsn): Promise<boolean> {
    const deadline = Date.now() + this.opts.catchUpTimeoutMs;
    for (;;) {
      if (this.caught >= lsn) return true;
      const [sub, slot] = await Promise.all([loadSubscription(this.target, this.opts.subscription), slotInfo(this.source, this.sub.slotName)]);
      this.caught = maxLsn(this.caught, maxLsn(sub?.appliedLsn ?? 0n, slot?.confirmedFlush ?? 0n));
      if (this.caught >= lsn) return true;
      if (Date.now() > deadline) return false;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  /**
   * Whether the (inactive) slot holds a published change the target has not applied. It is
   * peeked, not consumed. Commits made with synchronous_commit off may not be flushed yet, and
   * only flushed WAL is decoded: wait for the flush to reach the insert position first.
   */
  private async pendingChanges(): Promise<boolean> {
    const slot = await slotInfo(this.source, this.sub.slotName);
    // Without its slot the sync cannot resume: nothing will ever be applied on top.
    if (!slot) return false;
    const insert = (await this.source.query(`SELECT pg_current_wal_insert_lsn()::text AS lsn`)).rows[0].lsn as string;
    for (let waited = 0; waited < 10_000; waited += 20) {
      const r = await this.source.query(`SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn AS flushed`, [insert]);
      if (r.rows[0].flushed) break;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const sub = (await loadSubscription(this.target, this.opts.subscription)) ?? this.sub;
    const applied = maxLsn(sub.appliedLsn ?? 0n, sub.consistentLsn ?? 0n);
    const r = await this.source.query(
      `SELECT count(*)::int AS n, count(*) FILTER (WHERE lsn > $2::pg_lsn)::int AS pending
         FROM pg_logical_slot_peek_binary_changes($1, NULL, $3, 'proto_version', '1', 'publication_names', $4)`,
      [this.sub.slotName, formatLsn(applied), PEEK_ROWS, this.sub.publications.map(quoteIdent).join(',')],
    );
    return r.rows[0].pending > 0 || r.rows[0].n >= PEEK_ROWS;
  }

  private behindError(): SyncError {
    return new SyncError(`the source has changes that the target has not applied yet, and a chunk copied now would get them twice when the sync resumes; nothing was changed: run the sync until it has caught up (with writes to the source stopped), stop it, and run verify --fix again`, 'behind');
  }

  /** Re-copies the differing chunks of one table in one target transaction (see the top of this file). */
  private async fix(p: TablePlan, problems: ChunkReport[]): Promise<void> {
    const { source, target } = this;
    const targetName = qualified(p.t.target.schema, p.t.target.table);
    await target.query('BEGIN');
    try {
      await target.query('SET LOCAL session_replication_role = replica');
      for (const c of problems) {
        if (c.range) {
          const params: unknown[] = [];
          await target.query(`DELETE FROM ${targetName}${conditions(null, rangeCondition(p.key, c.range, 'target', parameter(params)))}`, params);
        } else {
          await emptyTables(target, [targetName], false);
        }
        // COPY takes no parameters: the range's values go in as quoted literals.
        const copied = await pipeRows(source, target, p.t, c.range && rangeCondition(p.key, c.range, 'source', quoteLiteral));
        c.fixed = { rows: copied.rows, matches: false };
      }
      if (await this.pendingChanges()) throw this.behindError();
      await target.query('COMMIT');
    } catch (err) {
      await target.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
    for (const c of problems) {
      c.fixed!.matches = same(await this.readSource(p, c.range), await this.readTarget(p, c.range));
      this.opts.log('info', `re-copied chunk ${formatCount(c.index)} of ${tableKey(p.t.source.schema, p.t.source.table)}: ${counted(c.fixed!.rows, 'row')}${c.fixed!.matches ? '' : ', and it still differs'}`);
    }
  }
}

/** Chunks between consecutive boundaries, the first and last open-ended. */
function chunkRanges(bounds: string[][]): KeyRange[] {
  const ranges: KeyRange[] = [];
  let after: string[] | null = null;
  for (const b of bounds) {
    ranges.push({ after, upTo: b });
    after = b;
  }
  ranges.push({ after, upTo: null });
  return ranges;
}

function sourceFrom(t: SyncedTable): string {
  return `${t.partitioned ? '' : 'ONLY '}${qualified(t.source.schema, t.source.table)}`;
}

/**
 * Count and order-independent checksum of the published columns, in the source's column order:
 * by source name on the source, by the column map's target name on the target, excluded ones not at all.
 */
function aggregates(t: SyncedTable, onSide: 'source' | 'target'): string {
  const row = `ROW(${t.columns.map((c) => quoteIdent(onSide === 'source' ? c.name : c.target)).join(', ')})::text`;
  return `count(*)::text AS rows, coalesce(sum(hashtextextended(${row}, 0)), 0)::text AS checksum`;
}

function keyExpressions(key: KeyColumn[], onSide: 'source' | 'target'): string[] {
  return key.map((k) => `${quoteIdent(onSide === 'source' ? k.name : k.target)}${k.collate ? ' COLLATE "C"' : ''}`);
}

/** `(k1, k2) > (v1, v2) AND (k1, k2) <= (w1, w2)`, each value rendered by `value` and cast to the side's column type. */
function rangeCondition(key: KeyColumn[], range: KeyRange, onSide: 'source' | 'target', value: (v: string) => string): string | null {
  const cols = `(${keyExpressions(key, onSide).join(', ')})`;
  const values = (vs: string[]) => `(${vs.map((v, i) => `${value(v)}::${onSide === 'source' ? key[i].sourceType : key[i].targetType}${key[i].collate ? ' COLLATE "C"' : ''}`).join(', ')})`;
  const parts: string[] = [];
  if (range.after) parts.push(`${cols} > ${values(range.after)}`);
  if (range.upTo) parts.push(`${cols} <= ${values(range.upTo)}`);
  return parts.length > 0 ? parts.join(' AND ') : null;
}

function conditions(...cs: (string | null)[]): string {
  const present = cs.filter((c): c is string => c !== null);
  return present.length > 0 ? ` WHERE ${present.map((c) => `(${c})`).join(' AND ')}` : '';
}

function parameter(params: unknown[]): (v: string) => string {
  return (v) => {
    params.push(v);
    return `$${params.length}`;
  };
}

function same(a: ChunkSide, b: ChunkSide): boolean {
  return a.rows === b.rows && a.checksum === b.checksum;
}

function side(s: ChunkSide): ChunkSide {
  return { rows: s.rows, checksum: s.checksum };
}

/**
 * The report as `verify` prints it (and the extension shows it): a line per table or differing
 * range, then a summary; `ok` when every table was compared and matches (or was fixed).
 */
export function verifyLines(report: VerifyReport, fix: boolean): { lines: string[]; ok: boolean } {
  const unresolved = (c: ChunkReport) => !c.fixed?.matches;
  const out: string[] = [];
  if (report.behind) out.push(`warning: the sync is stopped and the source has changes the target has not applied yet: differences below may be only those; run the sync to catch up, then verify again`);
  for (const t of report.tables) {
    const name = `${tableKey(t.source.schema, t.source.table)} -> ${qualified(t.target.schema, t.target.table)}`;
    if (t.skipped) {
      out.push(`skipped: ${name}: ${t.skipped}`);
      continue;
    }
    if (t.problems.length === 0) out.push(`ok: ${name}: ${counted(t.chunks, 'chunk')}, ${counted(t.sourceRows, 'row')}`);
    for (const c of t.problems) out.push(chunkLine(name, t, c));
  }
  const compared = report.tables.filter((t) => t.skipped === null);
  const bad = compared.flatMap((t) => t.problems.filter(unresolved));
  const fixed = compared.flatMap((t) => t.problems.filter((c) => c.fixed?.matches));
  const badTables = compared.filter((t) => t.problems.some(unresolved)).length;
  const skipped = report.tables.length - compared.length;
  out.push(`verify: ${counted(report.tables.length, 'table')}${skipped > 0 ? `, ${formatCount(skipped)} not compared` : ''}, ${counted(bad.length, 'chunk')} differing in ${counted(badTables, 'table')}${fixed.length > 0 ? `, ${formatCount(fixed.length)} re-copied and now matching` : ''}${bad.some((c) => c.verdict === 'mismatch') && !fix ? '; pg-live-sync verify --fix re-copies them (with the sync stopped)' : ''}`);
  const ok = report.tables.every((t) => t.skipped === null && t.problems.every((c) => !unresolved(c)));
  return { lines: out, ok };
}

function chunkLine(name: string, t: TableReport, c: ChunkReport): string {
  const where = c.range ? `chunk ${formatCount(c.index)} of ${formatCount(t.chunks)}, ${rangeText(t.key, c.range)}` : 'whole table (no primary key or replica identity index)';
  const counts = `source ${formatCount(c.source.rows)} rows, target ${formatCount(c.target.rows)} rows${c.source.rows === c.target.rows ? ', contents differ' : ''}`;
  if (c.fixed) return `${c.fixed.matches ? 'fixed' : 'mismatch'}: ${name} ${where}: ${counts}; ${formatCount(c.fixed.rows)} rows re-copied${c.fixed.matches ? '' : ', and it still differs'}`;
  if (c.verdict === 'changing') return `changing: ${name} ${where}: the source kept changing these rows while they were compared; run verify again when writes are quieter`;
  if (c.verdict === 'behind') return `behind: ${name} ${where}: the target did not catch up to the source within ${VERIFY_CATCH_UP_SECONDS} s, so these rows were not compared; check the sync's lag and run verify again`;
  return `mismatch: ${name} ${where}: ${counts}`;
}

/** `("id") > 100 and <= 200`: key values as SQL literals, numbers bare, one line whatever they hold. */
function rangeText(key: string[], r: KeyRange): string {
  const show = (v: string) => (/^-?\d+(\.\d+)?$/.test(v) ? v : `'${v.replace(/'/g, "''").replace(/[\x00-\x1f\x7f]/g, (ch) => `\\x${ch.charCodeAt(0).toString(16).padStart(2, '0')}`)}'`);
  const tuple = (vs: string[]) => (vs.length === 1 ? show(vs[0]) : `(${vs.map(show).join(', ')})`);
  const cols = `(${key.map(quoteIdent).join(', ')})`;
  if (r.after && r.upTo) return `${cols} > ${tuple(r.after)} and <= ${tuple(r.upTo)}`;
  if (r.after) return `${cols} > ${tuple(r.after)}`;
  if (r.upTo) return `${cols} <= ${tuple(r.upTo)}`;
  return 'every row';
}
