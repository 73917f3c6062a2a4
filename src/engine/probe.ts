/**
 * What "Test Connection" reports about a server, and what the extension's tree lists. Plain
 * catalog reads; nothing here writes.
 */
import type pg from 'pg';
import { connect, type Endpoint } from './connection';

export interface ServerProbe {
  serverVersion: string;
  walLevel: string;
  /** The role may open a replication connection (REPLICATION, superuser, or rds_replication). */
  canReplicate: boolean;
  /** One round trip on an open connection, in milliseconds. */
  latencyMs: number;
}

export async function probeServer(endpoint: Endpoint): Promise<ServerProbe> {
  const client = await connect(endpoint, { applicationName: 'pg_live_sync_test' });
  try {
    const t0 = process.hrtime.bigint();
    await client.query('SELECT 1');
    const latencyMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const r = await client.query(
      `SELECT current_setting('server_version') AS version, current_setting('wal_level') AS wal_level,
              (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)
              OR pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = 'rds_replication'), 'member') IS TRUE AS can_replicate`,
    );
    return { serverVersion: r.rows[0].version, walLevel: r.rows[0].wal_level, canReplicate: r.rows[0].can_replicate === true, latencyMs };
  } finally {
    await client.end().catch(() => undefined);
  }
}

export function describeProbe(p: ServerProbe): string {
  return `PostgreSQL ${p.serverVersion}, wal_level ${p.walLevel}${p.walLevel === 'logical' ? '' : ' (needs logical to be a source: Generate Tuning SQL)'}, ` +
    `${p.canReplicate ? 'can replicate' : 'cannot replicate (needs REPLICATION to be a source: Generate Connector Role SQL)'}, ${p.latencyMs.toFixed(1)} ms`;
}

export interface PublicationInfo {
  name: string;
  allTables: boolean;
  tableCount: number;
}

export async function listPublications(client: pg.Client): Promise<PublicationInfo[]> {
  const r = await client.query(
    `SELECT p.pubname AS name, p.puballtables AS "allTables",
            (SELECT count(*) FROM pg_publication_tables t WHERE t.pubname = p.pubname
                AND t.schemaname NOT IN ('pg_catalog', 'information_schema', '_pg_live_sync') AND t.schemaname NOT LIKE 'pg\\_%')::int AS "tableCount"
       FROM pg_publication p ORDER BY 1`,
  );
  return r.rows;
}

export interface PublishedTableInfo {
  schema: string;
  table: string;
  identity: 'primary key' | 'index' | 'full' | 'none';
  /** The index used as replica identity (USING INDEX). */
  identityIndex: string | null;
}

/** A publication's tables with their replica identity as it stands; system schemas are never listed. */
export async function publicationTables(client: pg.Client, publication: string): Promise<PublishedTableInfo[]> {
  const r = await client.query(
    `SELECT t.schemaname AS schema, t.tablename AS "table",
            CASE c.relreplident
              WHEN 'f' THEN 'full'
              WHEN 'i' THEN CASE WHEN ri.relname IS NOT NULL THEN 'index' ELSE 'none' END
              WHEN 'd' THEN CASE WHEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) THEN 'primary key' ELSE 'none' END
              ELSE 'none' END AS identity,
            ri.relname AS "identityIndex"
       FROM pg_publication_tables t
       JOIN pg_namespace n ON n.nspname = t.schemaname
       JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
       LEFT JOIN LATERAL (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                           WHERE i.indrelid = c.oid AND i.indisreplident LIMIT 1) ri ON true
      WHERE t.pubname = $1 AND t.schemaname NOT IN ('pg_catalog', 'information_schema', '_pg_live_sync')
        AND t.schemaname NOT LIKE 'pg\\_%'
      ORDER BY 1, 2`,
    [publication],
  );
  return r.rows;
}

/** Tables a user could add to a publication: ordinary and partitioned, outside system schemas. */
export async function userTables(client: pg.Client): Promise<{ schema: string; table: string }[]> {
  const r = await client.query(
    `SELECT n.nspname AS schema, c.relname AS "table"
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
        AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_pg_live_sync') AND n.nspname NOT LIKE 'pg\\_%'
      ORDER BY 1, 2`,
  );
  return r.rows;
}
