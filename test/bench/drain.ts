/**
 * Streaming drain cases of `npm run bench`, against native logical replication on the same WAL
 * shape in the same run:
 *  - inserts: a backlog of 100-row transactions, written while the consumer is stopped, then drained;
 *  - mix: a backlog of pgbench-like transactions (updates by key on three tables, an insert and a
 *    delete on a fourth), drained the same way;
 *  - big: one large insert transaction, timed from its COMMIT to the last row on the target;
 *  - long: the same rows in one transaction that writes them in 100 statements 0.2 s apart (a batch
 *    job, about 25 s here), timed
 *    the same way: what streaming open transactions (spool.ts) is for.
 * Both sides are timed the same way: from the consumer's replication slot turning active (or the
 * live change committing) until a marker row written by the last source transaction is on the
 * target, which in commit order means everything before it is too.
 * For the backlogs, a third column: our replication stream (stream.ts) alone reading the same
 * backlog and discarding it, from its start until the last commit: the walsender and the receiving
 * end with no apply, the ceiling of a consumer of one slot built on this transport.
 *
 * Alone: `npm run build && node --import tsx test/bench/drain.ts [inserts|mix|big]...`, sizes from
 * BENCH_DRAIN_ROWS (inserts, default 1,000,000), BENCH_MIX_TXNS (default 100,000) and
 * BENCH_BIG_ROWS (default 2,000,000); smaller ones make a quick iteration loop. BENCH_RUN_ARGS
 * and BENCH_CLI_NODE_ARGS (test/bench/common.ts) reach our CLI here too.
 */
import { parseLsn } from '../../src/engine/lsn';
import { ReplicationStream } from '../../src/engine/stream';
import { freshDatabases, pg, sameContents, startPair, waitAllReady, waitFor, type Pair } from '../harness/sync';
import { libpqUrl, startOurs, type BenchRow } from './common';

export const DRAIN_ROWS = Number(process.env.BENCH_DRAIN_ROWS ?? 1_000_000);
export const MIX_TXNS = Number(process.env.BENCH_MIX_TXNS ?? 100_000);
export const BIG_ROWS = Number(process.env.BENCH_BIG_ROWS ?? 2_000_000);

export type DrainCase = 'inserts' | 'mix' | 'big' | 'long';

interface Workload {
  schema: string;
  /** Run on both sides before streaming starts (the same rows: the copy is not what is timed). */
  seed: string;
  tables: string[];
  /** The source writes, statement by statement; the last transaction writes the marker. */
  change: string[];
  marker: string;
  changes: number;
  /** Written while the consumer runs (timed from COMMIT) rather than as a backlog. */
  live: boolean;
}

const T = `CREATE TABLE t (id bigint PRIMARY KEY, customer int, amount numeric(12,2), status text, created_at timestamptz, note text)`;

function workload(kind: DrainCase): Workload {
  switch (kind) {
    case 'inserts': {
      const txns = Math.max(1, Math.round(DRAIN_ROWS / 100));
      return {
        schema: T,
        seed: '',
        tables: ['t'],
        change: [`DO $$ BEGIN FOR i IN 0..${txns - 1} LOOP INSERT INTO t SELECT g, g % 10000, (g % 100000) / 100.0, 'new', now(), 'x' FROM generate_series(i * 100 + 1, i * 100 + 100) g; COMMIT; END LOOP; END $$;`,
          `INSERT INTO t VALUES (-1, 0, 0, 'marker', now(), 'marker')`],
        marker: `SELECT 1 FROM t WHERE id = -1`,
        changes: txns * 100 + 1,
        live: false,
      };
    }
    case 'mix':
      // pgbench's tpcb-like transaction, plus a delete so all three operations are in the mix.
      return {
        schema: `CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
          CREATE TABLE tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
          CREATE TABLE branches (bid int PRIMARY KEY, bbalance int, filler char(88));
          CREATE TABLE history (hid bigint PRIMARY KEY, tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));`,
        seed: `INSERT INTO accounts SELECT g, 1 + (g - 1) / 100000, 0, '' FROM generate_series(1, 100000) g;
          INSERT INTO tellers SELECT g, 1, 0, '' FROM generate_series(1, 10) g;
          INSERT INTO branches VALUES (1, 0, '');
          INSERT INTO history SELECT -g, 1, 1, 1, 0, '2024-01-01', '' FROM generate_series(1, 100) g;`,
        tables: ['accounts', 'tellers', 'branches', 'history'],
        change: [`DO $$ DECLARE a int; d int; BEGIN FOR i IN 1..${MIX_TXNS} LOOP
            a := 1 + (i * 7919) % 100000; d := (i % 10001) - 5000;
            UPDATE accounts SET abalance = abalance + d WHERE aid = a;
            UPDATE tellers SET tbalance = tbalance + d WHERE tid = 1 + i % 10;
            UPDATE branches SET bbalance = bbalance + d WHERE bid = 1;
            INSERT INTO history VALUES (i, 1 + i % 10, 1, a, d, now(), '');
            DELETE FROM history WHERE hid = i - 100;
            COMMIT;
          END LOOP; END $$;`,
          `INSERT INTO history VALUES (0, 0, 0, 0, 0, now(), 'marker')`],
        marker: `SELECT 1 FROM history WHERE hid = 0`,
        changes: MIX_TXNS * 5 + 1,
        live: false,
      };
    case 'big':
      return {
        schema: T,
        seed: '',
        tables: ['t'],
        change: [`INSERT INTO t SELECT g, g % 10000, (g % 100000) / 100.0, (ARRAY['new','paid','shipped'])[1 + g % 3], now(), repeat('x', 40) FROM generate_series(1, ${BIG_ROWS}) g;
          INSERT INTO t VALUES (-1, 0, 0, 'marker', now(), 'marker')`],
        marker: `SELECT 1 FROM t WHERE id = -1`,
        changes: BIG_ROWS + 1,
        live: true,
      };
    case 'long': {
      const step = Math.ceil(BIG_ROWS / 100);
      return {
        schema: T,
        seed: '',
        tables: ['t'],
        change: [`DO $$ BEGIN FOR i IN 0..99 LOOP
            INSERT INTO t SELECT g, g % 10000, (g % 100000) / 100.0, (ARRAY['new','paid','shipped'])[1 + g % 3], now(), repeat('x', 40) FROM generate_series(i * ${step} + 1, least(${BIG_ROWS}, (i + 1) * ${step})) g;
            PERFORM pg_sleep(0.2);
          END LOOP; END $$;
          INSERT INTO t VALUES (-1, 0, 0, 'marker', now(), 'marker')`],
        marker: `SELECT 1 FROM t WHERE id = -1`,
        changes: BIG_ROWS + 1,
        live: true,
      };
    }
  }
}

