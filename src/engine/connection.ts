import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import pg from 'pg';
import { explainConnectError, SyncError } from './errors';

/** Shown in errors: "the source", "the target", or a connection's own name in the extension. */
export type Role = 'source' | 'target' | (string & {});

/**
 * Every session we open, on both sides, gets the same output settings so a value's text is the
 * same whichever server printed it: replica identity FULL compares old tuples as text, and the
 * data path passes pgoutput's text straight to the target's input functions.
 */
const SESSION_SETTINGS = [
  'DateStyle=ISO',
  'IntervalStyle=postgres',
  'TimeZone=UTC',
  'extra_float_digits=3',
  'bytea_output=hex',
  'statement_timeout=0',
  'idle_in_transaction_session_timeout=0',
  // Progress commits with the rows it covers and the slot is confirmed up to it: a target that may lose a commit (off) would lose rows the source no longer keeps.
  'synchronous_commit=on',
];

/**
 * The server probes an idle connection of ours after 30 s and drops it after 6 unanswered probes
 * 10 s apart: a run whose network path died leaves no session behind holding its lock (or row
 * locks) for the operating system's two hours. Defaults a user's `options` may change.
 */
const KEEPALIVE_SETTINGS = ['tcp_keepalives_idle=30', 'tcp_keepalives_interval=10', 'tcp_keepalives_count=6'];

/** Our side probes an idle connection after this long (the operating system's interval and count after that). */
const CLIENT_KEEPALIVE_IDLE_MS = 10_000;

/**
 * Names resolve only to the system catalogs (and our own temporary tables): a function or
 * operator that a less trusted role (the database's owner owns `public`) put on the path never
 * runs with the sync's privileges. Not for sessions that run the user's own SQL.
 */
const SEARCH_PATH = 'search_path=pg_catalog,pg_temp';

/** GUCs a user's `options` may not set: ours above, and the one the apply sessions SET themselves. */
const ENGINE_GUCS = new Set([...SESSION_SETTINGS.map((s) => s.split('=')[0]), 'session_replication_role', 'search_path'].map(gucName));

