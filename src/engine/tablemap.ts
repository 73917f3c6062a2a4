import { SyncError } from './errors';
import type { TableMap, TableName } from './types';

const USAGE = `use {"source":{"schema":"public","table":"metrics"},"target":{"schema":"public","table":"metrics_data"}} or {"source":{"schema":"public"},"target":{"schema":"analytics"}}`;

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
  return { source, target };
}

/** A table's own map wins over its schema's map; unmapped tables keep their names. */
export function resolveTarget(maps: TableMap[], source: TableName): TableName {
  const exact = maps.find((m) => m.source.table !== undefined && m.source.schema === source.schema && m.source.table === source.table);
  if (exact) return { schema: exact.target.schema, table: exact.target.table ?? source.table };
  const schema = maps.find((m) => m.source.table === undefined && m.source.schema === source.schema);
  if (schema) return { schema: schema.target.schema, table: source.table };
  return { ...source };
}
