/**
 * Connections as the `pgLiveSync.connections` setting stores them, and the URL the engine gets.
 * No `vscode` here, so the rules about where a password may go are testable on their own: a
 * password lives only in SecretStorage, under the server and role it was saved for, and is
 * joined to the URL at the moment of connecting.
 */
import { SSL_MODES, type SslMode } from '../engine/connection';

export { SSL_MODES, type SslMode };

/** One entry of the setting. Either `uri` or the fields; never a password. */
export interface ConnectionConfig {
  name: string;
  uri?: string;
  host?: string;
  port?: number;
  database?: string;
  user?: string;
  sslmode?: SslMode;
  sslrootcert?: string;
}

export class ConnectionInputError extends Error {}

const NAME = /^[\p{L}\p{N}_.\- ]{1,64}$/u;

export function validateConnectionName(name: string, taken: string[]): string | null {
  if (!NAME.test(name)) return 'Use 1 to 64 letters, digits, spaces, dots, dashes or underscores';
  if (taken.includes(name)) return `A connection named "${name}" exists already`;
  return null;
}

/**
 * Splits a libpq URI into what the setting keeps (the URI without its password) and the password
 * (for SecretStorage). Rejects what is not a postgres URI, with the fix.
 */
export function splitUri(input: string): { uri: string; password: string | null } {
  const text = input.trim();
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConnectionInputError('not a connection URI; write it as postgresql://user@host:5432/database?sslmode=require');
  }
  if (url.protocol !== 'postgresql:' && url.protocol !== 'postgres:') {
    throw new ConnectionInputError(`a connection URI starts with postgresql://, not ${url.protocol}//`);
  }
  const sslmode = url.searchParams.get('sslmode');
  if (sslmode !== null && !(SSL_MODES as readonly string[]).includes(sslmode)) {
    throw new ConnectionInputError(`sslmode must be one of ${SSL_MODES.join(', ')}, not "${sslmode}"`);
  }
  const password = url.password ? decodeURIComponent(url.password) : url.searchParams.get('password');
  url.password = '';
  url.searchParams.delete('password');
  return { uri: url.toString(), password: password || null };
}

/** Folds a stored connection and its password into the URL the engine and `pg` take. */
export function connectionUrl(c: ConnectionConfig, password: string | null): string {
  let url: URL;
  if (c.uri) {
    url = new URL(c.uri);
  } else {
    url = new URL('postgresql://');
    // Left out, host/port/user/database fall back to PGHOST, PGPORT, ... inside `pg`.
    if (c.host) url.hostname = c.host.includes(':') && !c.host.startsWith('[') ? `[${c.host}]` : c.host;
    // A URL without a host cannot hold a port or a user (the setters ignore them): `pg` reads them from the query then.
    if (c.port && url.host) url.port = String(c.port);
    else if (c.port) url.searchParams.set('port', String(c.port));
    if (c.user && url.host) url.username = encodeURIComponent(c.user);
    else if (c.user) url.searchParams.set('user', c.user);
    if (c.database) url.pathname = `/${encodeURIComponent(c.database)}`;
    if (c.sslmode) url.searchParams.set('sslmode', c.sslmode);
    if (c.sslrootcert) url.searchParams.set('sslrootcert', c.sslrootcert);
  }
  // Without a password, `pg` reads PGPASSWORD and then ~/.pgpass, as libpq does.
  if (password && url.host) url.password = encodeURIComponent(password);
  else if (password) url.searchParams.set('password', password);
  // sslmode stays as written: the engine's `connect` gives it libpq's meaning, for the CLI's URLs too.
  return url.toString();
}

/**
 * The server, role and TLS a connection uses, read as the driver reads its URL: pg-connection-string
 * (like libpq) lets the query's `host`, `port` and `user` replace the URI's authority, so a URI
 * whose authority names the user's server may still connect elsewhere. `extra` holds the libpq
 * keywords that choose a server or database which `pg` ignores today (hostaddr, dbname, ...):
 * they make a connection another one, whether or not a driver honours them.
 */
export interface ConnectionTarget {
  user: string;
  host: string;
  port: string;
  database: string;
  sslmode: SslMode;
  sslrootcert: string;
  extra: [string, string][];
}

const EXTRA_KEYS = ['hostaddr', 'dbname', 'database', 'service', 'servicefile'];
/** Keys read above: given twice, pg takes the last and the engine the first of its own; either way, another identity. */
const READ_KEYS = ['host', 'port', 'user', 'sslmode', 'ssl', 'sslrootcert'];

