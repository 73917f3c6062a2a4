/**
 * One test per defect of pg-logical-replication 2.5.0 listed in ../shared/notes/pg-logical-replication.md:
 * each shows the defect cannot reach the data. Real clusters: `main` (small logical_decoding_work_mem,
 * so big transactions exceed it), a target, and `fragile` (wal_sender_timeout 2s; stopped for good by defect 11).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startCluster, type Cluster } from '../harness/cluster';
import { freshDatabases, sameContents, trackRuns, waitAllReady, waitCaughtUp, waitFor, pg, type CliRun, type Pair } from '../harness/sync';

// Killed after the file if a failing test left them running (they would keep the test process up).
const startCli = trackRuns();
import { formatLsn, parseLsn, type Lsn } from '../../src/engine/lsn';
import { createSlotWithSnapshot } from '../../src/engine/slot';
import { ReplicationStream, tupleValues, type Tuple } from '../../src/engine/stream';

let source: Cluster, fragile: Cluster, target: Cluster;
let main: Pair, weak: Pair;
before(async () => {
  [source, fragile, target] = await Promise.all([
    startCluster({ name: 'defsrc', settings: { logical_decoding_work_mem: "'64kB'" } }),
    startCluster({ name: 'deffragile', settings: { wal_sender_timeout: "'2s'" } }),
    startCluster({ name: 'deftarget' }),
  ]);
  main = { source, target, stop: () => undefined };
  weak = { source: fragile, target, stop: () => undefined };
});
after(() => [source, fragile, target].forEach((c) => c?.stop()));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const runArgs = (s: string, t: string, sub: string) => ['run', '--source', s, '--target', t, '--subscription', sub, '--publication', 'pub'];

/** CLI syncing `schema` (applied to both sides, published as `pub`), caught up and streaming. */
async function syncing(pair: Pair, sub: string, schema: string, setup = ''): Promise<{ db: string; run: CliRun; args: string[] }> {
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, schema);
  await pair.source.query(db, `${setup}; CREATE PUBLICATION pub FOR ALL TABLES`);
  const args = runArgs(sourceUrl, targetUrl, sub);
  const run = startCli(args);
  const tables = (await pair.source.query(db, `SELECT count(*)::int AS n FROM pg_tables WHERE schemaname = 'public'`)).rows[0].n;
  await waitAllReady(pair.target, db, sub, tables, 120_000);
  await waitCaughtUp(pair, db, sub, 120_000);
  return { db, run, args };
}

async function stopOk(run: CliRun): Promise<void> {
  if (run.proc.exitCode !== null) return;
  assert.equal(await run.stop(), 0, run.output());
}

async function confirmedFlush(c: Cluster, slot: string): Promise<Lsn> {
  const r = await c.query('postgres', `SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name = $1`, [slot]);
  return parseLsn(r.rows[0].l);
}

