/**
 * Lag under live load, the `lag` group of `npm run bench`: `pgbench -c BENCH_LAG_CLIENTS` (default
 * 4) for BENCH_LAG_SECONDS (default 60) on a scale-BENCH_LAG_SCALE (default 10) pgbench database,
 * replicated at the same time by a native subscription and by our CLI, each into its own target
 * database (both seeded by the same `pgbench -i`, so neither copies).
 *
 * Both consumers run on the same load at the same time rather than one after the other: they then
 * decode the very same WAL, under the same moment's noise from the other work on this shared
 * machine, and each sample reads both slots in one query; they compete for the same CPUs, but
 * evenly.
 *
 * Every 250 ms: lag in bytes, source pg_current_wal_lsn() minus the slot's confirmed_flush_lsn;
 * and in time, pg_stat_replication.flush_lag of the slot's walsender (the time since the source
 * flushed the WAL the consumer last confirmed; null, counted as 0, when it has caught up).
 *
 * pgbench comes with the PostgreSQL server package (Debian: postgresql-15, not the client
 * package), in /usr/lib/postgresql/15/bin.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { PG_BIN } from '../harness/cluster';
import { waitAllReady, waitFor, type Pair } from '../harness/sync';
import { fingerprint, libpqUrl, startOurs, type BenchRow } from './common';

export const LAG_SECONDS = Number(process.env.BENCH_LAG_SECONDS ?? 60);
export const LAG_SCALE = Number(process.env.BENCH_LAG_SCALE ?? 10);
export const LAG_CLIENTS = Number(process.env.BENCH_LAG_CLIENTS ?? 4);
const SAMPLE_MS = 250;
const TABLES = ['pgbench_accounts', 'pgbench_branches', 'pgbench_tellers', 'pgbench_history'];
const PGBENCH = path.join(PG_BIN, 'pgbench');

export function pgbenchMissing(): string | undefined {
  if (existsSync(PGBENCH)) return undefined;
  return `pgbench is missing (no ${PGBENCH}); install it (Debian/Ubuntu: sudo apt-get install -y postgresql-15) or set PG_BIN`;
}

function pgbenchInit(url: string): void {
  const r = spawnSync(PGBENCH, ['-i', '-q', '-s', String(LAG_SCALE), url], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`pgbench -i failed: ${r.stderr.trim().split('\n').pop()}`);
}

/** The pgbench run, resolving with its tps line. */
function pgbenchRun(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(PGBENCH, ['-n', '-c', String(LAG_CLIENTS), '-j', String(Math.min(LAG_CLIENTS, 2)), '-T', String(LAG_SECONDS), url], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve(/tps = [\d.]+/.exec(out)?.[0] ?? '') : reject(new Error(`pgbench exited ${code}: ${out.trim().split('\n').slice(-3).join(' ')}`))));
  });
}

interface Sample {
  bytes: number;
  ms: number;
}

const percentile = (xs: number[], p: number) => {
  if (xs.length === 0) return 0;
  const sorted = [...xs].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
};

