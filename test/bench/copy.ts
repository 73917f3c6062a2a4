/**
 * Initial copy cases of `npm run bench`, each against two baselines in the same run, all three
 * reading the same source database into their own target database:
 *  - native: CREATE SUBSCRIPTION ... WITH (copy_data = true), timed until every table is `r` in
 *    pg_subscription_rel, with max_sync_workers_per_subscription = our worker count;
 *  - pipe: `psql COPY ... TO STDOUT (FORMAT binary) | psql COPY ... FROM STDIN (FORMAT binary)`,
 *    one pipe per table, as many at once as we run workers (a floor: no slot, no snapshot, no state).
 * Ours is timed from starting `run` (checks, slot, snapshot, copy, state) until every table is `r`.
 *
 * Cases: one big table (BENCH_ROWS rows of ~110 bytes, default 2,500,000, about 300 MiB), many
 * small tables (BENCH_SMALL_TABLES, default 200, of BENCH_SMALL_ROWS rows, default 2,000) and a
 * TOAST-heavy table (BENCH_TOAST_ROWS, default 20,000: text, bytea and jsonb of kilobytes each,
 * half compressible, half random).
 */
import { spawn } from 'node:child_process';
import pg from 'pg';
import type { Cluster } from '../harness/cluster';
import { waitFor, type Pair } from '../harness/sync';
import { fingerprint, libpqUrl, startOurs, timed, WORKERS, type BenchRow } from './common';

export const BIG_ROWS = Number(process.env.BENCH_ROWS ?? 2_500_000);
export const SMALL_TABLES = Number(process.env.BENCH_SMALL_TABLES ?? 200);
export const SMALL_ROWS = Number(process.env.BENCH_SMALL_ROWS ?? 2_000);
export const TOAST_ROWS = Number(process.env.BENCH_TOAST_ROWS ?? 20_000);

export type CopyCase = 'big' | 'many' | 'toast';

interface CopyWorkload {
  label: string;
  tables: string[];
  schema: string;
  fill: string;
}

const ROW_TABLE = (name: string) => `CREATE TABLE ${name} (id bigint PRIMARY KEY, customer int, amount numeric(12,2), status text, created_at timestamptz, note text)`;
const ROW_FILL = (name: string, rows: number) =>
  `INSERT INTO ${name} SELECT g, g % 10000, (g % 100000) / 100.0, (ARRAY['new','paid','shipped'])[1 + g % 3], now(), repeat('x', 40) FROM generate_series(1, ${rows}) g`;
/** `bytes` random bytes as hex; the reference to g makes it a fresh value per row. */
const RANDOM_HEX = (bytes: number) => `(SELECT string_agg(md5(random()::text || g || '.' || r), '') FROM generate_series(1, ${Math.ceil(bytes / 16)}) r)`;

function workload(kind: CopyCase): CopyWorkload {
  switch (kind) {
    case 'big':
      return { label: `one table, ${BIG_ROWS.toLocaleString('en')} rows`, tables: ['t'], schema: ROW_TABLE('t'), fill: `${ROW_FILL('t', BIG_ROWS)}; ANALYZE t` };
    case 'many': {
      const tables = Array.from({ length: SMALL_TABLES }, (_, i) => `s_${String(i + 1).padStart(3, '0')}`);
      return {
        label: `${SMALL_TABLES} tables of ${SMALL_ROWS.toLocaleString('en')} rows`,
        tables,
        schema: tables.map((t) => ROW_TABLE(t)).join(';\n'),
        fill: `${tables.map((t) => ROW_FILL(t, SMALL_ROWS)).join(';\n')}; ANALYZE`,
      };
    }
    case 'toast':
      // Even rows: long repetitive text and jsonb, which pglz compresses; odd rows: random text and
      // bytea, which it cannot, so they go out of line at full size.
      return {
        label: `TOAST, ${TOAST_ROWS.toLocaleString('en')} rows of ~10 KB`,
        tables: ['docs'],
        schema: `CREATE TABLE docs (id bigint PRIMARY KEY, body text, blob bytea, meta jsonb)`,
        fill: `INSERT INTO docs SELECT g,
            CASE WHEN g % 2 = 0 THEN repeat('lorem ipsum dolor sit amet ', 400 + g % 300) ELSE ${RANDOM_HEX(4096)} END,
            CASE WHEN g % 3 = 0 THEN NULL ELSE decode(${RANDOM_HEX(3072)}, 'hex') END,
            jsonb_build_object('id', g, 'tags', (SELECT jsonb_agg(jsonb_build_object('k', i, 'v', 'value ' || (i * g) % 97)) FROM generate_series(1, 150) i))
          FROM generate_series(1, ${TOAST_ROWS}) g; ANALYZE docs`,
      };
  }
}

async function checkSame(pair: Pair, sourceDb: string, targetDb: string, tables: string[], expected: Map<string, string>, who: string): Promise<void> {
  for (const t of tables) {
    if (!expected.has(t)) expected.set(t, await fingerprint(pair.source, sourceDb, t));
    const got = await fingerprint(pair.target, targetDb, t);
    if (got !== expected.get(t)) throw new Error(`copy bench (${who}): ${t} differs from the source (${got} vs ${expected.get(t)})`);
  }
}

/** Polls `sql` (a count) on one connection until it reaches `count`. */
async function waitCount(cluster: Cluster, db: string, what: string, sql: string, params: unknown[], count: number, alive: () => boolean = () => true): Promise<void> {
  const client = new pg.Client({ connectionString: cluster.url(db) });
  await client.connect();
  try {
    await waitFor(what, async () => {
      if (!alive()) throw new Error(`${what}: the process exited`);
      try {
        return Number((await client.query(sql, params)).rows[0].n) >= count;
      } catch (err) {
        // Our state schema does not exist until the run has checked both sides.
        if ((err as { code?: string }).code === '42P01') return false;
        throw err;
      }
    }, 3_600_000, 50, { fatal: (err) => String(err).includes('the process exited') });
  } finally {
    await client.end();
  }
}

