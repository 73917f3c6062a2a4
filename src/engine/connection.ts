import pg from 'pg';
import { explainConnectError } from './errors';

/** Shown in errors: "the source", "the target", or a connection's own name in the extension. */
export type Role = 'source' | 'target' | (string & {});

/**
 * Every session we open, on both sides, gets the same output settings so a value's text is the
 * same whichever server printed it: replica identity FULL compares old tuples as text, and the
 * data path passes pgoutput's text straight to the target's input functions.
 */
const SESSION_OPTIONS = [
  'DateStyle=ISO',
  'IntervalStyle=postgres',
  'TimeZone=UTC',
  'extra_float_digits=3',
  'bytea_output=hex',
  'statement_timeout=0',
  'idle_in_transaction_session_timeout=0',
]
  .map((s) => `-c ${s}`)
  .join(' ');

export interface Endpoint {
  url: string;
  role: Role;
  /** Where the user fixes this endpoint, for error messages; the CLI's default is its --<role> flag. */
  configuredIn?: string;
}

export interface ConnectOptions {
  replication?: boolean;
  applicationName?: string;
}

/** host:port/database, never the password: safe for logs, errors and the state table. */
export function describeEndpoint(url: string): string {
  const c = new pg.Client({ connectionString: url });
  const host = c.host?.startsWith('/') ? `socket ${c.host}` : c.host;
  return `${host}:${c.port}/${c.database}`;
}

export function endpointUser(url: string): string {
  return new pg.Client({ connectionString: url }).user ?? '';
}

export async function connect(endpoint: Endpoint, opts: ConnectOptions = {}): Promise<pg.Client> {
  const client = new pg.Client({
    connectionString: endpoint.url,
    connectionTimeoutMillis: 10_000,
    keepAlive: true,
    application_name: opts.applicationName ?? 'pg_live_sync',
    options: SESSION_OPTIONS,
    ...(opts.replication ? { replication: 'database' } : {}),
  } as pg.ClientConfig);
  // Without a listener, a server that goes away takes the whole process with it.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (err) {
    await client.end().catch(() => undefined);
    throw explainConnectError(err, endpoint.role, describeEndpoint(endpoint.url), client.user ?? '', endpoint.configuredIn);
  }
  return client;
}

export const quoteIdent = pg.escapeIdentifier;
export const quoteLiteral = pg.escapeLiteral;

export function qualified(schema: string, table: string): string {
  return `${quoteIdent(schema)}.${quoteIdent(table)}`;
}

/**
 * The one key of a table in maps, messages and the panel: its quoted name, because a bare
 * `schema.table` is the same string for "x.y".z and x."y.z".
 */
export const tableKey = qualified;

/**
 * Empties target tables inside the caller's transaction. TRUNCATE is fast but refused when other
 * tables reference these by foreign key; DELETE always works (session_replication_role = replica
 * skips the FK triggers).
 */
export async function emptyTables(client: pg.Client, qualifiedNames: string[], restartIdentity: boolean): Promise<void> {
  await client.query('SAVEPOINT pg_live_sync_empty');
  try {
    await client.query(`TRUNCATE ${qualifiedNames.join(', ')}${restartIdentity ? ' RESTART IDENTITY' : ''}`);
  } catch {
    await client.query('ROLLBACK TO SAVEPOINT pg_live_sync_empty');
    for (const name of qualifiedNames) await client.query(`DELETE FROM ${name}`);
  }
  await client.query('RELEASE SAVEPOINT pg_live_sync_empty');
}
