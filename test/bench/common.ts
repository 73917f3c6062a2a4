/**
 * What the `npm run bench` groups share: the cluster pair, the extra `run` flags, our CLI's peak
 * RSS, and the one result row every case reports.
 */
import { readFileSync } from 'node:fs';
import type { Cluster } from '../harness/cluster';
import { startCli, startPair, type CliRun, type Pair } from '../harness/sync';

/** Table-sync workers on every side: ours (--table-sync-workers), native, and parallel COPY pipes. */
export const WORKERS = Number(process.env.BENCH_WORKERS ?? 4);

/**
 * Extra flags for every `run` of ours (e.g. BENCH_RUN_ARGS='--copy-chunk-size 64MiB'), so a
 * change to the engine is measured without editing the bench.
 */
export const RUN_ARGS = process.env.BENCH_RUN_ARGS?.split(/\s+/).filter(Boolean) ?? [];

/** e.g. BENCH_CLI_NODE_ARGS='--cpu-prof --cpu-prof-dir=/tmp/prof' profiles our side. */
export const CLI_NODE_ARGS = process.env.BENCH_CLI_NODE_ARGS?.split(/\s+/).filter(Boolean) ?? [];

/** The bound on our process, whatever the size of a table or a transaction (lower it to see the bench fail). */
export const RSS_LIMIT_MB = Number(process.env.BENCH_RSS_LIMIT_MB ?? 300);

export interface BenchRow {
  group: 'copy' | 'drain' | 'lag';
  name: string;
  /** Seconds for copy and drain, a lag for lag: lower is better on every side. */
  ours: number;
  native: number;
  /** Seconds of the parallel `psql COPY | psql COPY` pipes; undefined where a pipe means nothing. */
  pipe?: number;
  /** Drain backlogs only: seconds for our stream alone to receive the same changes and discard them (no apply). */
  receiveOnly?: number;
  unit: 's' | 'MiB' | 'ms';
  /** Our CLI's peak resident set, MiB (undefined when the row shares the process of another). */
  peakRssMb?: number;
}

/**
 * A pair whose target can run as many native table-sync workers as we run (PostgreSQL's default
 * is 2 per subscription, and 4 logical replication workers in all, apply workers included).
 */
export async function startBenchPair(): Promise<Pair> {
  const settings = {
    max_sync_workers_per_subscription: WORKERS,
    max_logical_replication_workers: WORKERS + 4,
    max_worker_processes: WORKERS + 12,
    max_wal_size: "'2GB'",
  };
  return startPair(settings);
}

/**
 * Our CLI, with its peak RSS (the kernel's VmHWM) read every 250 ms while it runs and once more
 * just before it is stopped: once it has exited /proc no longer has it.
 */
export function startOurs(args: string[]): CliRun & { peakRssMb(): number } {
  const run = startCli([...args, ...(args[0] === 'run' ? RUN_ARGS : [])], {}, CLI_NODE_ARGS);
  let peakKb = 0;
  const sample = () => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${run.proc.pid}/status`, 'utf8'));
      if (m) peakKb = Math.max(peakKb, Number(m[1]));
    } catch {
      // Gone already: the last sample stands.
    }
  };
  const timer = setInterval(sample, 250);
  run.exited.then(() => clearInterval(timer), () => clearInterval(timer));
  return {
    ...run,
    async stop() {
      sample();
      return run.stop();
    },
    peakRssMb: () => {
      sample();
      return peakKb / 1024;
    },
  };
}

/**
 * Count and an order-independent sum of per-row hashes: unlike string_agg it streams, so a table
 * of any size fits (string_agg stops at 1 GB of text).
 */
export async function fingerprint(cluster: Cluster, db: string, table: string): Promise<string> {
  const r = await cluster.query(db, `SELECT count(*) || '/' || coalesce(sum(hashtextextended(x::text, 0)::numeric), 0) AS f FROM ${table} x`);
  return r.rows[0].f as string;
}

export async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

export const libpqUrl = (url: string) => url.replace('postgres://', 'postgresql://');

function value(v: number | undefined, unit: BenchRow['unit']): string {
  if (v === undefined) return 'n/a';
  return `${v.toFixed(unit === 'ms' ? 0 : 2)} ${unit}`;
}

const ratio = (a: number, b: number | undefined) => (b === undefined ? 'n/a' : b === 0 ? (a === 0 ? '1.00' : 'inf') : (a / b).toFixed(2));

/** One aligned table of every row: ratios are ours / baseline, lower is better, 1.00 = the same. */
export function resultTable(rows: BenchRow[]): string {
  const head = ['case', 'ours', 'native', 'ours/native', 'COPY pipe', 'ours/pipe', 'receive only', 'ours/recv', 'peak RSS'];
  const body = rows.map((r) => [
    `${r.group}: ${r.name}`,
    value(r.ours, r.unit),
    value(r.native, r.unit),
    ratio(r.ours, r.native),
    value(r.pipe, r.unit),
    ratio(r.ours, r.pipe),
    value(r.receiveOnly, r.unit),
    ratio(r.ours, r.receiveOnly),
    r.peakRssMb === undefined ? '' : `${Math.round(r.peakRssMb)} MiB`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((b) => b[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ').trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...body.map(line)].join('\n') + '\n';
}