async function slotIdle(c: Cluster, slot: string): Promise<boolean> {
  return (await c.query('postgres', `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, [slot])).rows[0]?.active === false;
}

/** The CLI's target session is inside a transaction that has inserted into `table`. */
async function applying(db: string, table: string): Promise<boolean> {
  // The main apply connection, or the one applying a streamed transaction while it is open.
  const r = await target.query(db, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name IN ('pg_live_sync', 'pg_live_sync_apply_open')
    AND backend_xid IS NOT NULL AND (query LIKE $2 OR query LIKE $3)`, [db, `INSERT INTO "public"."${table}"%`, `COPY "public"."${table}"%`]);
  return r.rows[0].n > 0;
}

/** Reads a raw ReplicationStream like the engine would, answering keepalives but acknowledging nothing. */
function consume(stream: ReplicationStream) {
  const txns: { finalLsn: Lsn; endLsn: Lsn; rows: Tuple[] }[] = [];
  const walEnds: Lsn[] = [];
  const state: { error: unknown } = { error: null };
  let cur: Tuple[] = [];
  let finalLsn = 0n;
  const done = (async () => {
    try {
      for await (const ev of stream.events()) {
        if (ev.kind === 'keepalive') {
          walEnds.push(ev.walEnd);
          if (ev.replyRequested) stream.acknowledge(stream.acknowledged, true);
          continue;
        }
        if (ev.kind !== 'change') continue;
        const c = ev.change;
        if (c.tag === 'begin') [cur, finalLsn] = [[], c.finalLsn];
        else if (c.tag === 'insert') cur.push(tupleValues(c.new));
        else if (c.tag === 'commit') txns.push({ finalLsn, endLsn: c.endLsn, rows: cur });
      }
    } catch (err) {
      state.error = err;
    }
  })();
  return { txns, walEnds, state, done };
}

/** A database with table `marks (label text)` published as `pub`, and a fresh slot on it. */
async function rawSetup(name: string): Promise<{ db: string; url: string; slot: string; start: Lsn }> {
  const { db, sourceUrl } = await freshDatabases(main, name, `CREATE TABLE marks (label text)`);
  await source.query(db, `CREATE PUBLICATION pub FOR TABLE marks`);
  const slot = `pgls_${name}_${process.pid}`;
  const created = await createSlotWithSnapshot({ url: sourceUrl, role: 'source' }, slot);
  await created.exporter.end();
  return { db, url: sourceUrl, slot, start: created.consistentLsn };
}

/** A raw stream on `slot` from `from`, read by consume(). */
async function rawStream(url: string, slot: string, from: Lsn) {
  await waitFor(`slot ${slot} inactive`, () => slotIdle(source, slot));
  const stream = await ReplicationStream.start({ url, role: 'source' }, slot, ['pub'], from);
  const reader = consume(stream);
  return { ...reader, stream, close: async () => { await stream.close(); await reader.done; } };
}

async function dropSlot(slot: string): Promise<void> {
  await waitFor(`slot ${slot} released`, () => slotIdle(source, slot));
  await source.query('postgres', `SELECT pg_drop_replication_slot($1)`, [slot]);
}

describe('pg-logical-replication defects cannot reach the data', () => {
  it('defect 1: acknowledge(lsn) sends lsn + 1 — we confirm exactly the LSN given, and a commit starting there is not skipped', async (t) => {
    const { db, url, slot, start } = await rawSetup('d1');
    const reader = await rawStream(url, slot, start);
    const open = new pg.Client({ connectionString: source.url(db) });
    await open.connect();
    let acked: Lsn;
    try {
      await source.query(db, `INSERT INTO marks VALUES ('A')`);
      await waitFor('A received', async () => reader.txns.length >= 1 || reader.state.error);
      const endA = reader.txns[0].endLsn;
      reader.stream.acknowledge(endA, true);
      await waitFor('confirmed_flush_lsn at the end of A', async () => (await confirmedFlush(source, slot)) >= endA);
      assert.equal(formatLsn(await confirmedFlush(source, slot)), formatLsn(endA), 'the commit end exactly, not + 1');
      // The case that lost data: a keepalive position acknowledged while X is open is where X's commit record starts.
      await open.query(`BEGIN; INSERT INTO marks VALUES ('X')`);
      const inX = parseLsn((await open.query(`SELECT pg_current_wal_insert_lsn()::text AS l`)).rows[0].l);
      await source.query('postgres', `SET synchronous_commit = on; SELECT txid_current()`); // flushes the WAL so far
      acked = await waitFor('a keepalive past X\'s insert', async () => reader.walEnds.find((l) => l >= inX));
      reader.stream.acknowledge(acked, true);
      await waitFor('confirmed_flush_lsn at the keepalive position', async () => (await confirmedFlush(source, slot)) >= acked);
      assert.equal(formatLsn(await confirmedFlush(source, slot)), formatLsn(acked), 'the keepalive position exactly, not + 1');
      assert.equal(reader.state.error, null);
    } finally {
      await reader.close();
    }
    await open.query('COMMIT');
    await open.end();
    const reader2 = await rawStream(url, slot, acked);
    try {
      await waitFor('X received after restart', async () => reader2.txns.length >= 1 || reader2.state.error);
      assert.equal(reader2.state.error, null);
      assert.deepEqual(reader2.txns.map((x) => x.rows.map((r) => r[0]).join()), ['X'], 'A not resent, X not skipped');
      t.diagnostic(`X's commit record starts at ${formatLsn(reader2.txns[0].finalLsn)}, acknowledged ${formatLsn(acked)}`);
    } finally {
      await reader2.close();
    }
    await dropSlot(slot);
  });

  it('defect 2: a timer acknowledges received-but-unapplied data — our timer never moves the flush position', async () => {
    const { db, url, slot, start } = await rawSetup('d2');
    const reader = await rawStream(url, slot, start);
    try {
      await source.query(db, `INSERT INTO marks VALUES ('received, never applied')`);
      await waitFor('commit received', async () => reader.txns.length >= 1 || reader.state.error);
      const end = reader.txns[0].endLsn;
      // The received position is reported as written (so the timer does run) ...
      await waitFor('write_lsn to show the received commit', async () => {
        const r = await source.query('postgres', `SELECT write_lsn::text AS w FROM pg_stat_replication WHERE application_name = 'pg_live_sync_stream' AND write_lsn IS NOT NULL`);
        return r.rows.some((row) => parseLsn(row.w) >= end);
      }, 30_000);
      // ... but never as flushed: wait past the 5 s status interval (a 'nothing happens' check).
      await sleep(6_500);
      assert.equal(reader.state.error, null);
      assert.equal(formatLsn(await confirmedFlush(source, slot)), formatLsn(start), 'flush position still the start LSN');
    } finally {
      await reader.close();
    }
    // The unacknowledged transaction is sent again from the same start.
    const reader2 = await rawStream(url, slot, start);
    try {
      await waitFor('resent', async () => reader2.txns.length >= 1 || reader2.state.error);
      assert.equal(reader2.txns[0]?.rows[0][0], 'received, never applied');
    } finally {
      await reader2.close();
    }
    await dropSlot(slot);
  });

  it('defect 3: auto-ack before the handler finishes (at-most-once) — kill -9 while applying a 300k-row transaction loses nothing', async (t) => {
    const { db, run, args } = await syncing(main, 'd3', `CREATE TABLE big (id int PRIMARY KEY, payload text)`);
    try {
      await source.query(db, `INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 300000) g`);
      await waitFor('target applying the big transaction', () => applying(db, 'big'), 120_000, 20);
    } finally {
      await run.kill9();
    }
    await waitFor('slot released after kill', () => slotIdle(source, 'pg_live_sync_d3'));
    await waitFor('target sessions gone', async () => (await target.query(db, `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND application_name IN ('pg_live_sync', 'pg_live_sync_apply_open')`, [db])).rows[0].n === 0);
    const confirmedAtKill = await confirmedFlush(source, 'pg_live_sync_d3');
    const rowsAtKill = (await target.query(db, `SELECT count(*)::int AS n FROM big`)).rows[0].n;
    assert.ok(rowsAtKill === 0 || rowsAtKill === 300_000, `target transaction is atomic, saw ${rowsAtKill}`);
    const restarted = startCli(args);
    try {
      await waitCaughtUp(main, db, 'd3', 180_000);
      assert.ok(await sameContents(main, db, 'big'), 'contents after kill -9 and restart');
      assert.equal((await target.query(db, `SELECT count(*)::int AS n FROM big`)).rows[0].n, 300_000);
      const applied = parseLsn((await target.query(db, `SELECT applied_lsn::text AS l FROM _pg_live_sync.subscription WHERE subname = 'd3'`)).rows[0].l);
      t.diagnostic(`killed with ${rowsAtKill} rows committed; slot confirmed ${formatLsn(confirmedAtKill)}, big transaction ends ${formatLsn(applied)}`);
      if (rowsAtKill === 0) assert.ok(confirmedAtKill < applied, `slot confirmed ${formatLsn(confirmedAtKill)} before the target committed ${formatLsn(applied)}`);
    } finally {
      await stopOk(restarted);
    }
  });

  it('defect 4: resuming from an in-memory position — SIGINT mid-stream, changes while stopped, all arrive once', async (t) => {
    const { db, run, args } = await syncing(main, 'd4', `CREATE TABLE dup (v int, note text)`, `ALTER TABLE dup REPLICA IDENTITY FULL; INSERT INTO dup SELECT g % 3, 'copied' FROM generate_series(1, 30) g`);
    const producer = new pg.Client({ connectionString: source.url(db) });
    await producer.connect();
    const step = (i: number) => producer.query(`INSERT INTO dup VALUES (${i % 3}, 'same'), (${i % 3}, 'same');
      ${i % 5 === 0 ? `DELETE FROM dup WHERE ctid = (SELECT ctid FROM dup WHERE v = ${i % 3} AND note = 'same' LIMIT 1);` : ''}
      ${i % 7 === 0 ? `UPDATE dup SET note = 'moved' WHERE ctid = (SELECT ctid FROM dup WHERE note = 'copied' LIMIT 1);` : ''}`);
    try {
      for (let i = 0; i < 60; i++) await step(i);
      await waitCaughtUp(main, db, 'd4');
      await producer.query(`INSERT INTO dup SELECT 7, 'bulk' FROM generate_series(1, 50000)`);
      await waitFor('target applying the bulk transaction', () => applying(db, 'dup'), 120_000, 20);
      const stopping = run.stop();
      for (let i = 60; i < 120; i++) await step(i);
      assert.equal(await stopping, 0, run.output());
      t.diagnostic(run.output().split('\n').filter((l) => / stopped at /.test(l)).join());
      for (let i = 120; i < 160; i++) await step(i);
    } finally {
      await producer.end();
    }
    const restarted = startCli(args);
    try {
      await waitCaughtUp(main, db, 'd4', 120_000);
      assert.ok(await sameContents(main, db, 'dup'), 'no transaction missed, none applied twice');
    } finally {
      await stopOk(restarted);
    }
  });

  it('defect 5: keepalives left unanswered — with wal_sender_timeout 2s an idle stream survives on the same connection', async () => {
    const { db, run } = await syncing(weak, 'd5', `CREATE TABLE t (id int PRIMARY KEY, v text)`);
    try {
      const pid = async () => (await fragile.query('postgres', `SELECT pid FROM pg_stat_replication WHERE application_name = 'pg_live_sync_stream'`)).rows.map((r) => r.pid);
      const walsender = await pid();
      assert.equal(walsender.length, 1);
      await sleep(6_000); // idle for three wal_sender_timeouts (a 'connection survives' check)
      await fragile.query(db, `INSERT INTO t VALUES (1, 'after idle')`);
      await waitCaughtUp(weak, db, 'd5', 30_000);
      assert.ok(await sameContents(weak, db, 't'));
      assert.deepEqual(await pid(), walsender, 'same walsender: the connection was never dropped');
      assert.equal(run.proc.exitCode, null, run.output());
      assert.doesNotMatch(run.output(), /terminat/i);
    } finally {
      await stopOk(run);
    }
  });

  it('defect 5 (busy apply): while the target blocks apply for 6 s, nothing reads keepalives — the connection must still survive', async () => {
    const { db, run } = await syncing(weak, 'd5b', `CREATE TABLE t (id int PRIMARY KEY, v text)`);
    const locker = new pg.Client({ connectionString: target.url(db) });
    try {
      const pid = async () => (await fragile.query('postgres', `SELECT pid FROM pg_stat_replication WHERE application_name = 'pg_live_sync_stream'`)).rows.map((r) => r.pid);
      const walsender = await pid();
      await locker.connect();
      await locker.query(`BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE`);
      await fragile.query(db, `INSERT INTO t VALUES (1, 'while blocked')`);
      await waitFor('apply waiting on the lock', async () => (await target.query(db, `SELECT count(*)::int AS n FROM pg_stat_activity
        WHERE datname = $1 AND application_name = 'pg_live_sync' AND wait_event_type = 'Lock'`, [db])).rows[0].n > 0);
      await sleep(6_000); // apply blocked for three wal_sender_timeouts (a 'connection survives' check)
      await locker.query('COMMIT');
      await fragile.query(db, `INSERT INTO t VALUES (2, 'after')`);
      const lsn = (await fragile.query(db, `SELECT pg_current_wal_insert_lsn()::text AS l`)).rows[0].l;
      await waitFor('caught up or stopped', async () => run.proc.exitCode !== null || (await fragile.query(db,
        `SELECT confirmed_flush_lsn >= $1::pg_lsn AS ok FROM pg_replication_slots WHERE slot_name = 'pg_live_sync_d5b'`, [lsn])).rows[0].ok, 60_000);
      assert.equal(run.proc.exitCode, null, `the sync stopped: ${run.output()}`);
      assert.ok(await sameContents(weak, db, 't'));
      assert.deepEqual(await pid(), walsender, 'same walsender: the connection was never dropped');
      assert.doesNotMatch(run.output(), /terminat/i);
    } finally {
      await locker.end().catch(() => undefined);
      await stopOk(run);
    }
  });

  it('defect 6: global type parsers — timestamps, json big integers, numeric and float8 arrive as exact text', async () => {
    const { db, run } = await syncing(main, 'd6', `CREATE TABLE typed (id int PRIMARY KEY, tz timestamptz, ts timestamp, j json, n numeric, f float8)`);
    try {
      await source.query(db, `INSERT INTO typed VALUES
        (1, '2026-03-04 05:06:07.123456+00', '2026-03-04 05:06:07.654321', '{"big": 12345678901234567890}', 0.123456789012345678901234567891, 1.0000000000000002),
        (2, '1999-12-31 23:59:59.999999+05', '1970-01-01 00:00:00.000001', '[18446744073709551616, 1e400]', 123456789012345678901234567890.123456789012345678901234567890, -0.1)`);
      await waitCaughtUp(main, db, 'd6');
      assert.ok(await sameContents(main, db, 'typed'));
      const r = await target.query(db, `SELECT (tz AT TIME ZONE 'UTC')::text AS tz, ts::text, j::text, n::text, f::text FROM typed ORDER BY id`);
      assert.deepEqual(r.rows, [
        { tz: '2026-03-04 05:06:07.123456', ts: '2026-03-04 05:06:07.654321', j: '{"big": 12345678901234567890}', n: '0.123456789012345678901234567891', f: '1.0000000000000002' },
        { tz: '1999-12-31 18:59:59.999999', ts: '1970-01-01 00:00:00.000001', j: '[18446744073709551616, 1e400]', n: '123456789012345678901234567890.123456789012345678901234567890', f: '-0.1' },
      ]);
    } finally {
      await stopOk(run);
    }
  });

  it('defect 7: binary values are views into a reused buffer — 3000 distinct bytea values in one transaction arrive intact', async () => {
    const { db, run } = await syncing(main, 'd7', `CREATE TABLE blobs (id int PRIMARY KEY, b bytea, t text)`);
    try {
      await source.query(db, `INSERT INTO blobs SELECT g, decode(repeat(md5(g::text), 1 + g % 40), 'hex') || '\\x00ff'::bytea, md5((-g)::text) FROM generate_series(1, 3000) g;
        SELECT pg_logical_emit_message(true, 'defect7', decode(repeat('ab', 100), 'hex'))`);
      await waitCaughtUp(main, db, 'd7');
      assert.ok(await sameContents(main, db, 'blobs'));
      assert.equal((await target.query(db, `SELECT count(DISTINCT b)::int AS n FROM blobs`)).rows[0].n, 3000);
    } finally {
      await stopOk(run);
    }
  });

  it('defect 8: in-progress streaming is not parsed — we parse it: a 50k-row transaction over logical_decoding_work_mem 64kB is streamed and arrives whole', async () => {
    const { db, run } = await syncing(main, 'd8', `CREATE TABLE wide (id int PRIMARY KEY, v text)`);
    try {
      await source.query(db, `INSERT INTO wide SELECT g, repeat(md5(g::text), 2) FROM generate_series(1, 50000) g; UPDATE wide SET v = 'u' WHERE id % 10 = 0`);
      await waitCaughtUp(main, db, 'd8', 120_000);
      assert.equal(run.proc.exitCode, null, run.output());
      assert.ok(await sameContents(main, db, 'wide'));
      // It did exceed the work memory, and was streamed while in progress (streamed-transactions.test.ts has the rest).
      await waitFor('slot statistics showing a streamed transaction', async () => {
        const r = await source.query(db, `SELECT stream_txns::int AS stream FROM pg_stat_replication_slots WHERE slot_name = 'pg_live_sync_d8'`);
        return r.rows[0]?.stream > 0;
      }, 30_000);
    } finally {
      await stopOk(run);
    }
  });

  it('defect 9: heartbeat times with the wrong epoch — applied_commit_time is the real source commit time', async () => {
    const { db, run } = await syncing(main, 'd9', `CREATE TABLE t (id int PRIMARY KEY)`);
    try {
      const earlier = (await source.query(db, `SELECT extract(epoch FROM clock_timestamp())::float8 AS s`)).rows[0].s;
      await source.query(db, `INSERT INTO t VALUES (1)`);
      const now = (await source.query(db, `SELECT extract(epoch FROM now())::float8 AS s`)).rows[0].s;
      await waitCaughtUp(main, db, 'd9');
      await waitFor('applied_lsn written', async () => (await target.query(db, `SELECT count(*)::int AS n FROM t`)).rows[0].n === 1);
      const r = await target.query(db, `SELECT extract(epoch FROM applied_commit_time)::float8 AS s FROM _pg_live_sync.subscription WHERE subname = 'd9'`);
      const commit = r.rows[0].s as number;
      assert.ok(Math.abs(commit - now) < 60, `applied_commit_time ${commit} vs source now() ${now}`);
      assert.ok(commit >= earlier - 0.001 && commit <= now + 0.001, `commit time ${commit} within [${earlier}, ${now}]`);
    } finally {
      await stopOk(run);
    }
  });

  it('defect 10: two LSN spellings — parsed to 64-bit integers, compared numerically', () => {
    assert.equal(parseLsn('0/155F488'), parseLsn('00000000/0155F488'));
    assert.equal(parseLsn('0/155F488'), 0x155f488n);
    // Where string comparison gets the order wrong, bigint comparison does not.
    for (const [lo, hi] of [['0/9', '0/10'], ['F/0', '10/0'], ['00000000/0155F000', '0/155F488'], ['9/FFFFFFFF', '0000000A/00000000']]) {
      assert.ok(lo > hi, `as strings ${lo} > ${hi}`);
      assert.ok(parseLsn(lo) < parseLsn(hi), `as LSNs ${lo} < ${hi}`);
    }
    assert.ok(parseLsn('0/FFFFFFFF') < parseLsn('1/0'));
    assert.equal(parseLsn('1/0'), 1n << 32n);
    for (const s of ['0/0', '0/155F488', '1/0', 'FFFFFFFF/FFFFFFFF', '16/B374D848']) assert.equal(formatLsn(parseLsn(s)), s);
    assert.equal(formatLsn(parseLsn('00000000/0155F988')), '0/155F988');
    assert.throws(() => parseLsn('0155F488'));
  });

  it('defect 11: no error listener crashes the process — losing the source is logged and retried, no stack, and SIGINT still exits 0', async () => {
    const { db, run } = await syncing(weak, 'd11', `CREATE TABLE t (id int PRIMARY KEY)`);
    await fragile.query(db, `INSERT INTO t VALUES (1)`);
    await waitCaughtUp(weak, db, 'd11');
    fragile.stop();
    await waitFor('a logged retry', async () => /retry 2 in/.test(run.output()), 60_000);
    assert.equal(run.proc.exitCode, null, `the process must survive the lost source: ${run.output()}`);
    const lines = run.output().split('\n');
    assert.equal(lines.filter((l) => l.startsWith('    at ')).length, 0, run.output());
    assert.equal(lines.filter((l) => l.startsWith('pg-live-sync: error:')).length, 0, run.output());
    const started = Date.now();
    assert.equal(await run.stop(), 0, run.output());
    assert.ok(Date.now() - started < 15_000);
  });
});
