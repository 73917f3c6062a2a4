/**
 * Additive schema drift: a column added on the source reaches us as a new Relation message (or,
 * between runs, as a published column the target lacks). Only that table is affected: it is
 * either given the column on the target (`--apply-ddl add-column`), or stopped with the exact
 * ALTER TABLE to run while the other tables keep streaming, and copied afresh once it can be.
 *
 * A column the target lacks is new on the source only if the source's relation gained it: against
 * the Relation message before, or the columns recorded in the state (synced_columns). One the
 * sync was already writing was renamed or dropped on the target; adding it back empty would
 * stream on with its values lost, so the table stops with the RENAME (or ADD) to run instead.
 */
import type pg from 'pg';
import { targetColumns } from './catalog';
import { qualified, quoteIdent, quoteLiteral, tableKey } from './connection';
import type { SyncedTable, TableName } from './types';

export type DdlKind = 'add-column';
export const DDL_KINDS: readonly DdlKind[] = ['add-column'];

export interface AddedColumn {
  name: string;
  /** format_type() on the source. */
  type: string;
  /**
   * The value the source's existing rows have in the new column, as text (a non-volatile DEFAULT
   * is stored once, as the column's missing value); null for NULL.
   */
  fill: string | null;
  /**
   * The source rewrote every row with a value of its own (a volatile DEFAULT such as
   * clock_timestamp()); those values never reach the WAL, so the table must be copied afresh.
   */
  rewritten: boolean;
}

/** The source table's columns named in `names`, as the target must add them. */
export async function addedColumns(source: pg.Client, table: TableName, names: string[]): Promise<AddedColumn[]> {
  const r = await source.query(
    `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.atthasdef AS has_default, a.atthasmissing AS has_missing,
            CASE WHEN a.atthasmissing THEN (a.attmissingval::text::text[])[1] END AS fill
       FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = ANY($3) AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY a.attnum`,
    [table.schema, table.table, names],
  );
  return r.rows.map((row) => ({
    name: row.name,
    type: row.type,
    fill: row.fill,
    // A DEFAULT without a stored missing value was evaluated per row while the table was rewritten.
    rewritten: row.has_default && !row.has_missing,
  }));
}

/** The statements that give the target the columns, existing rows filled as on the source. */
export function addColumnSql(target: TableName, columns: AddedColumn[]): string[] {
  const name = qualified(target.schema, target.table);
  return columns.flatMap((c) => {
    const col = quoteIdent(c.name);
    if (c.fill === null) return [`ALTER TABLE ${name} ADD COLUMN IF NOT EXISTS ${col} ${c.type};`];
    // The fill is the source's stored value: existing target rows get exactly what the source's have.
    return [
      `ALTER TABLE ${name} ADD COLUMN IF NOT EXISTS ${col} ${c.type} DEFAULT ${quoteLiteral(c.fill)}::${c.type};`,
      `ALTER TABLE ${name} ALTER COLUMN ${col} DROP DEFAULT;`,
    ];
  });
}

/** The columns of `missing` the sync was already writing (`recorded`; null when unknown: none). */
export function lostColumns(missing: string[], recorded: readonly string[] | null): string[] {
  if (!recorded) return [];
  const known = new Set(recorded);
  return missing.filter((c) => known.has(c));
}

/**
 * A table stopped because the target lacks columns the sync was writing: per column, the RENAME of
 * the one target column of its type the sync does not write (the likely new name), else an ADD.
 */
export async function lostColumnsMessage(source: pg.Client, target: pg.Client, table: SyncedTable, lost: string[]): Promise<string> {
  const key = tableKey(table.source.schema, table.source.table);
  const name = qualified(table.target.schema, table.target.table);
  const types = new Map((await addedColumns(source, table.source, lost)).map((c) => [c.name, c.type]));
  const written = new Set([...table.columns.map((c) => c.target), ...lost]);
  const spare = ((await targetColumns(target, table.target)) ?? []).filter((c) => !c.generated && !written.has(c.name));
  const sql = lost.map((col) => {
    const type = types.get(col) ?? 'text';
    const candidates = spare.filter((c) => c.type === type);
    if (candidates.length !== 1) return `ALTER TABLE ${name} ADD COLUMN ${quoteIdent(col)} ${type};`;
    spare.splice(spare.indexOf(candidates[0]), 1);
    return `ALTER TABLE ${name} RENAME COLUMN ${quoteIdent(candidates[0].name)} TO ${quoteIdent(col)};`;
  });
  const names = lost.map((c) => quoteIdent(c)).join(', ');
  return `target table ${name} has lost column(s) ${names} that the sync writes from ${key} (renamed or dropped on the target, not added on the source); run on the target: ${sql.join(' ')} the table is then copied afresh by itself while the other tables stream`;
}
