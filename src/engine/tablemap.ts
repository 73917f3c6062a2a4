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