export async function benchLag(pair: Pair): Promise<BenchRow[]> {
  const missing = pgbenchMissing();
  if (missing) throw new Error(missing);
  const base = `bl_${process.pid}`;
  const [src, viaNative, viaOurs] = [base, `${base}_native`, `${base}_ours`];
  await pair.source.createDatabase(src);
  for (const db of [viaNative, viaOurs]) await pair.target.createDatabase(db);
  pgbenchInit(pair.source.url(src));
  pgbenchInit(pair.target.url(viaNative));
  pgbenchInit(pair.target.url(viaOurs));
  // pgbench_history has no key; it only takes inserts, but a publication of all changes needs one.
  await pair.source.query(src, `ALTER TABLE pgbench_history REPLICA IDENTITY FULL; CREATE PUBLICATION pub FOR ALL TABLES`);

  const nativeSlot = 'bl_native';
  const oursSub = 'bl_ours';
  const oursSlot = `pg_live_sync_${oursSub}`;
  const slots = [nativeSlot, oursSlot];
  await pair.target.query(viaNative, `CREATE SUBSCRIPTION ${nativeSlot} CONNECTION '${libpqUrl(pair.source.url(src))}' PUBLICATION pub WITH (copy_data = false)`);
  const conn = ['--source', pair.source.url(src), '--target', pair.target.url(viaOurs)];
  const run = startOurs(['run', ...conn, '--publication', 'pub', '--subscription', oursSub, '--copy-data', 'false']);
  await waitAllReady(pair.target, viaOurs, oursSub, TABLES.length, 120_000);

  const client = new pg.Client({ connectionString: pair.source.url(src) });
  await client.connect();
  const sampleSql = `SELECT s.slot_name, s.active, (pg_current_wal_lsn() - s.confirmed_flush_lsn)::float8 AS bytes,
      coalesce(extract(epoch FROM r.flush_lag) * 1000, 0)::float8 AS ms
    FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = ANY($1)`;
  const sample = async () => new Map((await client.query(sampleSql, [slots])).rows.map((r) => [r.slot_name as string, r as { active: boolean; bytes: number; ms: number }]));
  try {
    await waitFor('both slots active', async () => {
      const s = await sample();
      return slots.every((n) => s.get(n)?.active);
    }, 60_000, 50);

    const samples = new Map<string, Sample[]>(slots.map((n) => [n, []]));
    let loadDone = false;
    const load = pgbenchRun(pair.source.url(src)).finally(() => (loadDone = true));
    // The period is what is measured here, so this loop waits out the rest of it after each sample.
    while (!loadDone) {
      const t0 = Date.now();
      const s = await sample();
      for (const n of slots) {
        const row = s.get(n);
        if (!row?.active) throw new Error(`lag bench: slot ${n} is no longer in use${n === oursSlot ? `:\n${run.output().slice(-2000)}` : ''}`);
        samples.get(n)!.push({ bytes: row.bytes, ms: row.ms });
      }
      await new Promise((r) => setTimeout(r, Math.max(0, SAMPLE_MS - (Date.now() - t0))));
    }
    const tps = await load;

    const end = (await client.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l as string;
    await waitFor('both consumers to catch up after the load', async () =>
      (await client.query(`SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = ANY($1) AND confirmed_flush_lsn >= $2::pg_lsn`, [slots, end])).rows[0].n === slots.length, 600_000, 50);
    for (const [db, who] of [[viaNative, 'native'], [viaOurs, 'ours']]) {
      for (const t of TABLES) {
        const [a, b] = await Promise.all([fingerprint(pair.source, src, t), fingerprint(pair.target, db, t)]);
        if (a !== b) throw new Error(`lag bench (${who}): ${t} differs from the source`);
      }
    }
    const rss = run.peakRssMb();

    const stat = (slot: string, key: keyof Sample, p: number) => {
      const xs = samples.get(slot)!.map((x) => x[key]);
      return p === 100 ? Math.max(0, ...xs) : percentile(xs, p);
    };
    const mib = 1024 * 1024;
    process.stdout.write(`lag under pgbench -c ${LAG_CLIENTS}, scale ${LAG_SCALE}, ${LAG_SECONDS} s (${tps}), ${samples.get(nativeSlot)!.length} samples each, peak RSS ${Math.round(rss)} MiB\n`);
    const label = `pgbench -c${LAG_CLIENTS} ${LAG_SECONDS}s`;
    return [
      { group: 'lag', name: `${label}, max bytes`, ours: stat(oursSlot, 'bytes', 100) / mib, native: stat(nativeSlot, 'bytes', 100) / mib, unit: 'MiB', peakRssMb: rss },
      { group: 'lag', name: `${label}, p95 bytes`, ours: stat(oursSlot, 'bytes', 95) / mib, native: stat(nativeSlot, 'bytes', 95) / mib, unit: 'MiB' },
      { group: 'lag', name: `${label}, max flush_lag`, ours: stat(oursSlot, 'ms', 100), native: stat(nativeSlot, 'ms', 100), unit: 'ms' },
      { group: 'lag', name: `${label}, p95 flush_lag`, ours: stat(oursSlot, 'ms', 95), native: stat(nativeSlot, 'ms', 95), unit: 'ms' },
    ];
  } finally {
    await client.end();
    await run.stop();
    await startOurs(['drop', '--subscription', oursSub, ...conn]).exited;
    await pair.target.query(viaNative, `DROP SUBSCRIPTION ${nativeSlot}`);
  }
}