/** libpq's sslmode values, weakest first. */
export const SSL_MODES = ['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
export type SslMode = (typeof SSL_MODES)[number];

export interface Endpoint {
  url: string;
  role: Role;
  /** Where the user fixes this endpoint, for error messages; the CLI's default is its --<role> flag. */
  configuredIn?: string;
}

export interface ConnectOptions {
  replication?: boolean;
  applicationName?: string;
  /** Runs the user's own SQL: their search_path, not the engine's. */
  userSql?: boolean;
}

/**
 * A connection string (a postgres:// URL or libpq's `key=value` form) taken apart the way libpq
 * reads it: the server, user and database for `pg`, and what we decide ourselves, because `pg`
 * would otherwise let the string's `options` replace our session settings and give sslmode its
 * own meanings (no `prefer`, `require` verifying the certificate).
 */
interface ResolvedConnection {
  /** Server, port, user, password and database; never `ssl` or `options`. */
  config: pg.ClientConfig;
  sslmode: SslMode;
  /** The user's own session options (the string's `options`, else PGOPTIONS). */
  userOptions: string;
  /** The string's own TLS files (sslrootcert, sslcert, sslkey), read only when TLS is tried. */
  own: OwnParams;
  /** The server's host as `pg` resolves it (PGHOST, localhost), which verify-full checks the certificate against. */
  host: string;
}

/** Parameters we read ourselves, kept out of what `pg` parses. */
const OWN_PARAMS = ['sslmode', 'sslrootcert', 'sslcert', 'sslkey', 'ssl', 'uselibpqcompat', 'options'] as const;
type OwnParams = Partial<Record<(typeof OWN_PARAMS)[number], string>>;

/**
 * libpq's keywords: the ones `pg` understands are passed on, the others are accepted and ignored.
 * The application name is the engine's (drop and a run find their sessions by it), and whether a
 * session replicates is its choice too.
 */
const CONNINFO_TO_PG: Record<string, keyof pg.ClientConfig | null> = {
  host: 'host', hostaddr: 'host', port: 'port', dbname: 'database', user: 'user', password: 'password',
};
const CONNINFO_IGNORED = new Set([
  'application_name', 'fallback_application_name', 'require_auth', 'sslnegotiation', 'min_protocol_version', 'max_protocol_version',
  'passfile', 'channel_binding', 'connect_timeout', 'client_encoding', 'keepalives', 'keepalives_idle', 'keepalives_interval',
  'keepalives_count', 'tcp_user_timeout', 'replication', 'gssencmode', 'requiressl', 'sslcompression', 'sslpassword', 'sslcertmode',
  'sslcrl', 'sslcrldir', 'sslsni', 'requirepeer', 'ssl_min_protocol_version', 'ssl_max_protocol_version', 'krbsrvname', 'gsslib',
  'gssdelegation', 'service', 'target_session_attrs', 'load_balance_hosts',
]);

const isUrl = (text: string) => /^\s*[a-z][a-z0-9+.-]*:\/\//i.test(text);

const usage = (message: string) => new SyncError(message, 'usage');

/**
 * libpq's keyword/value form: `host=db port=5432 password='it\\'s'`, values bare or single-quoted,
 * a backslash escaping the next character. `where` names the string in errors (its flag).
 */
export function parseConninfo(text: string, where = 'the connection string'): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  const skipSpace = () => {
    while (i < text.length && /\s/.test(text[i])) i++;
  };
  for (skipSpace(); i < text.length; skipSpace()) {
    const keyStart = i;
    while (i < text.length && text[i] !== '=' && !/\s/.test(text[i])) i++;
    const key = text.slice(keyStart, i);
    skipSpace();
    if (text[i] !== '=') throw usage(`missing "=" after "${key}" in ${where}; write key=value pairs, e.g. host=db.example.com dbname=app user=repl, or a postgresql:// URL`);
    i++;
    skipSpace();
    let value = '';
    const quoted = text[i] === "'";
    if (quoted) i++;
    for (; i < text.length; i++) {
      const ch = text[i];
      if (quoted ? ch === "'" : /\s/.test(ch)) break;
      if (ch === '\\' && i + 1 < text.length) i++;
      value += text[i];
    }
    if (quoted) {
      if (text[i] !== "'") throw usage(`unterminated quoted value for "${key}" in ${where}`);
      i++;
    }
    if (!isKeyword(key)) {
      throw usage(`${where} has an unknown keyword "${key}"; use host, port, dbname, user, password, sslmode, options (libpq's keywords) or a postgresql:// URL`);
    }
    out[key] = value;
  }
  return out;
}

const isKeyword = (key: string) => key in CONNINFO_TO_PG || CONNINFO_IGNORED.has(key) || (OWN_PARAMS as readonly string[]).includes(key);

/** What percent-encoding fixes, said once for every URL error that may come from a password. */
const ENCODE_HINT = 'percent-encode / ? # @ : and % in a user name, password or database name (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A, % as %25)';

function decodePart(text: string, part: string, where: string, secret: boolean): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw usage(`the ${part} in ${where} has a % not followed by two hex digits${secret ? '' : ` ("${text}")`}; write a literal % as %25`);
  }
}

/**
 * A postgresql:// URL taken apart as libpq does, into libpq's keywords: credentials, one host
 * (an [IPv6] address, a name, or a percent-encoded socket directory), port, database, then the
 * query's parameters. Only libpq's parameters are accepted: anything else (`statement_timeout`,
 * `application_name` as `pg` would read it) must not change the engine's sessions.
 */
