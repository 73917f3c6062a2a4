/**
 * Which database a connection reached, whatever its URL says: the server's system identifier
 * (kept by a physical standby promoted in its place, new for another server) and the database's
 * OID (kept across a rename). Two URLs may name one database; one URL may reach another server
 * after a DNS or config change.
 */
import type pg from 'pg';

export interface DatabaseIdentity {
  /** pg_control_system().system_identifier, as text (a 64-bit number); null where a role may not read it. */
  systemId: string | null;
  oid: number;
  name: string;
}

export async function databaseIdentity(client: pg.Client): Promise<DatabaseIdentity> {
  const r = await client.query(
    `SELECT has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE') AS readable, d.oid::int8 AS oid, d.datname AS name
       FROM pg_database d WHERE d.datname = current_database()`,
  );
  // A provider may revoke it; then nothing is compared (database OIDs alone repeat across servers).
  const systemId = r.rows[0].readable ? ((await client.query(`SELECT system_identifier::text AS s FROM pg_control_system()`)).rows[0].s as string) : null;
  return { systemId, oid: Number(r.rows[0].oid), name: r.rows[0].name };
}

/** Known to be the same database; false when either side's server is unknown. */
export function sameDatabase(a: DatabaseIdentity, b: { systemId: string | null; oid: number | null }): boolean {
  return a.systemId !== null && a.systemId === b.systemId && a.oid === b.oid;
}

/** Known to be another database than `recorded`; false when either is unknown. */
export function otherDatabase(now: DatabaseIdentity, recorded: { systemId: string | null; oid: number | null } | undefined): boolean {
  return !!recorded?.systemId && recorded.oid !== null && now.systemId !== null && !sameDatabase(now, recorded);
}

export function describeIdentity(d: { systemId: string | null; oid: number | null; name: string | null }): string {
  return `database "${d.name ?? '?'}" (OID ${d.oid ?? '?'}) of the server with system identifier ${d.systemId ?? '?'}`;
}

/**
 * One line when the source and target are the same database (under two URLs, perhaps): each
 * applied change would be decoded again and applied again, and a copy would wait on its own lock.
 */
export async function sameDatabaseProblem(source: pg.Client, target: pg.Client, where: { source: string; target: string }): Promise<string | null> {
  const [s, t] = await Promise.all([databaseIdentity(source), databaseIdentity(target)]);
  if (!sameDatabase(s, t)) return null;
  return `the source ${where.source} and the target ${where.target} are the same database (${describeIdentity(s)}): a sync into its own source would apply each change to it again, without end; give --target another database`;
}
