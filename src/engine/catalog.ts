/** What the source publishes and what the target holds, read from their catalogs. */
import type pg from 'pg';
import { qualified, quoteIdent } from './connection';
import type { SourceColumn, TableName } from './types';

export interface PublishedTable {
  relid: number;
  schema: string;
  table: string;
  publications: string[];
  columns: SourceColumn[];
  rowFilter: string | null;
  /** pg_class.relreplident: d(efault), n(othing), f(ull), i(ndex). */
  replicaIdentity: string;
  /** Columns of the replica identity's key (the primary key for `d`, the index for `i`); [] for `f` and `n`. */
  identityColumns: string[];
  /** The identity names usable columns: a primary key for `d`, an existing index for `i`, or `f`. */
  hasUsableIdentity: boolean;
  /** A unique index that could serve as REPLICA IDENTITY USING INDEX, if any. */
  candidateIndex: string | null;
  publishesUpdateOrDelete: boolean;
  partitioned: boolean;
  canSelect: boolean;
  approximateRows: number;
  approximateSize: number;
}

export async function publicationsMissing(client: pg.Client, names: string[]): Promise<string[]> {
  const r = await client.query(`SELECT pubname FROM pg_publication WHERE pubname = ANY($1)`, [names]);
  const present = new Set(r.rows.map((row) => row.pubname as string));
  return names.filter((n) => !present.has(n));
}

export async function listPublishedTables(client: pg.Client, publications: string[]): Promise<PublishedTable[]> {
  const r = await client.query(
    `WITH pt AS (
       SELECT p.pubname, p.pubupdate OR p.pubdelete AS upd, c.oid AS relid, pt.schemaname, pt.tablename, pt.attnames, pt.rowfilter
         FROM pg_publication_tables pt
         JOIN pg_publication p ON p.pubname = pt.pubname
         JOIN pg_namespace n ON n.nspname = pt.schemaname
         JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename
        WHERE pt.pubname = ANY($1))
     SELECT pt.relid::int AS relid, pt.schemaname, pt.tablename,
            array_agg(DISTINCT pt.pubname::text ORDER BY pt.pubname::text) AS publications,
            bool_or(pt.upd) AS publishes_update_or_delete,
            CASE WHEN bool_or(pt.rowfilter IS NULL) THEN NULL
                 ELSE string_agg('(' || pt.rowfilter || ')', ' OR ') END AS rowfilter,
            c.relreplident::text AS relreplident, c.relkind = 'p' AS partitioned,
            has_table_privilege(c.oid, 'SELECT') AS can_select,
            CASE c.relreplident
              WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
              WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident)
              WHEN 'f' THEN true ELSE false END AS usable_identity,
            ARRAY(SELECT a.attname::text FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
                   WHERE i.indrelid = c.oid AND ((c.relreplident = 'd' AND i.indisprimary) OR (c.relreplident = 'i' AND i.indisreplident))
                   ORDER BY k.n) AS identity_columns,
            (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL
                AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ANY(i.indkey) AND NOT a.attnotnull)
              ORDER BY i.indisprimary DESC, i.indexrelid LIMIT 1) AS candidate_index,
            -- A partitioned table counts its leaves only: ANALYZE gives the root and every middle level
            -- reltuples of their own (the sum below them), which added in would count rows twice.
            (SELECT coalesce(sum(greatest(pc.reltuples, 0)), 0)::bigint FROM pg_class pc
              WHERE (c.relkind <> 'p' AND pc.oid = c.oid)
                 OR (c.relkind = 'p' AND pc.oid IN (SELECT relid FROM pg_partition_tree(c.oid) WHERE isleaf))) AS approximate_rows,
            (SELECT coalesce(sum(pg_table_size(pc.oid)), 0)::bigint FROM pg_class pc
              WHERE (c.relkind <> 'p' AND pc.oid = c.oid)
                 OR (c.relkind = 'p' AND pc.oid IN (SELECT relid FROM pg_partition_tree(c.oid) WHERE isleaf))) AS approximate_size
       FROM pt JOIN pg_class c ON c.oid = pt.relid
      GROUP BY pt.relid, pt.schemaname, pt.tablename, c.oid, c.relreplident, c.reltuples, c.relkind
      ORDER BY pt.schemaname, pt.tablename`,
    [publications],
  );
  const tables: PublishedTable[] = [];
  for (const row of r.rows) {
    const cols = await client.query(
      `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int AS type_oid
         FROM pg_attribute a
        WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
          AND a.attname = ANY ((SELECT pt.attnames FROM pg_publication_tables pt
                                 WHERE pt.schemaname = $2 AND pt.tablename = $3 AND pt.pubname = ANY($4) LIMIT 1)::name[])
        ORDER BY a.attnum`,
      [row.relid, row.schemaname, row.tablename, publications],
    );
    tables.push({
      relid: row.relid,
      schema: row.schemaname,
      table: row.tablename,
      publications: row.publications,
      columns: cols.rows.map((c) => ({ name: c.name, type: c.type, typeOid: c.type_oid })),
      rowFilter: row.rowfilter,
      replicaIdentity: row.relreplident,
      identityColumns: row.identity_columns,
      hasUsableIdentity: row.usable_identity,
      candidateIndex: row.candidate_index,
      publishesUpdateOrDelete: row.publishes_update_or_delete,
      partitioned: row.partitioned,
      canSelect: row.can_select,
      approximateRows: Number(row.approximate_rows),
      approximateSize: Number(row.approximate_size),
    });
  }
  return tables;
}

