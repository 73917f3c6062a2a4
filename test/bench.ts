/**
 * `npm run bench [-- copy|drain|lag ...]`: our CLI next to baselines run on the same machine in the
 * same run (native logical replication everywhere; for the copy, parallel `psql COPY | psql COPY`
 * binary pipes too), printed as ratios in one table at the end. This machine is shared and noisy:
 * the ratios mean something, the absolute numbers little. Sizes and extra `run` flags come from
 * BENCH_* variables (test/bench/common.ts, copy.ts, drain.ts, lag.ts).
 */
import { serverBinariesMissing } from './harness/cluster';
import { WORKERS, RSS_LIMIT_MB, RUN_ARGS, resultTable, startBenchPair, type BenchRow } from './bench/common';
import { benchCopy, type CopyCase } from './bench/copy';
import { benchDrain, type DrainCase } from './bench/drain';
import { benchLag, pgbenchMissing } from './bench/lag';

const GROUPS = ['copy', 'drain', 'lag'] as const;
type Group = (typeof GROUPS)[number];

function groups(argv: string[]): Group[] {
  if (argv.length === 0) return [...GROUPS];
  const bad = argv.filter((a) => !(GROUPS as readonly string[]).includes(a));
  if (bad.length > 0) throw new Error(`unknown bench group ${bad.join(', ')}; use ${GROUPS.join(', ')} (or none for all)`);
  return GROUPS.filter((g) => argv.includes(g));
}

async function main(): Promise<void> {
  const chosen = groups(process.argv.slice(2));
  const missing = serverBinariesMissing() ?? (chosen.includes('lag') ? pgbenchMissing() : undefined);
  if (missing) throw new Error(missing);
  process.stdout.write(`bench ${chosen.join(', ')}: ${WORKERS} workers on every side${RUN_ARGS.length ? `, run flags ${RUN_ARGS.join(' ')}` : ''}; ratios are ours / baseline (time or lag), lower is better, 1.00 = the same\n`);
  const rows: BenchRow[] = [];
  const pair = await startBenchPair();
  try {
    if (chosen.includes('copy')) for (const k of ['big', 'many', 'toast'] as CopyCase[]) rows.push(await benchCopy(pair, k));
    if (chosen.includes('drain')) for (const k of ['inserts', 'mix', 'big', 'long'] as DrainCase[]) rows.push(...(await benchDrain(pair, k)));
    if (chosen.includes('lag')) rows.push(...(await benchLag(pair)));
  } finally {
    pair.stop();
    if (rows.length > 0) process.stdout.write(`\n${resultTable(rows)}`);
  }
  process.stdout.write('(drain and lag have no COPY-pipe baseline: a pipe copies a snapshot, it does not apply changes)\n');
  const over = rows.filter((r) => (r.peakRssMb ?? 0) > RSS_LIMIT_MB);
  if (over.length > 0) throw new Error(`peak RSS over ${RSS_LIMIT_MB} MiB in: ${over.map((r) => `${r.group}: ${r.name} (${Math.round(r.peakRssMb!)} MiB)`).join('; ')}`);
}

main().catch((err) => {
  process.stderr.write(`bench FAILED: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
