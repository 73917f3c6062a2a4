/** Helpers shared by the integration tests and the demo: run the real CLI against real clusters. */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import pg from 'pg';
import { startCluster, type Cluster } from './cluster';

export const CLI = path.resolve(__dirname, '../../dist/cli.js');

export interface Pair {
  source: Cluster;
  target: Cluster;
  stop(): void;
}

export async function startPair(): Promise<Pair> {
  const [source, target] = await Promise.all([startCluster({ name: 'source' }), startCluster({ name: 'target' })]);
  return {
    source,
    target,
    stop() {
      source.stop();
      target.stop();
    },
  };
}

let dbCounter = 0;

/** A fresh database of the same name on both clusters, with the same schema applied to both. */
export async function freshDatabases(pair: Pair, prefix: string, schemaSql = ''): Promise<{ db: string; sourceUrl: string; targetUrl: string }> {
  const db = `${prefix}_${process.pid}_${++dbCounter}`;
  await Promise.all([pair.source.createDatabase(db), pair.target.createDatabase(db)]);
  if (schemaSql) await Promise.all([pair.source.query(db, schemaSql), pair.target.query(db, schemaSql)]);
  return { db, sourceUrl: pair.source.url(db), targetUrl: pair.target.url(db) };
}

export interface CliRun {
  proc: ChildProcess;
  output(): string;
  /** Resolves with the exit code. */
  exited: Promise<number | null>;
  /** SIGINT and wait for exit. */
  stop(): Promise<number | null>;
  kill9(): Promise<void>;
}

export function startCli(args: string[], env: Record<string, string> = {}): CliRun {
  const proc = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.on('data', (d) => (out += d));
  proc.stderr!.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  return {
    proc,
    output: () => out,
    exited,
    async stop() {
      proc.kill('SIGINT');
      return exited;
    },
    async kill9() {
      proc.kill('SIGKILL');
      await exited;
    },
  };
}

/** Runs the CLI to completion (status, drop, failing runs). */
export async function runCli(args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const started = Date.now();
  const proc = spawn(process.execPath, [CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout.on('data', (d) => (stdout += d));
  proc.stderr.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => proc.on('exit', (c) => resolve(c)));
  clearTimeout(timer);
  return { code, stdout, stderr, ms: Date.now() - started };
}

export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | null | false>, timeoutMs = 60_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${lastErr ? `: ${String(lastErr)}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Order-independent fingerprint of a table's contents, as text, comparable across clusters. */
export async function tableFingerprint(cluster: Cluster, db: string, table: string): Promise<{ rows: number; md5: string | null }> {
  const r = await cluster.query<{ rows: number; md5: string | null }>(db, `SELECT count(*)::int AS rows, md5(string_agg(pgls_row::text, E'\\n' ORDER BY pgls_row::text)) AS md5 FROM ${table} pgls_row`);
  return r.rows[0];
}

export async function sameContents(pair: Pair, db: string, sourceTable: string, targetTable = sourceTable): Promise<boolean> {
  const [a, b] = await Promise.all([tableFingerprint(pair.source, db, sourceTable), tableFingerprint(pair.target, db, targetTable)]);
  return a.rows === b.rows && a.md5 === b.md5;
}

export async function tableStates(target: Cluster, db: string, subscription: string): Promise<Record<string, string>> {
  const r = await target.query(db, `SELECT schemaname || '.' || tablename AS t, state FROM _pg_live_sync.subscription_rel WHERE subname = $1`, [subscription]);
  return Object.fromEntries(r.rows.map((row) => [row.t, row.state]));
}

export async function waitAllReady(target: Cluster, db: string, subscription: string, count: number, timeoutMs = 60_000): Promise<void> {
  await waitFor(`${count} tables ready`, async () => {
    const s = await tableStates(target, db, subscription);
    return Object.keys(s).length === count && Object.values(s).every((v) => v === 'r');
  }, timeoutMs);
}

/** Waits until the target has applied everything the source has written so far. */
export async function waitCaughtUp(pair: Pair, db: string, subscription: string, timeoutMs = 60_000): Promise<void> {
  const lsn = (await pair.source.query(db, 'SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0].l as string;
  await waitFor(`target to apply up to ${lsn}`, async () => {
    const slot = await pair.source.query(db, `SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = $2`, [lsn, `pg_live_sync_${subscription}`]);
    return slot.rows[0]?.ok === true;
  }, timeoutMs);
}

export { pg };