function pipeOne(sourceUrl: string, targetUrl: string, table: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const p = spawn('/bin/bash', ['-c', 'set -o pipefail; psql -X -q -v ON_ERROR_STOP=1 "$1" -c "COPY $3 TO STDOUT (FORMAT binary)" | psql -X -q -v ON_ERROR_STOP=1 "$2" -c "COPY $3 FROM STDIN (FORMAT binary)"', 'pipe', sourceUrl, targetUrl, table], { stdio: ['ignore', 'ignore', 'inherit'] });
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`COPY pipe of ${table} exited ${code}`))));
  });
}

/** Seconds for the tables through WORKERS pipes at once, each taking the next table as it ends. */
async function pipes(sourceUrl: string, targetUrl: string, tables: string[]): Promise<number> {
  return timed(async () => {
    const queue = [...tables];
    const worker = async () => {
      for (let t = queue.shift(); t !== undefined; t = queue.shift()) await pipeOne(sourceUrl, targetUrl, t);
    };
    await Promise.all(Array.from({ length: Math.min(WORKERS, tables.length) }, worker));
  });
}

async function native(pair: Pair, sourceDb: string, targetDb: string, tables: string[], sub: string): Promise<number> {
  const s = await timed(async () => {
    await pair.target.query(targetDb, `CREATE SUBSCRIPTION ${sub} CONNECTION '${libpqUrl(pair.source.url(sourceDb))}' PUBLICATION pub WITH (copy_data = true)`);
    await waitCount(pair.target, targetDb, 'native: every table r', `SELECT count(*) AS n FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1 AND r.srsubstate = 'r'`, [sub], tables.length);
  });
  await pair.target.query(targetDb, `DROP SUBSCRIPTION ${sub}`);
  return s;
}

async function ours(pair: Pair, sourceDb: string, targetDb: string, tables: string[], sub: string): Promise<[number, number]> {
  const conn = ['--source', pair.source.url(sourceDb), '--target', pair.target.url(targetDb)];
  let run: ReturnType<typeof startOurs> | undefined;
  const s = await timed(async () => {
    run = startOurs(['run', ...conn, '--publication', 'pub', '--subscription', sub, '--table-sync-workers', String(WORKERS)]);
    const r = run;
    await waitCount(pair.target, targetDb, 'ours: every table r', `SELECT count(*) AS n FROM _pg_live_sync.subscription_rel WHERE subname = $1 AND state = 'r'`, [sub], tables.length,
      () => r.proc.exitCode === null && r.proc.signalCode === null);
  }).catch((err) => {
    throw new Error(`${err instanceof Error ? err.message : String(err)}\n${run?.output().slice(-2000) ?? ''}`);
  });
  const rss = run!.peakRssMb();
  await run!.stop();
  if (process.env.BENCH_SHOW_LOG) process.stderr.write(run!.output());
  const drop = startOurs(['drop', '--subscription', sub, ...conn]);
  await drop.exited;
  return [s, rss];
}

export async function benchCopy(pair: Pair, kind: CopyCase): Promise<BenchRow> {
  const w = workload(kind);
  const base = `bc_${kind}_${process.pid}`;
  const [src, viaPipe, viaNative, viaOurs] = [base, `${base}_pipe`, `${base}_native`, `${base}_ours`];
  await pair.source.createDatabase(src);
  await pair.source.query(src, `${w.schema}; ${w.fill}; CREATE PUBLICATION pub FOR ALL TABLES`);
  for (const db of [viaPipe, viaNative, viaOurs]) {
    await pair.target.createDatabase(db);
    await pair.target.query(db, w.schema);
  }
  const size = (await pair.source.query(src, `SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) AS s FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'`)).rows[0].s;
  process.stdout.write(`copy ${w.label}: ${size} on disk\n`);
  const expected = new Map<string, string>();

  const checkpoint = () => Promise.all([pair.source.query('postgres', 'CHECKPOINT'), pair.target.query('postgres', 'CHECKPOINT')]);
  // A checkpoint before each side, so none pays for the dirty pages of the one before.
  await checkpoint();
  const pipe = await pipes(pair.source.url(src), pair.target.url(viaPipe), w.tables);
  await checkSame(pair, src, viaPipe, w.tables, expected, 'pipe');
  await checkpoint();
  const nat = await native(pair, src, viaNative, w.tables, `bn_${kind}`);
  await checkSame(pair, src, viaNative, w.tables, expected, 'native');
  await checkpoint();
  const [mine, rss] = await ours(pair, src, viaOurs, w.tables, `bo_${kind}`);
  await checkSame(pair, src, viaOurs, w.tables, expected, 'ours');

  // The next case starts with neither side holding this one's data in cache or on disk.
  for (const db of [viaPipe, viaNative, viaOurs]) await pair.target.query('postgres', `DROP DATABASE ${db}`);
  await pair.source.query('postgres', `DROP DATABASE ${src}`);
  const row: BenchRow = { group: 'copy', name: w.label, ours: mine, native: nat, pipe, unit: 's', peakRssMb: rss };
  process.stdout.write(`  ours ${mine.toFixed(2)} s, native ${nat.toFixed(2)} s, pipe ${pipe.toFixed(2)} s (${WORKERS} at once), peak RSS ${Math.round(rss)} MiB\n`);
  return row;
}
