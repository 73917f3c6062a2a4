/** Helpers shared by the integration tests and the demo: run the real CLI against real clusters. */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { after } from 'node:test';
import pg from 'pg';
import { startCluster, type Cluster, type ClusterOptions } from './cluster';

export const CLI = path.resolve(__dirname, '../../dist/cli.js');

export interface Pair {
  source: Cluster;
  target: Cluster;
  stop(): void;
}

export async function startPair(settings?: ClusterOptions['settings']): Promise<Pair> {
  const [source, target] = await Promise.all([startCluster({ name: 'source', settings }), startCluster({ name: 'target', settings })]);
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

/** `nodeArgs`: flags for node itself (e.g. --cpu-prof, which NODE_OPTIONS refuses). */
export function startCli(args: string[], env: Record<string, string> = {}, nodeArgs: string[] = []): CliRun {
  const proc = spawn(process.execPath, [...nodeArgs, CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
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

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** A whole number from 1 to n. */
export const rnd = (n: number) => 1 + Math.floor(Math.random() * n);

export const alive = (run: CliRun) => run.proc.exitCode === null && run.proc.signalCode === null;

/** The end of a run's output, for failure messages. */
export const tail = (text: string, chars = 4000) => (text.length <= chars ? text : '...' + text.slice(-chars));

/**
 * Starts CLI runs (as startCli) that an after() hook of the calling file SIGKILLs if still alive,
 * so a failing test leaves no run behind. after() hooks run in the order they are added: call this
 * before adding the hook that stops the clusters.
 */
export function trackRuns(): (args: string[], env?: Record<string, string>) => CliRun {
  const runs = new Set<CliRun>();
  after(async () => {
    for (const run of runs) if (alive(run)) await run.kill9();
  });
  return (args, env) => {
    const run = startCli(args, env);
    runs.add(run);
    return run;
  };
}

/** The exit code, or 'running' if the process is still up after `ms`. */
export async function exitWithin(run: CliRun, ms: number): Promise<number | null | 'running'> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<'running'>((resolve) => (timer = setTimeout(() => resolve('running'), ms)));
  try {
    return await Promise.race([run.exited, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** SIGINT, then SIGKILL if it has not exited within 20 s; the exit code (null if killed). */
export async function finish(run: CliRun): Promise<number | null> {
  if (!alive(run)) return run.proc.exitCode;
  run.proc.kill('SIGINT');
  const code = await exitWithin(run, 20_000);
  if (code !== 'running') return code;
  await run.kill9();
  return null;
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

export interface WaitOptions {
  /** Adds context to the timeout error (what the UI showed, the last value seen). */
  describe?: () => Promise<string>;
  /** An error from the probe that ends the wait at once instead of being retried. */
  fatal?: (err: unknown) => boolean;
}

/** Polls `probe` until truthy; on timeout throws naming `what`, the last probe error and `describe()`. */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | null | false>, timeoutMs = 60_000, everyMs = 100, opts: WaitOptions = {}): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v;
    } catch (err) {
      if (opts.fatal?.(err)) throw err;
      lastErr = err;
    }
    if (Date.now() > deadline) {
      const extra = opts.describe ? await opts.describe().catch((e) => `(could not describe: ${String(e)})`) : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastErr ? `: ${String(lastErr).split('\n')[0]}` : ''}${extra ? `\n${extra}` : ''}`);
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** Waits for `probe`, failing at once with the run's output if the run exits first. */
export async function whileAlive(run: CliRun, what: string, probe: () => Promise<boolean>, timeoutMs = 60_000, everyMs = 20): Promise<void> {
  await waitFor(what, async () => !alive(run) || (await probe()), timeoutMs, everyMs);
  assert.ok(alive(run), `the run exited (code ${run.proc.exitCode}) while waiting for ${what}:\n${tail(run.output())}`);
}

/** Commits `body(i)` (i from 1) back to back on one connection until stopped; a failing transaction fails the test. */
export function commitLoop(url: string, body: (i: number) => string) {
  let running = true;
  let committed = 0;
  const client = new pg.Client({ connectionString: url });
  const loop = (async () => {
    await client.connect();
    try {
      for (let i = 1; running; i++, committed++) await client.query(body(i));
    } finally {
      await client.end();
    }
  })();
  const more = (n: number, from = committed) => waitFor(`${n} more workload transactions`, async () => committed >= from + n, 60_000, 20);
  return { get committed() { return committed; }, more, async stop() { running = false; await loop; return committed; } };
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

/**
 * Waits until the target has applied everything the source has written so far. Given the `run`
 * doing the applying, fails at once with its output if it exits meanwhile.
 */
export async function waitCaughtUp(pair: Pair, db: string, subscription: string, timeoutMs = 60_000, run?: CliRun): Promise<void> {
  const lsn = (await pair.source.query(db, 'SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0].l as string;
  const what = `the target to apply up to ${lsn}`;
  const applied = async () => {
    const slot = await pair.source.query(db, `SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = $2`, [lsn, `pg_live_sync_${subscription}`]);
    return slot.rows[0]?.ok === true;
  };
  if (run) await whileAlive(run, what, applied, timeoutMs, 100);
  else await waitFor(what, applied, timeoutMs);
}

/**
 * The mixed workload's tables: accounts has a primary key; ledger has none and holds duplicate
 * rows (REPLICA IDENTITY FULL, set on the source by WORKLOAD_SEED).
 */
export const WORKLOAD_SCHEMA = `CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint); CREATE TABLE ledger (account text, amount bigint);`;

/** On the source, before the run: ledger's replica identity, 999 accounts and 5 identical ledger rows. */
export const WORKLOAD_SEED = `ALTER TABLE ledger REPLICA IDENTITY FULL;
  INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 999) g;
  INSERT INTO ledger SELECT 'dup', 0 FROM generate_series(1, 5);`;

/**
 * Transaction i (from 1) of the mixed workload on WORKLOAD_SCHEMA: `rows` new accounts, a balance
 * update on the accounts whose id is i modulo `modulus`, a primary-key change and a delete; in
 * ledger, identical rows inserted, one of them deleted and another row updated. `extra`: more
 * statements for the same transaction.
 */
export function workloadTxn(i: number, o: { rows: number; modulus: number; extra?: string }): string {
  return `BEGIN;
    INSERT INTO accounts (id, balance) SELECT ${i} * 1000 + g, g FROM generate_series(1, ${o.rows}) g;
    UPDATE accounts SET balance = balance + 1 WHERE id % ${o.modulus} = ${i % o.modulus};
    UPDATE accounts SET id = id + 500 WHERE id = ${i} * 1000 + 1;
    DELETE FROM accounts WHERE id = ${i} * 1000 + 2;
    INSERT INTO ledger VALUES ('dup', ${i % 3}), ('dup', ${i % 3}), ('one', ${i});
    DELETE FROM ledger WHERE ctid = (SELECT ctid FROM ledger WHERE account = 'dup' AND amount = ${i % 3} LIMIT 1);
    UPDATE ledger SET amount = amount + 1 WHERE ctid = (SELECT ctid FROM ledger WHERE account = 'one' LIMIT 1);
    ${o.extra ?? ''}
    COMMIT;`;
}

export { pg };
