/**
 * `npm run bench`: our copy and our streaming apply, each timed against a baseline run on the same
 * machine in the same run (a `psql COPY | psql COPY` binary pipe; native CREATE SUBSCRIPTION).
 * Results are ratios: this machine is shared and noisy, absolute numbers mean little.
 */
import { execSync } from 'node:child_process';
import { benchDrain, drainLine, DRAIN_ROWS, type DrainCase } from './bench/drain';
import { serverBinariesMissing } from './harness/cluster';
import { freshDatabases, sameContents, startCli, startPair, waitAllReady, waitCaughtUp, waitFor, type Pair } from './harness/sync';

const ROWS = Number(process.env.BENCH_ROWS ?? 1_000_000);
const STREAM_ROWS = Number(process.env.BENCH_STREAM_ROWS ?? 300_000);
const TABLE = `CREATE TABLE t (id bigint PRIMARY KEY, customer int, amount numeric(12,2), status text, created_at timestamptz, note text)`;
const FILL = (from: number, to: number) =>
  `INSERT INTO t SELECT g, g % 10000, (g % 100000) / 100.0, (ARRAY['new','paid','shipped'])[1 + g % 3], now(), repeat('x', 40) FROM generate_series(${from}, ${to}) g`;

async function timed(fn: () => Promise<void>): Promise<number> {
  const t0 = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

async function benchCopy(pair: Pair): Promise<[number, number]> {
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'bcopy', TABLE);
  await pair.source.query(db, `${FILL(1, ROWS)}; CREATE PUBLICATION pub FOR TABLE t; ANALYZE t;`);
  const baseline = await timed(async () => {
    execSync(`psql -X -q "${sourceUrl}" -c "COPY t TO STDOUT (FORMAT binary)" | psql -X -q "${targetUrl}" -c "BEGIN; COPY t FROM STDIN (FORMAT binary); COMMIT;"`, { stdio: ['ignore', 'ignore', 'inherit'], shell: '/bin/bash' });
  });
  await pair.target.query(db, 'TRUNCATE t');
  let run = startCli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', 'bcopy']);
  const ours = await timed(() => waitAllReady(pair.target, db, 'bcopy', 1, 600_000));
  if (!(await sameContents(pair, db, 't'))) throw new Error('copy bench: contents differ');
  await run.stop();
  run = startCli(['drop', '--subscription', 'bcopy', '--source', sourceUrl, '--target', targetUrl]);
  await run.exited;
  return [baseline, ours];
}

async function benchStream(pair: Pair, shape: 'one transaction' | 'small transactions'): Promise<[number, number]> {
  const change = shape === 'one transaction'
    ? `${FILL(1, STREAM_ROWS)}; UPDATE t SET status = 'done' WHERE id % 2 = 0; DELETE FROM t WHERE id % 5 = 0;`
    : `DO $$ BEGIN FOR i IN 0..${STREAM_ROWS / 100 - 1} LOOP INSERT INTO t SELECT g, g % 10000, 1.5, 'new', now(), 'x' FROM generate_series(i * 100 + 1, i * 100 + 100) g; COMMIT; END LOOP; END $$;`;

  // Native: a subscription on the target, caught up when its slot's confirmed position passes the end of WAL.
  const native = await freshDatabases(pair, 'bnative', TABLE);
  await pair.source.query(native.db, 'CREATE PUBLICATION pub FOR TABLE t');
  await pair.target.query(native.db, `CREATE SUBSCRIPTION sub CONNECTION '${native.sourceUrl.replace('postgres://', 'postgresql://')}' PUBLICATION pub WITH (copy_data = false)`);
  await waitFor('native subscription slot active', async () => (await pair.source.query(native.db, `SELECT active FROM pg_replication_slots WHERE slot_name = 'sub'`)).rows[0]?.active);
  const baseline = await timed(async () => {
    await pair.source.query(native.db, change);
    const lsn = (await pair.source.query(native.db, 'SELECT pg_current_wal_insert_lsn()::text AS l')).rows[0].l;
    await waitFor('native caught up', async () => (await pair.source.query(native.db, `SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'sub'`, [lsn])).rows[0]?.ok, 600_000, 20);
  });
  await pair.target.query(native.db, 'DROP SUBSCRIPTION sub');

  const ours = await freshDatabases(pair, 'bours', TABLE);
  await pair.source.query(ours.db, 'CREATE PUBLICATION pub FOR TABLE t');
  const run = startCli(['run', '--source', ours.sourceUrl, '--target', ours.targetUrl, '--publication', 'pub', '--subscription', 'bours', '--copy-data', 'false']);
  await waitAllReady(pair.target, ours.db, 'bours', 1);
  const mine = await timed(async () => {
    await pair.source.query(ours.db, change);
    await waitCaughtUp(pair, ours.db, 'bours', 600_000);
  });
  if (!(await sameContents(pair, ours.db, 't'))) throw new Error('stream bench: contents differ');
  await run.stop();
  return [baseline, mine];
}

function line(name: string, baselineName: string, [baseline, ours]: [number, number], units: number, unit: string): void {
  process.stdout.write(`${name.padEnd(34)} ours ${ours.toFixed(2).padStart(7)} s (${Math.round(units / ours).toLocaleString('en')} ${unit}/s)   ${baselineName} ${baseline.toFixed(2).padStart(7)} s   ratio ours/baseline ${(ours / baseline).toFixed(2)}\n`);
}

async function main(): Promise<void> {
  const missing = serverBinariesMissing();
  if (missing) throw new Error(missing);
  const pair = await startPair();
  try {
    // `npm run bench -- drain` runs only the drain cases (test/bench/drain.ts has their sizes).
    if (process.argv[2] !== 'drain') {
      process.stdout.write(`rows: copy ${ROWS.toLocaleString('en')}, stream ${STREAM_ROWS.toLocaleString('en')} (lower ratio is better; 1.00 = as fast as the baseline)\n`);
      line('initial copy (incl. slot, checks)', 'psql COPY|COPY', await benchCopy(pair), ROWS, 'rows');
      line('stream, one big transaction', 'native sub', await benchStream(pair, 'one transaction'), STREAM_ROWS * 1.7, 'changes');
      line('stream, 100-row transactions', 'native sub', await benchStream(pair, 'small transactions'), STREAM_ROWS, 'changes');
    }
    process.stdout.write(`drain: ${DRAIN_ROWS.toLocaleString('en')} rows backlog etc. (higher speed is better; 1.00x = as fast as native)\n`);
    for (const kind of ['inserts', 'mix', 'big'] as DrainCase[]) process.stdout.write(drainLine(await benchDrain(pair, kind)));
  } finally {
    pair.stop();
  }
}

main().catch((err) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