export function parseUrl(text: string, where = 'the connection URL'): Record<string, string> {
  const m = /^\s*([a-z][a-z0-9+.-]*):\/\/(.*?)\s*$/is.exec(text);
  if (!m) throw usage(`${where} is not a URL; write postgresql://user@host:5432/dbname`);
  if (!['postgresql', 'postgres'].includes(m[1].toLowerCase())) {
    throw usage(`${where} is a ${m[1]}:// URL, and pg-live-sync connects to PostgreSQL only; write postgresql://user@host:5432/dbname`);
  }
  const rest = m[2];
  const authorityEnd = rest.search(/[/?]/);
  const authority = authorityEnd < 0 ? rest : rest.slice(0, authorityEnd);
  const tail = authorityEnd < 0 ? '' : rest.slice(authorityEnd);
  const out: Record<string, string> = {};
  // The last @ before the host, as `pg` read it: a password's unencoded @ still works.
  const at = authority.lastIndexOf('@');
  if (at >= 0) {
    const userinfo = authority.slice(0, at);
    const colon = userinfo.indexOf(':');
    const user = decodePart(colon < 0 ? userinfo : userinfo.slice(0, colon), 'user name', where, false);
    if (user) out.user = user;
    if (colon >= 0) out.password = decodePart(userinfo.slice(colon + 1), 'password', where, true);
  }
  const hostport = authority.slice(at + 1);
  if (hostport.includes(',')) throw usage(`${where} names several hosts; pg-live-sync connects to one: keep one host:port`);
  const bracket = /^\[([^\]]*)\](.*)$/.exec(hostport);
  const host = bracket ? bracket[1] : hostport.split(':')[0];
  const portPart = bracket ? bracket[2] : hostport.slice(host.length);
  if ((portPart && !portPart.startsWith(':')) || /[[\]\s]/.test(host)) throw usage(`the host part of ${where} does not parse; write postgresql://user@host:5432/dbname, an IPv6 address in brackets: postgresql://user@[::1]:5432/dbname`);
  const q = tail.indexOf('?');
  const path = q < 0 ? tail : tail.slice(0, q);
  // An @ only after the host's / or ? is credentials cut short there by an unencoded character,
  // whose "port" or "database" would be part of the password: say so without showing them.
  const portBad = portPart.length > 1 && !/^\d{1,5}$/.test(portPart.slice(1));
  if (at < 0 && (path.includes('@') || (portBad && tail.includes('@')))) {
    throw usage(`${where} does not parse: an @ comes after its host part, so its user name or password holds a character that ends it; ${ENCODE_HINT}`);
  }
  if (host) out.host = decodePart(host, 'host', where, false);
  if (portPart.length > 1) out.port = portPart.slice(1);
  const dbname = decodePart(path.slice(1), 'database name', where, false);
  if (dbname) out.dbname = dbname;
  if (q < 0) return out;
  for (const pair of tail.slice(q + 1).split('&')) {
    if (!pair) continue;
    const eq = pair.indexOf('=');
    // `pg` read the query as a form, a + being a space; the extension writes its URLs so.
    const key = eq < 0 ? pair : pair.slice(0, eq);
    if (eq < 0 || !isKeyword(key)) {
      const shown = /^[a-z_]+$/i.test(key) ? ` "${key}"` : '';
      if (!shown) throw usage(`the part after ? in ${where} is not name=value parameters; ${ENCODE_HINT}`);
      if (eq < 0) throw usage(`the parameter${shown} in ${where} has no value; write ${key}=value`);
      throw usage(`${where} has an unknown parameter${shown}; libpq's are host, port, dbname, user, password, sslmode, options, ... (a server setting goes in options=-c name=value, where the engine's own, such as statement_timeout, win)`);
    }
    const value = pair.slice(eq + 1).replace(/\+/g, ' ');
    out[key] = decodePart(value, `${key} parameter`, where, key === 'password');
  }
  return out;
}

/** A port as libpq takes it: digits, 1 to 65535. `pg` would fall back to PGPORT or 5432 on anything else. */
function checkPort(text: string, where: string): number {
  const port = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!(port >= 1 && port <= 65535)) throw usage(`the port "${text}" in ${where} is not a port number (1 to 65535); fix the port there`);
  return port;
}

function resolveConnection(text: string, env: NodeJS.ProcessEnv = process.env, where = 'the connection string'): ResolvedConnection {
  const own: OwnParams = {};
  let config: pg.ClientConfig;
  if (text.startsWith('/')) {
    // `pg`'s own form: a socket directory and a database name.
    config = { connectionString: text };
  } else {
    config = {};
    for (const [k, v] of Object.entries(isUrl(text) ? parseUrl(text, where) : parseConninfo(text, where))) {
      const field = CONNINFO_TO_PG[k];
      if ((OWN_PARAMS as readonly string[]).includes(k)) own[k as keyof OwnParams] = v;
      else if (field === 'port') config.port = v.trim() === '' ? undefined : checkPort(v, where);
      else if (field && !(field === 'host' && k === 'hostaddr' && config.host)) (config as Record<string, unknown>)[field] = v;
    }
  }
  if (config.port === undefined && env.PGPORT) checkPort(env.PGPORT, 'PGPORT');
  const host = new pg.Client(config).host;
  return { config, sslmode: sslModeOf(own, env, host), userOptions: own.options ?? env.PGOPTIONS ?? '', own, host: host ?? 'localhost' };
}

