/** The spool's file format and cuts, on real files: records of every size come back whole and in order. */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { TransactionSpool } from '../../src/engine/spool';

const base = mkdtempSync(path.join(tmpdir(), 'pgls-spool-unit-'));
after(() => rmSync(base, { recursive: true, force: true }));

/** A message whose bytes say which one it is: type byte, then `n` repeated to `size`. */
const message = (n: number, size: number) => Buffer.alloc(size, n % 251).fill(0x49, 0, 1);

async function readBack(spool: TransactionSpool, xid: number): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for await (const run of spool.commit(xid)) out.push(...run.map((m) => Buffer.from(m)));
  return out;
}

describe('TransactionSpool', () => {
  it('gives back every record in order, from a few bytes to several read chunks, and deletes the file', async () => {
    const spool = await TransactionSpool.create(path.join(base, 'sizes'));
    await spool.startSegment(7, true);
    // Sizes around the 1 MiB write buffer and read chunk, and one record of 3.5 chunks.
    const sizes = [1, 5, 1000, (1 << 20) - 3, 17, (1 << 20) + 9, 3.5 * (1 << 20), 2, ...Array.from({ length: 3000 }, (_, i) => 10 + (i % 700))];
    const sent = sizes.map((size, n) => message(n, size));
    for (const m of sent) await spool.append(7, 7, m);
    await spool.endSegment();
    const got = await readBack(spool, 7);
    assert.equal(got.length, sent.length);
    for (let i = 0; i < sent.length; i++) assert.ok(got[i].equals(sent[i]), `record ${i} (${sizes[i]} bytes)`);
    assert.deepEqual(readdirSync(spool.dir), [], 'the transaction file is gone after commit');
    await spool.close();
    assert.equal(existsSync(spool.dir), false);
  });

  it('ROLLBACK TO a subtransaction cuts it and the subtransactions started after it; ROLLBACK drops all', async () => {
    const spool = await TransactionSpool.create(path.join(base, 'cuts'));
    await spool.startSegment(100, true);
    const sent = (n: number, xid: number) => spool.append(100, xid, message(n, 600_000));
    await sent(1, 100);
    await sent(2, 101); // SAVEPOINT a
    await sent(3, 101);
    await sent(4, 102); // SAVEPOINT b, inside a
    await spool.endSegment();
    await spool.abort(100, 101); // ROLLBACK TO a: 2, 3, 4 go
    await spool.startSegment(100, false);
    await sent(5, 100);
    await sent(6, 103); // SAVEPOINT c
    await spool.abort(100, 999); // a subtransaction that changed nothing
    await spool.endSegment();
    const got = await readBack(spool, 100);
    assert.deepEqual(got.map((m) => m[1]), [1, 5, 6]);

    await spool.startSegment(200, true);
    await spool.append(200, 200, message(9, 10));
    await spool.endSegment();
    await spool.abort(200, 200);
    assert.deepEqual(await readBack(spool, 200), [], 'a rolled-back transaction has nothing to replay');
    await spool.close();
  });

  it('a later segment without its first is refused', async () => {
    const spool = await TransactionSpool.create(path.join(base, 'orphan'));
    await assert.rejects(spool.startSegment(5, false), /without its first/);
    await spool.close();
  });
});
