/**
 * Which database a connection reached, whatever its URL says: the server's system identifier
 * (kept by a physical standby promoted in its place, new for another server) and the database's
 * OID (kept across a rename). Two URLs may name one database; one URL may reach another server
 * after a DNS or config change.
 */
import type pg from 'pg';

export interface DatabaseIdentity {
  /** pg_control_system().system_identifier, as text: it is a 64-bit number. */
  systemId: string;
  oid: number;
  name: string;
}

export async function databaseIdentity(client: pg.Client): Promise<DatabaseIdentity> {
  const r = await client.query(
    `SELECT (SELECT system_identifier FROM pg_control_system())::text AS system_id, d.oid::int8 AS oid, d.datname AS name
       FROM pg_database d WHERE d.datname = current_database()`,
  );
  return { systemId: r.rows[0].system_id, oid: Number(r.rows[0].oid), name: r.rows[0].name };
}

export function sameDatabase(a: DatabaseIdentity, b: { systemId: string | null; oid: number | null }): boolean {
  return a.systemId === b.systemId && a.oid === b.oid;
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
