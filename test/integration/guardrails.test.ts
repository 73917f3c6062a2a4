/**
 * Slot guardrails against real PostgreSQL 15 clusters: `status` shows the slot's retained WAL
 * against max_slot_wal_keep_size with the time left at the current write rate, and warns near the
 * limit; `slots` lists every slot of ours with its owning target and the drop SQL for orphans.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { startCluster, type Cluster } from '../harness/cluster';
import { freshDatabases, runCli, tail, trackRuns, waitAllReady, waitCaughtUp, type Pair } from '../harness/sync';

let pair: Pair;
const cli = trackRuns();
before(async () => {
  const [source, target] = await Promise.all([
    startCluster({ name: 'guardsrc', settings: { max_slot_wal_keep_size: "'96MB'", max_wal_size: "'64MB'", min_wal_size: "'32MB'" } }),
    startCluster({ name: 'guardtgt' }),
  ]);
  pair = { source, target, stop: () => { source.stop(); target.stop(); } };
});
after(() => pair?.stop());

/** Writes about `mb` MiB of WAL on the source in a table nobody publishes. */
async function writeWal(source: Cluster, db: string, mb: number): Promise<void> {
  await source.query(db, `CREATE TABLE IF NOT EXISTS ballast (id bigserial, pad text)`);
  for (let i = 0; i < mb; i++) await source.query(db, `INSERT INTO ballast (pad) SELECT repeat('x', 1000) FROM generate_series(1, 900)`);
}

describe('slot guardrails', () => {
  it('status shows retained WAL against max_slot_wal_keep_size, the time left while WAL is written, and warns near the limit', { timeout: 180_000 }, async () => {
    const sub = 'guard_status';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TABLE t (id int PRIMARY KEY)`);
    await pair.source.query(db, `INSERT INTO t VALUES (1); CREATE PUBLICATION pub FOR TABLE t;`);
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub]);
    await waitAllReady(pair.target, db, sub, 1);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    assert.equal(await run.stop(), 0, tail(run.output()));

    const status = () => runCli(['status', '--subscription', sub, '--target', targetUrl, '--source', sourceUrl]);
    const quiet = await status();
    assert.equal(quiet.code, 0, quiet.stderr);
    assert.match(quiet.stdout, /slot +inactive, wal_status reserved, retained WAL .* of max_slot_wal_keep_size 96 MiB: .* more .*before the source invalidates the slot/, quiet.stdout);
    assert.doesNotMatch(quiet.stdout, /warning/, quiet.stdout);

    // While WAL is written, status measures the rate and says how long is left.
    let writing = true;
    const writer = (async () => {
      while (writing) await pair.source.query(db, `CREATE TABLE IF NOT EXISTS ballast (id bigserial, pad text); INSERT INTO ballast (pad) SELECT repeat('x', 1000) FROM generate_series(1, 300)`);
    })();
    const busy = await status();
    writing = false;
    await writer;
    assert.match(busy.stdout, /more \(about [\dhms. ]+ at [\d.]+ [KMG]iB\/s\) before the source invalidates the slot/, busy.stdout);
    const json = JSON.parse((await runCli(['status', '--subscription', sub, '--target', targetUrl, '--source', sourceUrl, '--json'])).stdout);
    assert.equal(json.slot.walKeepBytes, 96 * 1024 * 1024);
    assert.equal(typeof json.slot.safeWalBytes, 'number');

    // Past 80 % of the limit: a warning with the fix.
    const safe = async () => Number((await pair.source.query(db, `SELECT safe_wal_size FROM pg_replication_slots WHERE slot_name = $1`, [`pg_live_sync_${sub}`])).rows[0].safe_wal_size);
    while (await safe() > 0.2 * 96 * 1024 * 1024) await writeWal(pair.source, db, 2);
    const near = await status();
    assert.match(near.stdout, /warning +the source invalidates the slot in .*raise max_slot_wal_keep_size/, near.stdout);
    const dropped = await runCli(['drop', '--subscription', sub, '--source', sourceUrl, '--target', targetUrl]);
    assert.equal(dropped.code, 0, dropped.stderr);
  });

  it('slots lists our slots with their owner, and the drop SQL only for the ones no given target owns', { timeout: 120_000 }, async () => {
    const sub = 'guard_owned';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, `CREATE TABLE t (id int PRIMARY KEY)`);
    await pair.source.query(db, `CREATE PUBLICATION pub FOR TABLE t`);
    for (const slot of ['pg_live_sync_ghost', 'pgls_0123456789ab_sync_42', 'someone_elses']) {
      await pair.source.query(db, `SELECT pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
    }
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub]);
    await waitAllReady(pair.target, db, sub, 1);

    const listed = await runCli(['slots', '--source', sourceUrl, '--target', targetUrl]);
    assert.equal(listed.code, 0, listed.stderr);
    assert.match(listed.stdout, /pg_live_sync_guard_owned +yes .*subscription guard_owned on 127\.0\.0\.1:\d+\//, listed.stdout);
    assert.match(listed.stdout, /pg_live_sync_ghost +no .*none of the targets known/);
    assert.doesNotMatch(listed.stdout, /someone_elses/, 'slots of other tools are not ours to list');
    const drops = listed.stdout.split('\n').filter((l) => l.startsWith('SELECT pg_drop_replication_slot'));
    assert.deepEqual(drops, [
      `SELECT pg_drop_replication_slot('pg_live_sync_ghost');`,
      `SELECT pg_drop_replication_slot('pgls_0123456789ab_sync_42');`,
    ]);
    for (const d of drops) await pair.source.query(db, d);
    const left = await runCli(['slots', '--source', sourceUrl, '--target', targetUrl, '--json']);
    const names = (JSON.parse(left.stdout) as { name: string }[]).map((s) => s.name);
    assert.ok(names.includes('pg_live_sync_guard_owned') && !names.includes('pg_live_sync_ghost'), names.join(', '));
    assert.equal(await run.stop(), 0, tail(run.output()));
    await pair.source.query(db, `SELECT pg_drop_replication_slot('someone_elses')`);
  });
});