function sslModeOf(own: OwnParams, env: NodeJS.ProcessEnv, host: string | undefined): SslMode {
  // libpq never uses TLS on a Unix socket, whatever sslmode says.
  if (host?.startsWith('/')) return 'disable';
  // `ssl` is node-postgres's own spelling; true there verifies the certificate.
  const fromSsl = own.ssl === undefined ? undefined : own.ssl === 'no-verify' ? 'require' : ['true', '1'].includes(own.ssl) ? 'verify-full' : 'disable';
  const mode = own.sslmode ?? fromSsl ?? (env.PGSSLMODE || 'prefer');
  if (mode === 'no-verify') return 'require';
  if (!(SSL_MODES as readonly string[]).includes(mode)) throw new SyncError(`sslmode must be one of ${SSL_MODES.join(', ')}, not "${mode}"`, 'usage');
  return mode as SslMode;
}

const CERT_ERRORS = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|UNABLE_TO_GET_ISSUER|^ERR_SSL_|^ERR_TLS_/;

/** A TLS attempt that failed as TLS: the server refused it, or the handshake or certificate failed. */
function isTlsFailure(err: unknown): boolean {
  const e = (err ?? {}) as { code?: unknown; message?: unknown };
  return /does not support SSL|error establishing an SSL/i.test(String(e.message ?? '')) || (typeof e.code === 'string' && CERT_ERRORS.test(e.code));
}

/**
 * libpq's sslmode meanings: `prefer` (the default) tries TLS and falls back to plaintext when
 * that fails, `allow` the other way round when the server refuses plaintext (pg_hba hostssl);
 * `require` encrypts without checking the certificate (checking the chain when a root
 * certificate is given, as libpq does); `verify-ca` checks the chain, `verify-full` the host too.
 */
function attempts(mode: SslMode): boolean[] {
  switch (mode) {
    case 'disable':
      return [false];
    case 'allow':
      return [false, true];
    case 'prefer':
      return [true, false];
    default:
      return [true];
  }
}

function fallsBack(err: unknown, triedTls: boolean): boolean {
  const refusedByHba = (err as { code?: string } | null)?.code === '28000';
  return triedTls ? isTlsFailure(err) || refusedByHba : refusedByHba;
}

function tlsOptions(r: ResolvedConnection, endpoint: Endpoint, env: NodeJS.ProcessEnv = process.env): tls.ConnectionOptions {
  const where = endpoint.configuredIn ?? `the --${endpoint.role} URL`;
  const read = (what: string, file: string) => {
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      throw new SyncError(`cannot read the ${what} file ${file} (${(err as NodeJS.ErrnoException).code ?? String(err)}); fix the path in ${where}`, 'tls');
    }
  };
  const defaultRoot = path.join(os.homedir(), '.postgresql', 'root.crt');
  const rootcert = r.own.sslrootcert ?? env.PGSSLROOTCERT ?? (existsSync(defaultRoot) ? defaultRoot : undefined);
  const out: tls.ConnectionOptions = {};
  // "system": the operating system's trusted CAs, Node's default.
  if (rootcert && rootcert !== 'system') out.ca = read('sslrootcert', rootcert);
  const cert = r.own.sslcert ?? env.PGSSLCERT;
  const key = r.own.sslkey ?? env.PGSSLKEY;
  if (cert) out.cert = read('sslcert', cert);
  if (key) out.key = read('sslkey', key);
  // pg names the host to TLS only when it is not an IP address; the check must cover both.
  if (r.sslmode === 'verify-full' || rootcert === 'system') return { ...out, checkServerIdentity: (_name, cert) => tls.checkServerIdentity(r.host, cert) };
  if (r.sslmode === 'verify-ca' && !rootcert) {
    throw new SyncError(`sslmode=verify-ca needs the CA certificate that signed the server's: set sslrootcert=/path/to/ca.crt (or PGSSLROOTCERT) in ${where}`, 'tls');
  }
  if (!out.ca) return { ...out, rejectUnauthorized: false };
  return { ...out, checkServerIdentity: () => undefined };
}