const seconds = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e9;

async function markerArrived(pair: Pair, db: string, w: Workload, what: string, t0: () => bigint | null): Promise<number> {
  // One connection for all the polls: a new one each time would cost both sides CPU (SCRAM, fork).
  const client = new pg.Client({ connectionString: pair.target.url(db) });
  await client.connect();
  try {
    let end = 0;
    await waitFor(what, async () => {
      const start = t0();
      if (start === null) return false;
      const hit = (await client.query(w.marker)).rows.length > 0;
      if (hit) end = seconds(start);
      return hit;
    }, 1_800_000, 10);
    return end;
  } finally {
    await client.end();
  }
}

async function slotIsActive(pair: Pair, db: string, slot: string, active: boolean): Promise<boolean> {
  return (await pair.source.query(db, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, [slot])).rows[0]?.active === active;
}

async function write(pair: Pair, db: string, w: Workload): Promise<void> {
  for (const sql of w.change) await pair.source.query(db, sql);
}

async function prepare(pair: Pair, prefix: string, w: Workload) {
  const d = await freshDatabases(pair, prefix, w.schema);
  if (w.seed) await Promise.all([pair.source.query(d.db, w.seed), pair.target.query(d.db, w.seed)]);
  await pair.source.query(d.db, `CREATE PUBLICATION pub FOR TABLE ${w.tables.join(', ')}`);
  return d;
}

/**
 * Seconds from the consumer starting (or the live change committing) to the marker on the target.
 * `streaming`: the subscription's `streaming = on` (PostgreSQL 15's best for big transactions:
 * the apply worker keeps them in files and applies them at commit), rather than the default off.
 */
async function nativeDrain(pair: Pair, w: Workload, streaming = false): Promise<number> {
  const { db, sourceUrl } = await prepare(pair, streaming ? 'dnatstr' : 'dnative', w);
  await pair.target.query(db, `CREATE SUBSCRIPTION sub CONNECTION '${libpqUrl(sourceUrl)}' PUBLICATION pub WITH (copy_data = false${streaming ? ', streaming = on' : ''})`);
  const slotActive = (active: boolean) => slotIsActive(pair, db, 'sub', active);
  await waitFor('native subscription slot active', () => slotActive(true));
  let t0: bigint | null = null;
  if (w.live) {
    await write(pair, db, w);
    t0 = process.hrtime.bigint();
  } else {
    await pair.target.query(db, 'ALTER SUBSCRIPTION sub DISABLE');
    await waitFor('native subscription slot inactive', () => slotActive(false));
    await write(pair, db, w);
    await pair.target.query(db, 'ALTER SUBSCRIPTION sub ENABLE');
    await waitFor('native subscription slot active again', () => slotActive(true), 60_000, 5);
    t0 = process.hrtime.bigint();
  }
  const s = await markerArrived(pair, db, w, 'native to apply the marker', () => t0);
  await pair.target.query(db, 'DROP SUBSCRIPTION sub');
  return s;
}