export function connectionTarget(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): ConnectionTarget {
  const u = new URL(connectionUrl(c, null));
  // pg-connection-string keeps a key's last value, the engine the first of the TLS keys it reads
  // itself; an empty value counts as absent.
  const last = (k: string) => u.searchParams.getAll(k).at(-1) || null;
  const query = (k: string) => u.searchParams.get(k) || null;
  const repeated = READ_KEYS.filter((k) => u.searchParams.getAll(k).length > 1);
  const user = last('user') ?? (decodeURIComponent(u.username) || env.PGUSER || env.USER || '');
  const host = last('host') ?? (decodeURIComponent(u.hostname) || env.PGHOST || 'localhost');
  return {
    user,
    host,
    port: last('port') ?? (u.port || env.PGPORT || '5432'),
    database: decodeURIComponent(u.pathname.slice(1)) || env.PGDATABASE || user || 'postgres',
    sslmode: effectiveSslMode(query('sslmode'), query('ssl'), host, env),
    sslrootcert: query('sslrootcert') ?? env.PGSSLROOTCERT ?? '',
    extra: [...EXTRA_KEYS, ...repeated].flatMap((k) => u.searchParams.getAll(k).map((v): [string, string] => [k, v])),
  };
}

/** sslmode as the engine's `connect` decides it: the URL's, pg's `ssl`, PGSSLMODE, then prefer; never TLS on a socket. */
function effectiveSslMode(sslmode: string | null, ssl: string | null, host: string, env: NodeJS.ProcessEnv): SslMode {
  if (host.startsWith('/')) return 'disable';
  const fromSsl = ssl === null ? null : ssl === 'no-verify' ? 'require' : ['true', '1'].includes(ssl) ? 'verify-full' : 'disable';
  const mode = sslmode ?? fromSsl ?? (env.PGSSLMODE || 'prefer');
  if (mode === 'no-verify') return 'require';
  // Unknown: the engine refuses to connect; as weak as can be here, so it never passes for a stronger one.
  return (SSL_MODES as readonly string[]).includes(mode) ? mode as SslMode : 'disable';
}

/** host:port/database for the tree, prompts and errors, as the driver resolves them (PG* variables included). */
export function describeConnection(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): string {
  const t = connectionTarget(c, env);
  const extra = t.extra.length > 0 ? ` (${t.extra.map(([k, v]) => `${k}=${v}`).join(', ')})` : '';
  return `${t.host}:${t.port}/${t.database}${extra}`;
}

export function connectionUser(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): string {
  return connectionTarget(c, env).user;
}

/** Keeps only known keys of a setting entry; drops anything that looks like a password. */
export function sanitizeConfig(raw: unknown): ConnectionConfig | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const r = raw as Record<string, unknown>;
  if (typeof r.name !== 'string' || r.name.length === 0) return null;
  const out: ConnectionConfig = { name: r.name };
  if (typeof r.uri === 'string' && r.uri) {
    try {
      out.uri = splitUri(r.uri).uri;
    } catch {
      return null;
    }
  }
  if (typeof r.host === 'string' && r.host) out.host = r.host;
  if (typeof r.port === 'number' && Number.isInteger(r.port)) out.port = r.port;
  if (typeof r.database === 'string' && r.database) out.database = r.database;
  if (typeof r.user === 'string' && r.user) out.user = r.user;
  if (typeof r.sslmode === 'string' && (SSL_MODES as readonly string[]).includes(r.sslmode)) out.sslmode = r.sslmode as SslMode;
  if (typeof r.sslrootcert === 'string' && r.sslrootcert) out.sslrootcert = r.sslrootcert;
  return out;
}

/**
 * The server, role and TLS settings a connection reaches, with the PG* fallbacks applied: a
 * password is kept under it, so it goes nowhere else and never over a weaker sslmode or another
 * CA than it was saved with. JSON, so no two different targets read as one.
 */
export function connectionIdentity(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): string {
  const t = connectionTarget(c, env);
  return JSON.stringify([t.user, t.host, t.port, t.database, t.sslmode, t.sslrootcert, ...t.extra]);
}

/**
 * Where a connection's password is kept: under its name and its identity, so a connection of the
 * same name elsewhere (a workspace's, shadowing the user's) or one edited to point at another
 * server never finds it.
 */
