/**
 * One large value costs the CLI a bounded multiple of its size, against real PostgreSQL 15
 * clusters: a row with a 40 MiB text value, or with a 40 MiB bytea value (80 MiB as the hex text
 * pgoutput sends), streamed (INSERT, UPDATE) or copied (its table joining the publication), raises
 * the peak RSS (VmHWM) of a fresh CLI run by under LIMIT times the value's size as it travels,
 * over the peak that run had before (the baseline: connected, copied, streaming small rows).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { finish, freshDatabases, sameContents, sleep, startPair, tail, trackRuns, waitAllReady, waitCaughtUp, type Pair } from '../harness/sync';

const MiB = 1024 * 1024;

let pair: Pair;
const cli = trackRuns();
before(async () => {
  pair = await startPair();
});
after(() => pair?.stop());

const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;

function peakRss(pid: number): number {
  const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** `n` MiB of incompressible hex text (32 characters per md5). */
const hexText = (n: number) => `(SELECT string_agg(md5(g::text || random()::text), '') FROM generate_series(1, ${n * 32768}) g)`;
/** `n` MiB of random bytes (sent as 2n MiB of hex). */
const bytes = (n: number) => `decode(${hexText(2 * n)}, 'hex')`;

const SCHEMA = `CREATE TABLE s (id int PRIMARY KEY, t text, b bytea); CREATE TABLE c (id int PRIMARY KEY, t text, b bytea);`;

interface Case {
  name: string;
  /** The large value's size as it travels (pgoutput's text; bytea as hex). */
  valueBytes: number;
  /** Run on the source once the run streams; `c` is not published yet. */
  sql: string;
  /** Its table joins the publication after `sql`: the value is copied, not streamed. */
  copy: boolean;
  /**
   * Peak RSS over the baseline, per byte of the value. Measured before the fix: INSERT 2.9 (text)
   * and 4.0 (bytea), UPDATE 3.9, copy 0.5 to 0.9 and 0.2; after: 1.8, 1.4, 2.8, 0.4, 0.2. Copying was
   * never the problem (its bound is loose: it varies with the collector).
   */
  limit: number;
}

const CASES: Case[] = [
  { name: 'streamed INSERT of a 40 MiB text value', valueBytes: 40 * MiB, sql: `INSERT INTO s VALUES (1, ${hexText(40)}, NULL)`, copy: false, limit: 2.25 },
  { name: 'streamed UPDATE to a 40 MiB text value', valueBytes: 40 * MiB, sql: `UPDATE s SET t = ${hexText(40)} WHERE id = 10`, copy: false, limit: 3.3 },
  { name: 'streamed INSERT of a 40 MiB bytea value', valueBytes: 80 * MiB, sql: `INSERT INTO s VALUES (2, NULL, ${bytes(40)})`, copy: false, limit: 2.25 },
  { name: 'copy of a 40 MiB text value', valueBytes: 40 * MiB, sql: `INSERT INTO c VALUES (1, ${hexText(40)}, NULL)`, copy: true, limit: 1.5 },
  { name: 'copy of a 40 MiB bytea value', valueBytes: 80 * MiB, sql: `INSERT INTO c VALUES (2, NULL, ${bytes(40)})`, copy: true, limit: 1.5 },
];

/** Peak RSS of a fresh run over its baseline, per byte of the value, for one case. */
async function measure(t: { diagnostic(msg: string): void }, k: Case, n: number): Promise<number> {
  const sub = `large_value_${n}`;
  const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, SCHEMA);
  await pair.source.query(db, `INSERT INTO s SELECT g, 'small ' || g, '\\x00ff' FROM generate_series(10, 1000) g; CREATE PUBLICATION pub FOR TABLE s`);
  const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub]);
  const pid = run.proc.pid!;
  try {
    await waitAllReady(pair.target, db, sub, 1, 120_000);
    // The baseline: connected, copied and streaming ordinary changes.
    for (let i = 0; i < 10; i++) await pair.source.query(db, `UPDATE s SET t = t || 'x' WHERE id % 10 = ${i}`);
    await waitCaughtUp(pair, db, sub, 60_000, run);
    await sleep(500);
    const baseline = peakRss(pid);
    await pair.source.query(db, k.sql);
    if (k.copy) {
      await pair.source.query(db, `ALTER PUBLICATION pub ADD TABLE c`);
      await waitAllReady(pair.target, db, sub, 2, 180_000);
    }
    await waitCaughtUp(pair, db, sub, 180_000, run);
    const peak = peakRss(pid);
    const perByte = (peak - baseline) / k.valueBytes;
    t.diagnostic(`${k.name}: baseline ${mib(baseline)}, peak ${mib(peak)}: ${perByte.toFixed(2)} x the ${mib(k.valueBytes)} value`);
    assert.ok(await sameContents(pair, db, k.copy ? 'c' : 's'), `${k.name}: the target matches the source`);
    assert.equal(await finish(run), 0, tail(run.output()));
    return perByte;
  } finally {
    await finish(run);
  }
}

describe('one large value', () => {
  it('a 40 MiB text or bytea value, streamed or copied, raises peak RSS by a bounded multiple of its size', { timeout: 900_000 }, async (t) => {
    const over: string[] = [];
    let n = 0;
    for (const k of CASES) {
      const perByte = await measure(t, k, ++n);
      if (perByte >= k.limit) over.push(`${k.name}: ${perByte.toFixed(2)} x, over ${k.limit} x`);
    }
    assert.deepEqual(over, [], 'peak RSS over the baseline must stay under the limit times the value\'s size');
  });

  it('large values with backslashes, tabs, newlines, CRs and characters outside the BMP arrive exactly, inserted and updated in pieces', { timeout: 300_000 }, async () => {
    const sub = 'large_exact';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, sub, SCHEMA);
    await pair.source.query(db, `INSERT INTO s SELECT g, 'small ' || g, NULL FROM generate_series(10, 20) g; CREATE PUBLICATION pub FOR TABLE s`);
    const run = cli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'pub', '--subscription', sub]);
    try {
      await waitAllReady(pair.target, db, sub, 1, 120_000);
      // 15 UTF-16 units a repeat after a 3-unit prefix: the first 1 MiB piece ends on a surrogate pair's first half.
      const odd = (n: number) => `'xyz' || repeat(E'a\\\\b\\tc\\nd\\re é \u{1F600} ', ${n})`;
      await pair.source.query(db, `INSERT INTO s VALUES (1, ${odd(200_000)}, decode(repeat('5c090a0d00ff', 300000), 'hex'))`);
      await pair.source.query(db, `UPDATE s SET t = ${odd(150_000)} || E'\\\\', b = NULL WHERE id = 10`);
      await pair.source.query(db, `UPDATE s SET t = ${odd(100_000)} WHERE id = 11; UPDATE s SET t = 'small again' WHERE id = 12`);
      await waitCaughtUp(pair, db, sub, 180_000, run);
      assert.ok(await sameContents(pair, db, 's'), 'the target holds exactly the source\'s values');
      assert.equal(await finish(run), 0, tail(run.output()));
    } finally {
      await finish(run);
    }
  });
});
