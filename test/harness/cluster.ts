/**
 * Throwaway PostgreSQL 15 clusters for tests and the demo: a temp folder, a free port, logical
 * replication on, password auth over TCP (so wrong-password paths are real), stopped on exit.
 * PostgreSQL refuses to run as root, so as root every server command runs as the `postgres` user.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, appendFileSync, writeFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';

export const PG_BIN = process.env.PG_BIN ?? '/usr/lib/postgresql/15/bin';
export const SUPERUSER = 'postgres';
export const PASSWORD = 'sync-test-pw';

export interface ClusterOptions {
  name: string;
  walLevel?: 'logical' | 'replica';
  settings?: Record<string, string | number>;
  /** TLS on, with a self-signed certificate for CN=localhost (no IP address: verify-full by IP fails). */
  ssl?: boolean;
}

export interface Cluster {
  name: string;
  port: number;
  dir: string;
  /** The server's self-signed certificate (its own CA) when started with `ssl`. */
  certFile?: string;
  /** URL of `database` as the superuser, with the password. */
  url(database?: string, user?: string, password?: string): string;
  query<T extends pg.QueryResultRow = pg.QueryResultRow>(database: string, sql: string, params?: unknown[]): Promise<pg.QueryResult<T>>;
  createDatabase(database: string): Promise<void>;
  stop(): void;
  /** `immediate`: stopped as a crash would (pg_ctl stop -m immediate), WAL not yet written is lost. */
  restart(mode?: 'fast' | 'immediate'): void;
}

export function serverBinariesMissing(): string | undefined {
  if (existsSync(path.join(PG_BIN, 'initdb'))) return undefined;
  return `PostgreSQL 15 server binaries are missing (no ${PG_BIN}/initdb); install them (Debian/Ubuntu: sudo apt-get install -y postgresql) or set PG_BIN`;
}

const asRoot = process.getuid?.() === 0;

function runAsServerUser(cmd: string, args: string[]): string {
  const [file, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args];
  return execFileSync(file, argv, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

const running = new Set<Cluster>();
process.once('exit', () => {
  for (const c of running) c.stop();
});

export async function startCluster(opts: ClusterOptions): Promise<Cluster> {
  const missing = serverBinariesMissing();
  if (missing) throw new Error(missing);
  const dir = mkdtempSync(path.join(os.tmpdir(), `pgls-${opts.name}-`));
  const data = path.join(dir, 'data');
  const pwfile = path.join(dir, 'pw');
  writeFileSync(pwfile, PASSWORD + '\n');
  if (asRoot) {
    const { uid, gid } = userIds('postgres');
    chownSync(dir, uid, gid);
    chownSync(pwfile, uid, gid);
  }
  runAsServerUser(path.join(PG_BIN, 'initdb'), [
    '-D', data, '-U', SUPERUSER, '-E', 'UTF8', '--no-locale', '-N',
    '--auth-local=trust', '--auth-host=scram-sha-256', `--pwfile=${pwfile}`,
  ]);
  const certFile = opts.ssl ? selfSignedCertificate(dir) : undefined;
  const port = await freePort();
  const settings: Record<string, string | number> = {
    port,
    listen_addresses: "'127.0.0.1'",
    unix_socket_directories: `'${dir}'`,
    wal_level: opts.walLevel ?? 'logical',
    max_wal_senders: 20,
    max_replication_slots: 20,
    max_connections: 60,
    shared_buffers: "'64MB'",
    fsync: 'off',
    synchronous_commit: 'off',
    full_page_writes: 'off',
    log_min_messages: 'warning',
    ...(certFile ? { ssl: 'on', ssl_cert_file: `'${certFile}'`, ssl_key_file: `'${path.join(dir, 'server.key')}'` } : {}),
    ...opts.settings,
  };
  appendFileSync(
    path.join(data, 'postgresql.conf'),
    '\n' + Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join('\n') + '\n',
  );
  const log = path.join(dir, 'server.log');
  const start = () => runAsServerUser(path.join(PG_BIN, 'pg_ctl'), ['-D', data, '-l', log, '-w', '-t', '60', 'start']);
  const stopNow = (mode: string) =>
    spawnSync(asRoot ? 'runuser' : path.join(PG_BIN, 'pg_ctl'), [
      ...(asRoot ? ['-u', 'postgres', '--', path.join(PG_BIN, 'pg_ctl')] : []),
      '-D', data, '-m', mode, '-w', 'stop',
    ], { stdio: 'ignore' });
  start();

  const url = (database = 'postgres', user = SUPERUSER, password = PASSWORD) =>
    `postgres://${encodeURIComponent(user)}:${encodeURIComponent(password)}@127.0.0.1:${port}/${encodeURIComponent(database)}`;

  let stopped = false;
  const cluster: Cluster = {
    name: opts.name,
    port,
    dir,
    certFile,
    url,
    async query(database, sql, params) {
      const client = new pg.Client({ connectionString: url(database) });
      await client.connect();
      try {
        return await client.query(sql, params as unknown[]);
      } finally {
        await client.end();
      }
    },
    async createDatabase(database) {
      await cluster.query('postgres', `CREATE DATABASE ${pg.escapeIdentifier(database)}`);
    },
    stop() {
      if (stopped) return;
      stopped = true;
      running.delete(cluster);
      stopNow('immediate');
      rmSync(dir, { recursive: true, force: true });
    },
    restart(mode = 'fast') {
      stopNow(mode);
      start();
    },
  };
  running.add(cluster);
  return cluster;
}

/** server.crt and server.key in `dir`, readable by the server only, as PostgreSQL requires of the key. */
function selfSignedCertificate(dir: string): string {
  const cert = path.join(dir, 'server.crt');
  const key = path.join(dir, 'server.key');
  execFileSync('openssl', ['req', '-new', '-x509', '-days', '2', '-nodes', '-newkey', 'rsa:2048', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost', '-keyout', key, '-out', cert], { stdio: 'ignore' });
  chmodSync(key, 0o600);
  if (asRoot) {
    const { uid, gid } = userIds('postgres');
    chownSync(cert, uid, gid);
    chownSync(key, uid, gid);
  }
  return cert;
}

function userIds(name: string): { uid: number; gid: number } {
  const uid = Number(execFileSync('id', ['-u', name], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', name], { encoding: 'utf8' }).trim());
  return { uid, gid };
}
