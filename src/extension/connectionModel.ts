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

/** host:port/database for the tree, prompts and errors, filled from PG* variables like `pg` does. */
export function describeConnection(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): string {
  const u = new URL(connectionUrl(c, null));
  const host = decodeURIComponent(u.hostname) || u.searchParams.get('host') || env.PGHOST || 'localhost';
  const port = u.port || u.searchParams.get('port') || env.PGPORT || '5432';
  const database = decodeURIComponent(u.pathname.slice(1)) || env.PGDATABASE || connectionUser(c, env) || 'postgres';
  return `${host}:${port}/${database}`;
}

export function connectionUser(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): string {
  const u = new URL(connectionUrl(c, null));
  return decodeURIComponent(u.username) || u.searchParams.get('user') || env.PGUSER || env.USER || '';
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

/** The server and role a connection reaches: user@host:port/database, with the PG* fallbacks applied. */
export function connectionIdentity(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): string {
  return `${connectionUser(c, env)}@${describeConnection(c, env)}`;
}

/**
 * Where a connection's password is kept: under its name and its identity, so a connection of the
 * same name elsewhere (a workspace's, shadowing the user's) or one edited to point at another
 * server never finds it.
 */
export function secretKey(c: ConnectionConfig, env: NodeJS.ProcessEnv = process.env): string {
  return `pgLiveSync.password:${JSON.stringify([c.name, connectionIdentity(c, env)])}`;
}

/** The key of earlier versions: the name alone. */
export function legacySecretKey(name: string): string {
  return `pgLiveSync.password:${name}`;
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
   * and workspace): a password kept under the name alone (earlier versions) moves to `c` only
   * when all of them reach the same server as `c`, since it cannot tell which one it was for.
   */
  async get(c: ConnectionConfig, sameName: ConnectionConfig[]): Promise<string | null> {
    const stored = await this.storage.get(secretKey(c, this.env));
    if (stored !== undefined) return stored;
    const legacy = await this.storage.get(legacySecretKey(c.name));
    const identity = connectionIdentity(c, this.env);
    if (legacy === undefined || !sameName.every((o) => connectionIdentity(o, this.env) === identity)) return null;
    await this.storage.store(secretKey(c, this.env), legacy);
    await this.storage.delete(legacySecretKey(c.name));
    return legacy;
  }

  async set(c: ConnectionConfig, password: string | null): Promise<void> {
    if (password === null) await this.storage.delete(secretKey(c, this.env));
    else await this.storage.store(secretKey(c, this.env), password);
  }

  /** Forgets `c`'s password, and the name-only one of earlier versions. */
  async delete(c: ConnectionConfig): Promise<void> {
    await this.storage.delete(secretKey(c, this.env));
    await this.storage.delete(legacySecretKey(c.name));
  }

  /** The same server and role: a password may follow an edit (or a rename) only then. */
  sameServer(a: ConnectionConfig, b: ConnectionConfig): boolean {
    return connectionIdentity(a, this.env) === connectionIdentity(b, this.env);
  }
}