/** A GUC's name as the server compares it: case-insensitive, `-` in `--name=value` read as `_`. */
function gucName(setting: string): string {
  return setting.split('=')[0].trim().toLowerCase().replace(/-/g, '_');
}

/** Splits `options` as the server does: on whitespace, a backslash keeping the next character. */
function splitOptions(text: string): string[] {
  const tokens: string[] = [];
  let token = '';
  for (let i = 0; i < text.length; i++) {
    if (/\s/.test(text[i])) {
      if (token) tokens.push(token);
      token = '';
    } else {
      if (text[i] === '\\' && i + 1 < text.length) token += text[i++];
      token += text[i];
    }
  }
  if (token) tokens.push(token);
  return tokens;
}

/**
 * The user's `options` (`-c name=value`, `-cname=value`, `--name=value`) with ours after them,
 * leaving out the user's setting of any GUC the engine sets: the data path depends on those.
 */
export function sessionOptions(userOptions: string, userSql = false): string {
  const tokens = splitOptions(userOptions);
  const kept: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    const group = t === '-c' && i + 1 < tokens.length ? [t, tokens[++i]] : [t];
    const setting = group.length === 2 ? group[1] : t.startsWith('--') ? t.slice(2) : t.startsWith('-c') ? t.slice(2) : null;
    const name = setting === null ? null : gucName(setting.replace(/\\(.)/g, '$1'));
    if (name === null || !ENGINE_GUCS.has(name) || (userSql && name === 'search_path')) kept.push(...group);
  }
  return [...kept, ...[...SESSION_SETTINGS, ...(userSql ? [] : [SEARCH_PATH])].map((s) => `-c ${s}`)].join(' ');
}

/** Throws the usage error `connect` would, before anything connects: a bad --target is named even when the source is down. */
export function checkEndpoint(endpoint: Endpoint): void {
  resolveConnection(endpoint.url, process.env, whereConfigured(endpoint));
}

const whereConfigured = (endpoint: Endpoint) => endpoint.configuredIn ?? `the --${endpoint.role} URL`;

/** host:port/database, never the password: the one description of an endpoint for logs, errors and the state table. */
export function describeEndpoint(url: string): string {
  const c = new pg.Client(resolveConnection(url).config);
  const host = c.host?.startsWith('/') ? `socket ${c.host}` : c.host;
  return `${host}:${c.port}/${c.database}`;
}

/** Where an endpoint connects, as `pg` resolves it (PGHOST, PGPORT, defaults). */
export function endpointAddress(url: string): { host: string; port: number } {
  const c = new pg.Client(resolveConnection(url).config);
  return { host: c.host ?? '', port: c.port ?? 5432 };
}

export async function connect(endpoint: Endpoint, opts: ConnectOptions = {}): Promise<pg.Client> {
  const r = resolveConnection(endpoint.url, process.env, whereConfigured(endpoint));
  const plan = attempts(r.sslmode);
  for (let i = 0; ; i++) {
    const client = new pg.Client({
      connectionTimeoutMillis: 10_000,
      keepAlive: true,
      keepAliveInitialDelayMillis: CLIENT_KEEPALIVE_IDLE_MS,
      ...r.config,
      application_name: opts.applicationName ?? 'pg_live_sync',
      // Our keepalive defaults first, so the user's own settings of them win.
      options: [...KEEPALIVE_SETTINGS.map((s) => `-c ${s}`), sessionOptions(r.userOptions, opts.userSql)].join(' '),
      ssl: plan[i] ? tlsOptions(r, endpoint) : false,
      ...(opts.replication ? { replication: 'database' } : {}),
    } as pg.ClientConfig);
    // Without a listener, a server that goes away takes the whole process with it.
    client.on('error', () => undefined);
    try {
      await client.connect();
      return client;
    } catch (err) {
      await client.end().catch(() => undefined);
      if (i + 1 < plan.length && fallsBack(err, plan[i])) continue;
      throw explainConnectError(err, endpoint.role, describeEndpoint(endpoint.url), client.user ?? '', endpoint.configuredIn, r.sslmode);
    }
  }
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
