/**
 * Additive schema drift: a column added on the source reaches us as a new Relation message (or,
 * between runs, as a published column the target lacks). Only that table is affected: it is
 * either given the column on the target (`--apply-ddl add-column`), or stopped with the exact
 * ALTER TABLE to run while the other tables keep streaming, and copied afresh once it can be.
 */
import type pg from 'pg';
import { qualified, quoteIdent, quoteLiteral } from './connection';
import type { TableName } from './types';

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