/** The statement that gives a table a replica identity, for error messages and generated SQL. */
export function replicaIdentityFix(t: PublishedTable): string {
  const name = qualified(t.schema, t.table);
  // The index lives in the table's schema, so its bare name is what USING INDEX takes.
  if (t.candidateIndex) return `ALTER TABLE ${name} REPLICA IDENTITY USING INDEX ${quoteIdent(t.candidateIndex)};`;
  return `ALTER TABLE ${name} REPLICA IDENTITY FULL;`;
}

/**
 * The warning for a published table without a usable replica identity. It is synced as PostgreSQL's
 * own subscriber syncs it: its INSERTs and TRUNCATEs arrive, and the source itself refuses an
 * UPDATE or DELETE on it while a publication publishes them, so nothing can be lost on the way.
 */
export function noReplicaIdentityWarning(t: PublishedTable): string {
  return `table ${qualified(t.schema, t.table)} has no usable replica identity: its INSERTs and TRUNCATEs are synced, but the source refuses every UPDATE and DELETE on it while it is published; to allow and sync them, on the source run: ${replicaIdentityFix(t)}`;
}

export interface TargetColumn {
  name: string;
  type: string;
  generated: boolean;
  /** GENERATED ALWAYS AS IDENTITY: an UPDATE may only set it to DEFAULT, an INSERT needs OVERRIDING SYSTEM VALUE. */
  alwaysIdentity: boolean;
  notNull: boolean;
  hasDefault: boolean;
}

/** Columns of a target table, or null when the table does not exist. */
export async function targetColumns(client: pg.Client, t: TableName): Promise<TargetColumn[] | null> {
  const r = await client.query(
    `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.attgenerated <> '' AS generated,
            a.attidentity = 'a' AS "alwaysIdentity",
            a.attnotnull AS "notNull", a.atthasdef OR a.attidentity <> '' AS "hasDefault"
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
      ORDER BY a.attnum`,
    [t.schema, t.table],
  );
  if (r.rowCount === 0) {
    const exists = await client.query(
      `SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`,
      [t.schema, t.table],
    );
    if (exists.rowCount === 0) return null;
  }
  return r.rows;
}

/**
 * The columns that order a table's rows for chunked comparison: its replica identity index, else
 * its primary key (both NOT NULL, so every row falls in exactly one key range); [] without either.
 */
export async function keyColumns(client: pg.Client, relid: number): Promise<string[]> {
  const r = await client.query(
    `SELECT a.attname AS name
       FROM (SELECT i.indrelid, i.indkey FROM pg_index i
              WHERE i.indrelid = $1 AND (i.indisreplident OR i.indisprimary)
              ORDER BY i.indisreplident DESC LIMIT 1) i
       CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
      ORDER BY k.n`,
    [relid],
  );
  return r.rows.map((row) => row.name as string);
}

/**
 * Per column of a table, how its values sort: the collation's provider and locale (the
 * database's for the default collation), null for a type without collation. Read the same way on
 * both sides, so that unequal strings mean the two servers order the column differently.
 */
export async function columnCollations(client: pg.Client, t: TableName, columns: string[]): Promise<Map<string, string | null>> {
  // to_jsonb keeps this working across versions that renamed the locale columns (15: *iculocale, 17: *locale).
  const r = await client.query(
    `SELECT a.attname AS name,
            CASE WHEN a.attcollation = 0 THEN NULL
                 WHEN co.collname = 'default' THEN concat_ws(':', d.j->>'datlocprovider', coalesce(d.j->>'datlocale', d.j->>'daticulocale', d.j->>'datcollate'))
                 ELSE concat_ws(':', co.j->>'collprovider', coalesce(co.j->>'colllocale', co.j->>'colliculocale', co.j->>'collcollate')) END AS collation
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
       JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
       LEFT JOIN LATERAL (SELECT pc.collname, to_jsonb(pc.*) AS j FROM pg_collation pc WHERE pc.oid = a.attcollation) co ON true
       CROSS JOIN LATERAL (SELECT to_jsonb(pd.*) AS j FROM pg_database pd WHERE pd.datname = current_database()) d
      WHERE n.nspname = $1 AND c.relname = $2 AND a.attname = ANY($3)`,
    [t.schema, t.table, columns],
  );
  return new Map(r.rows.map((row) => [row.name as string, row.collation as string | null]));
}

/**
 * The table has triggers or rules that run under session_replication_role = replica (ENABLE
 * ALWAYS or ENABLE REPLICA): its changes may read or write other tables, so apply keeps them in
 * strict order with every other table's.
 */
export async function firesOnReplica(client: pg.Client, t: TableName): Promise<boolean> {
  const r = await client.query(
    `SELECT EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal AND g.tgenabled IN ('A', 'R'))
         OR EXISTS (SELECT 1 FROM pg_rewrite w WHERE w.ev_class = c.oid AND w.rulename <> '_RETURN' AND w.ev_enabled IN ('A', 'R')) AS fires
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = $1 AND c.relname = $2`,
    [t.schema, t.table],
  );
  return r.rows[0]?.fires === true;
}