/** Seconds for our stream alone to receive and discard the backlog (backlogs only). */
async function receiveOnlyDrain(pair: Pair, w: Workload): Promise<number> {
  const { db, sourceUrl } = await prepare(pair, 'drecv', w);
  const from = parseLsn((await pair.source.query(db, `SELECT lsn::text AS l FROM pg_create_logical_replication_slot('recv_only', 'pgoutput')`)).rows[0].l);
  try {
    await write(pair, db, w);
    const end = parseLsn((await pair.source.query(db, `SELECT pg_current_wal_lsn()::text AS l`)).rows[0].l);
    const stream = await ReplicationStream.start({ url: sourceUrl, role: 'source' }, 'recv_only', ['pub'], from);
    // From START_REPLICATION, as the others from their slot turning active.
    const t0 = process.hrtime.bigint();
    try {
      let last = from;
      for await (const batch of stream.eventBatches()) {
        for (const ev of batch) {
          if (ev.kind === 'keepalive' && ev.replyRequested) stream.acknowledge(last, true);
          else if (ev.kind === 'change' && ev.change.tag === 'commit') last = ev.change.endLsn;
        }
        if (last >= end) break;
      }
      return seconds(t0);
    } finally {
      await stream.close();
    }
  } finally {
    await waitFor('receive-only slot released', () => slotIsActive(pair, db, 'recv_only', false));
    await pair.source.query(db, `SELECT pg_drop_replication_slot('recv_only')`);
  }
}

/** Seconds as nativeDrain, and our CLI's peak RSS in MiB over both of its processes. */
async function oursDrain(pair: Pair, w: Workload): Promise<[number, number]> {
  const { db, sourceUrl, targetUrl } = await prepare(pair, 'dours', w);
  const conn = ['--source', sourceUrl, '--target', targetUrl];
  const args = ['run', ...conn, '--publication', 'pub', '--subscription', 'dours', '--copy-data', 'false'];
  let run = startOurs(args);
  let rss = 0;
  await waitAllReady(pair.target, db, 'dours', w.tables.length);
  let t0: bigint | null = null;
  if (w.live) {
    await write(pair, db, w);
    t0 = process.hrtime.bigint();
  } else {
    rss = run.peakRssMb();
    await run.stop();
    await write(pair, db, w);
    run = startOurs(args);
    await waitFor('our slot active again', () => slotIsActive(pair, db, 'pg_live_sync_dours', true), 60_000, 5);
    t0 = process.hrtime.bigint();
  }
  const s = await markerArrived(pair, db, w, 'our CLI to apply the marker', () => t0);
  rss = Math.max(rss, run.peakRssMb());
  for (const t of w.tables) if (!(await sameContents(pair, db, t))) throw new Error(`drain bench: ${t} differs`);
  await run.stop();
  // The slot would otherwise hold this case's WAL on the source for the rest of the run.
  await startOurs(['drop', '--subscription', 'dours', ...conn]).exited;
  return [s, rss];
}

/**
 * One row per case; a big transaction gets a second, against native with `streaming = on` (the
 * same `ours`), since a user moving big transactions would turn that on.
 */
export async function benchDrain(pair: Pair, kind: DrainCase): Promise<BenchRow[]> {
  const w = workload(kind);
  const native = await nativeDrain(pair, w);
  const nativeStreaming = w.live ? await nativeDrain(pair, w, true) : undefined;
  const [ours, rss] = await oursDrain(pair, w);
  const receiveOnly = w.live ? undefined : await receiveOnlyDrain(pair, w);
  const rate = (s: number) => Math.round(w.changes / s).toLocaleString('en');
  const receiveText = receiveOnly === undefined ? '' : `, receive only ${receiveOnly.toFixed(2)} s (${rate(receiveOnly)}/s)`;
  const streamingText = nativeStreaming === undefined ? '' : `, native streaming=on ${nativeStreaming.toFixed(2)} s (${(nativeStreaming / ours).toFixed(2)}x)`;
  process.stdout.write(`${LABEL[kind]}: ours ${ours.toFixed(2)} s (${rate(ours)} changes/s), native ${native.toFixed(2)} s (${rate(native)}/s)${receiveText}, speed ours/native ${(native / ours).toFixed(2)}x${streamingText}, peak RSS ${Math.round(rss)} MiB\n`);
  const rows: BenchRow[] = [{ group: 'drain', name: LABEL[kind], ours, native, receiveOnly, unit: 's', peakRssMb: rss }];
  if (nativeStreaming !== undefined) rows.push({ group: 'drain', name: `${LABEL[kind]}, native streaming = on`, ours, native: nativeStreaming, unit: 's' });
  return rows;
}

const LABEL: Record<DrainCase, string> = {
  inserts: `${DRAIN_ROWS.toLocaleString('en')} rows in 100-row txns`,
  mix: `${MIX_TXNS.toLocaleString('en')} pgbench-like txns`,
  big: `one ${BIG_ROWS.toLocaleString('en')}-row txn, commit->applied`,
  long: `one ${BIG_ROWS.toLocaleString('en')}-row txn written in 100 steps 0.2 s apart, commit->applied`,
};

if (require.main === module) {
  const kinds = (process.argv.slice(2).length > 0 ? process.argv.slice(2) : ['inserts', 'mix', 'big', 'long']) as DrainCase[];
  (async () => {
    const pair = await startPair();
    try {
      for (const k of kinds) await benchDrain(pair, k);
    } finally {
      pair.stop();
    }
  })().catch((err) => {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
