/**
 * Cutover: logical replication carries rows, not sequence positions, so a target promoted as-is
 * hands out ids the source already used. Each synced table's sequences (owned by a column, serial
 * or identity, or named in a column's DEFAULT) are set on the target past both the source's last
 * value and the target column's max, never moved backwards: running it again changes nothing.
 */
import type pg from 'pg';
import { qualified, quoteIdent, quoteLiteral } from './connection';
import { notFound } from './report';
import { loadColumnMaps, loadSubscription, loadTableProgress, stateSchemaExists } from './state';
import { mappedColumn } from './tablemap';
import type { ColumnMap, TableName } from './types';

export interface SyncedPair {
  source: TableName;
  target: TableName;
  /** The table's --table-map column map: a target column's sequence follows its source column's. */
  columns?: ColumnMap;
}

export interface SequenceResult {
  /** The target sequence, quoted. */
  sequence: string;
  table: string;
  column: string;
  /** The position set (last value handed out), or null when there was nothing to set. */
  value: string | null;
  before: string | null;
  sourceLast: string | null;
  columnExtreme: string | null;
  /** Why it was left alone, when it was. */
  skipped: string | null;
}

interface ColumnSequence {
  column: string;
  /** Quoted, schema-qualified. */
  sequence: string;
  increment: string;
}

/** column -> sequence of a table: OWNED BY (serial, identity) and nextval() in a DEFAULT. */
async function columnSequences(client: pg.Client, t: TableName): Promise<ColumnSequence[]> {
  const r = await client.query(
    `WITH rel AS (SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2),
     found AS (
       SELECT a.attname AS col, d.objid AS seq
         FROM pg_depend d JOIN rel ON d.refobjid = rel.oid
         JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum = d.refobjsubid
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
       UNION
       SELECT a.attname, d.refobjid
         FROM pg_attrdef ad JOIN rel ON ad.adrelid = rel.oid
         JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
         JOIN pg_attribute a ON a.attrelid = rel.oid AND a.attnum = ad.adnum)
     SELECT f.col, sn.nspname AS seq_schema, s.relname AS seq_name, ps.seqincrement::text AS increment
       FROM found f JOIN pg_class s ON s.oid = f.seq AND s.relkind = 'S'
       JOIN pg_namespace sn ON sn.oid = s.relnamespace
       JOIN pg_sequence ps ON ps.seqrelid = s.oid
      ORDER BY f.col, sn.nspname, s.relname`,
    [t.schema, t.table],
  );
  return r.rows.map((row) => ({ column: row.col, sequence: qualified(row.seq_schema, row.seq_name), increment: row.increment }));
}

/** The last value a sequence handed out, or null when it never has. */
async function lastValue(client: pg.Client, sequence: string): Promise<string | null> {
  const r = await client.query(`SELECT last_value::text AS v, is_called FROM ${sequence}`);
  return r.rows[0].is_called ? r.rows[0].v : null;
}

/**
 * Sets (or with `dryRun` only computes) each target sequence of the synced tables. A sequence
 * only the target has for that column, or one the source table lacks, is still set past the
 * target column's values; one shared by several tables is set past all of them.
 */
export async function syncSequences(source: pg.Client, target: pg.Client, tables: SyncedPair[], dryRun: boolean): Promise<SequenceResult[]> {
  const wanted = new Map<string, SequenceResult & { descending: boolean }>();
  for (const t of tables) {
    // Keyed by the target column each source column lands in.
    const sourceSeqs = new Map((await columnSequences(source, t.source)).flatMap((s) => {
      const column = mappedColumn(t.columns ?? {}, s.column);
      return column === null ? [] : [[column, s] as const];
    }));
    const targetName = qualified(t.target.schema, t.target.table);
    for (const seq of await columnSequences(target, t.target)) {
      const descending = seq.increment.startsWith('-');
      const fromSource = sourceSeqs.get(seq.column);
      const sourceLast = fromSource ? await lastValue(source, fromSource.sequence) : null;
      const col = quoteIdent(seq.column);
      const extreme = (await target.query(`SELECT ${descending ? 'min' : 'max'}(${col})::text AS v FROM ${targetName}`)).rows[0].v as string | null;
      const before = await lastValue(target, seq.sequence);
      const candidates = [sourceLast, extreme, before, wanted.get(seq.sequence)?.value ?? null].filter((v): v is string => v !== null);
      const value = candidates.length === 0 ? null : candidates.reduce((a, b) => (descending ? (BigInt(b) < BigInt(a) ? b : a) : BigInt(b) > BigInt(a) ? b : a));
      wanted.set(seq.sequence, {
        sequence: seq.sequence, table: targetName, column: seq.column, value, before, sourceLast, columnExtreme: extreme, descending,
        skipped: value === null ? 'never used on the source and the column is empty' : value === before ? 'already there' : null,
      });
    }
  }
  const results = [...wanted.values()];
  if (!dryRun) {
    for (const r of results) {
      if (r.skipped !== null) continue;
      await target.query(`SELECT setval($1::regclass, $2::bigint, true)`, [r.sequence, r.value]);
    }
  }
  return results.map(({ descending: _, ...r }) => r);
}

/** syncSequences over the tables a sync on this target syncs (its table map included). */
export async function syncSequencesOfSync(source: pg.Client, target: pg.Client, subname: string, dryRun: boolean): Promise<SequenceResult[]> {
  if (!(await stateSchemaExists(target)) || !(await loadSubscription(target, subname))) throw notFound(subname);
  const columnMaps = new Map((await loadColumnMaps(target, subname)).map((m) => [qualified(m.schema, m.table), m.columnMap]));
  const tables = (await loadTableProgress(target, subname)).filter((t) => !t.removed)
    .map((t) => ({ source: { schema: t.schema, table: t.table }, target: { schema: t.targetSchema, table: t.targetTable }, columns: columnMaps.get(qualified(t.schema, t.table)) }));
  return syncSequences(source, target, tables, dryRun);
}

/** One line per sequence: what it was (or would be) set to, and from what. */
export function describeSequence(r: SequenceResult, dryRun: boolean): string {
  const from = `source last value ${r.sourceLast ?? '-'}, target ${r.table}.${quoteIdent(r.column)} extreme ${r.columnExtreme ?? '-'}, was ${r.before ?? 'unused'}`;
  return `${r.sequence}: ${r.skipped ?? `${dryRun ? 'would set' : 'set'} to ${r.value}`} (${from})`;
}

/** The statements syncSequences runs, for review. */
export function sequenceSql(results: SequenceResult[]): string {
  return results
    .filter((r) => r.skipped === null)
    .map((r) => `SELECT setval(${quoteLiteral(r.sequence)}, ${r.value}, true);`)
    .join('\n');
}