export function secretKey(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): string {
  return `pgLiveSync.password:2:${JSON.stringify([c.name, connectionIdentity(c, env)])}`;
}

/**
 * The key of the version before: name and user@host:port/database read from the URI's authority
 * (which the query can override) and without the TLS settings.
 */
export function previousSecretKey(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): string {
  const u = new URL(connectionUrl(c, null));
  const user = decodeURIComponent(u.username) || u.searchParams.get('user') || env.PGUSER || env.USER || '';
  const host = decodeURIComponent(u.hostname) || u.searchParams.get('host') || env.PGHOST || 'localhost';
  const port = u.port || u.searchParams.get('port') || env.PGPORT || '5432';
  const database = decodeURIComponent(u.pathname.slice(1)) || env.PGDATABASE || user || 'postgres';
  return `pgLiveSync.password:${JSON.stringify([c.name, `${user}@${host}:${port}/${database}`])}`;
}

/** The key of earlier versions: the name alone. */
export function legacySecretKey(name: string): string {
  return `pgLiveSync.password:${name}`;
}

/** Whether `to` reaches the server and role of `from` at least as safely: the same CA, an sslmode no weaker. */
function atLeastAsSafe(from: ConnectionTarget, to: ConnectionTarget): boolean {
  const same = (t: ConnectionTarget) => JSON.stringify([t.user, t.host, t.port, t.database, t.sslrootcert, ...t.extra]);
  return same(from) === same(to) && SSL_MODES.indexOf(to.sslmode) >= SSL_MODES.indexOf(from.sslmode);
}

/** The part of VS Code's SecretStorage used here. */
export interface SecretStore {
  get(key: string): PromiseLike<string | undefined>;
  store(key: string, value: string): PromiseLike<void>;
  delete(key: string): PromiseLike<void>;
}

/** Stored passwords, each reachable only by the connection (name and identity) it was saved for. */
export class ConnectionSecrets {
  constructor(private readonly storage: SecretStore, private readonly env: NodeJS.ProcessEnv = process.env) {}

  /**
   * The password saved for `c`, or null. `sameName` is every setting entry of that name (user
   * and workspace): a password kept under an earlier version's key (the name alone, or a server
   * read without the URI's query and TLS) moves to `c` only when all of them are `c`'s identity,
   * since that key cannot tell which one it was for.
   */
  async get(c: ConnectionConfig, sameName: ConnectionConfig[]): Promise<string | null> {
    const stored = await this.storage.get(secretKey(c, this.env));
    if (stored !== undefined) return stored;
    const identity = connectionIdentity(c, this.env);
    if (!sameName.every((o) => connectionIdentity(o, this.env) === identity)) return null;
    for (const old of [previousSecretKey(c, this.env), legacySecretKey(c.name)]) {
      const value = await this.storage.get(old);
      if (value === undefined) continue;
      await this.storage.store(secretKey(c, this.env), value);
      await this.storage.delete(old);
      return value;
    }
    return null;
  }

  async set(c: ConnectionConfig, password: string | null): Promise<void> {
    if (password === null) await this.storage.delete(secretKey(c, this.env));
    else await this.storage.store(secretKey(c, this.env), password);
  }

  /** Forgets `c`'s password, and the name-only one of earlier versions. */
  async delete(c: ConnectionConfig): Promise<void> {
    await this.storage.delete(secretKey(c, this.env));
    await this.storage.delete(previousSecretKey(c, this.env));
    await this.storage.delete(legacySecretKey(c.name));
  }

  /**
   * A password may follow an edit (or a rename) of `from` into `to` only to the same server and
   * role, with the same CA and an sslmode no weaker.
   */
  sameServer(from: ConnectionConfig, to: ConnectionConfig): boolean {
    return atLeastAsSafe(connectionTarget(from, this.env), connectionTarget(to, this.env));
  }
}

/**
 * The sslmode picker's items, the connection's own mode (else libpq's default, prefer) first: a
 * single-choice quick pick starts on its first item, so a picker in libpq's order started on
 * `disable`, and Enter on an edit quietly turned TLS off.
 */
export function sslModeChoices(current: SslMode | undefined): { label: SslMode; description?: string }[] {
  const first = current ?? 'prefer';
  return [first, ...SSL_MODES.filter((m) => m !== first)].map((m) => ({
    label: m,
    ...(m === current ? { description: 'current' } : m === 'prefer' ? { description: 'default: TLS if the server offers it' } : {}),
  }));
}
