import { SyncError } from './errors';
import type { ColumnMap, TableMap, TableName } from './types';

const USAGE = `use {"source":{"schema":"public","table":"metrics"},"target":{"schema":"public","table":"metrics_data"}} or {"source":{"schema":"public"},"target":{"schema":"analytics"}}, and on a table map "columns":{"source_col":"target_col","secret_col":null} to rename a column on the target (a string) or leave it out (null)`;

export function parseTableMap(json: string): TableMap {
  let v: unknown;
  try {
    v = JSON.parse(json);
  } catch {
    throw new SyncError(`--table-map is not valid JSON: ${json}; ${USAGE}`, 'usage');
  }
  const side = (x: unknown): { schema: string; table?: string } | null => {
    if (!x || typeof x !== 'object') return null;
    const o = x as Record<string, unknown>;
    if (typeof o.schema !== 'string' || o.schema === '') return null;
    if (o.table !== undefined && (typeof o.table !== 'string' || o.table === '')) return null;
    return { schema: o.schema, ...(o.table !== undefined ? { table: o.table as string } : {}) };
  };
  const o = (v ?? {}) as Record<string, unknown>;
  const source = side(o.source);
  const target = side(o.target);
  if (!source || !target) throw new SyncError(`--table-map needs "source" and "target" objects with a "schema": ${json}; ${USAGE}`, 'usage');
  if (source.table === undefined && target.table !== undefined) {
    throw new SyncError(`--table-map maps a whole schema onto one table: ${json}; give "source.table" too, or drop "target.table"`, 'usage');
  }
  if (o.columns === undefined) return { source, target };
  if (source.table === undefined) {
    throw new SyncError(`--table-map has "columns" on a whole-schema map: ${json}; column mapping needs one table: give "source.table" (one --table-map per table)`, 'usage');
  }
  return { source, target, columns: parseColumnMap(o.columns, json) };
}

/** Names are taken exactly as written (no case folding): they are the catalog's names, as pg_attribute spells them. */
function parseColumnMap(v: unknown, json: string): ColumnMap {
  if (!v || typeof v !== 'object' || Array.isArray(v)) {
    throw new SyncError(`--table-map "columns" must be an object of source column -> target column name or null: ${json}; ${USAGE}`, 'usage');
  }
  const columns: ColumnMap = {};
  const bySource = new Map<string, string>();
  for (const [from, to] of Object.entries(v as Record<string, unknown>)) {
    if (from === '') throw new SyncError(`--table-map "columns" has an empty source column name: ${json}; give each column its exact name`, 'usage');
    if (to !== null && (typeof to !== 'string' || to === '')) {
      throw new SyncError(`--table-map "columns" maps "${from}" to ${JSON.stringify(to)}: ${json}; give the target column's name as a string, or null to leave the column out`, 'usage');
    }
    if (typeof to === 'string') {
      const other = bySource.get(to);
      if (other !== undefined) throw new SyncError(`--table-map "columns" maps both "${other}" and "${from}" onto target column "${to}": ${json}; give each its own target name`, 'usage');
      bySource.set(to, from);
    }
    columns[from] = to;
  }
  return columns;
}

/** The column map of a source table: its own table map's, else none ({}). */
export function resolveColumnMap(maps: TableMap[], source: TableName): ColumnMap {
  return maps.find((m) => m.source.table !== undefined && m.source.schema === source.schema && m.source.table === source.table)?.columns ?? {};
}

/** Target name of a source column under a column map; null when the map leaves it out. */
export function mappedColumn(map: ColumnMap, name: string): string | null {
  return Object.hasOwn(map, name) ? map[name] : name;
}

/** A table's own map wins over its schema's map; unmapped tables keep their names. */
export function resolveTarget(maps: TableMap[], source: TableName): TableName {
  const exact = maps.find((m) => m.source.table !== undefined && m.source.schema === source.schema && m.source.table === source.table);
  if (exact) return { schema: exact.target.schema, table: exact.target.table ?? source.table };
  const schema = maps.find((m) => m.source.table === undefined && m.source.schema === source.schema);
  if (schema) return { schema: schema.target.schema, table: source.table };
  return { ...source };
}

const PLAIN_PART = /^[\p{L}_][\p{L}\p{N}_$]*/u;

/**
 * `--table SCHEMA.TABLE` as SQL spells it: a plain part is folded to lower case as PostgreSQL
 * folds it, a double-quoted part is taken as is (`""` for a quote), so `"x.y".z` and `x."y.z"`
 * name different tables.
 */
export function parseTableName(text: string, flag = '--table'): TableName {
  const bad = (why: string) =>
    new SyncError(`${flag} "${text}" ${why}; give SCHEMA.TABLE as in SQL, double-quoting a part with capitals, dots or other characters, e.g. ${flag} '"My Schema"."order.lines"'`, 'usage');
  const parts: string[] = [];
  let i = 0;
  for (;;) {
    if (text[i] === '"') {
      let name = '';
      for (i++; ; i++) {
        if (i >= text.length) throw bad('has a double quote that is not closed');
        if (text[i] !== '"') name += text[i];
        else if (text[i + 1] === '"') name += text[++i];
        else break;
      }
      i++;
      if (name === '') throw bad('has an empty quoted name');
      parts.push(name);
    } else {
      const plain = PLAIN_PART.exec(text.slice(i))?.[0];
      if (!plain) throw bad(i === text.length ? 'is missing a name' : `has "${text[i]}" where a name should start`);
      parts.push(plain.replace(/[A-Z]/g, (c) => c.toLowerCase()));
      i += plain.length;
    }
    if (i === text.length) break;
    if (text[i] !== '.') throw bad(`has "${text[i]}" after a name`);
    i++;
  }
  if (parts.length !== 2) throw bad(parts.length === 1 ? 'has no schema' : 'has more than two parts');
  return { schema: parts[0], table: parts[1] };
}
