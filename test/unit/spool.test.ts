/** The spool's file format and cuts, on real files: records of every size come back whole and in order. */
import assert from 'node:assert/strict';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
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

/**
 * Another local user (here `nobody`; the tests run as root, and root owns what it creates, so
 * "the user's" is the process's euid) who can write where the spool is must not read its rows,
 * plant rows to be applied, or make a run write or delete through a link.
 */
describe('TransactionSpool against another local user', () => {
  const NOBODY = 65534;
  /** A pid no process has (above any pid_max): a stream of it is gone. */
  const DEAD_PID = 4_194_304 + 7;
  const fresh = (name: string) => {
    const dir = path.join(base, name);
    mkdirSync(dir, { mode: 0o700 });
    return dir;
  };
  /** A folder outside the spool with a file and a folder named like a gone stream's, which must survive. */
  const victim = (name: string) => {
    const dir = fresh(name);
    writeFileSync(path.join(dir, `${DEAD_PID}-1`), 'precious');
    mkdirSync(path.join(dir, `${DEAD_PID}-2`));
    writeFileSync(path.join(dir, `${DEAD_PID}-2`, 'inside'), 'precious');
    return dir;
  };
  const untouched = (dir: string) => {
    assert.equal(readFileSync(path.join(dir, `${DEAD_PID}-1`), 'utf8'), 'precious');
    assert.equal(readFileSync(path.join(dir, `${DEAD_PID}-2`, 'inside'), 'utf8'), 'precious');
  };
  /** The one-line refusal: names the folder and the fix. */
  const refused = (folder: string, why: RegExp) => (err: Error) => {
    assert.doesNotMatch(err.message, /\n/);
    assert.ok(err.message.includes(`spool folder ${folder} `), err.message);
    assert.match(err.message, why);
    assert.match(err.message, /--spool-dir set to a folder of your own with mode 0700/);
    return true;
  };

  it('refuses a base another user made first (open to all, as they would), and writes nothing there', async () => {
    const theirs = fresh('theirs');
    chownSync(theirs, NOBODY, NOBODY);
    chmodSync(theirs, 0o777);
    const slotDir = path.join(theirs, 'slot');
    await assert.rejects(TransactionSpool.create(slotDir), refused(theirs, /belongs to user id 65534, not to you \(user id 0\)/));
    assert.deepEqual(readdirSync(theirs), []);
    // Theirs even at mode 0700: they can still read and change it.
    chmodSync(theirs, 0o700);
    await assert.rejects(TransactionSpool.create(slotDir), refused(theirs, /belongs to user id 65534/));
  });

  it("refuses a slot folder another user made inside the user's base", async () => {
    const mine = fresh('mine-their-slot');
    const slotDir = path.join(mine, 'slot');
    mkdirSync(slotDir, { mode: 0o700 });
    chownSync(slotDir, NOBODY, NOBODY);
    await assert.rejects(TransactionSpool.create(slotDir), refused(slotDir, /belongs to user id 65534/));
  });

  it('refuses a base others may enter, or a shared one, with the fix for each', async () => {
    const open = fresh('open');
    chmodSync(open, 0o755);
    await assert.rejects(TransactionSpool.create(path.join(open, 'slot')), refused(open, new RegExp(`has mode 0755.*chmod 700 ${open}`)));
    const shared = fresh('shared');
    chmodSync(shared, 0o1777);
    await assert.rejects(TransactionSpool.create(path.join(shared, 'slot')), (err: Error) => {
      assert.match(err.message, new RegExp(`spool folder ${shared} is a folder all users share \\(mode 1777\\).*--spool-dir.*mkdir -m 700 ${shared}/pg-live-sync-spool-0`));
      assert.doesNotMatch(err.message, /chmod/, 'never tells to close a shared folder');
      return true;
    });
  });

  it('refuses a symbolic link in place of the base and does not create anything where it points', async () => {
    const target = fresh('link-target');
    const link = path.join(base, 'base-link');
    symlinkSync(target, link);
    await assert.rejects(TransactionSpool.create(path.join(link, 'slot')), refused(link, /is a symbolic link/));
    assert.deepEqual(readdirSync(target), []);
  });

  it('refuses a symbolic link in place of the slot folder and deletes nothing in the folder it points to', async () => {
    const mine = fresh('slot-link');
    const elsewhere = victim('slot-link-victim');
    const slotDir = path.join(mine, 'slot');
    symlinkSync(elsewhere, slotDir);
    await assert.rejects(TransactionSpool.create(slotDir), refused(slotDir, /is a symbolic link/));
    untouched(elsewhere);
  });

  it('the sweep of gone streams removes links themselves, never what they point to', async () => {
    const slotDir = fresh('sweep');
    const a = victim('sweep-victim-a');
    const b = victim('sweep-victim-b');
    symlinkSync(a, path.join(slotDir, `${DEAD_PID}-1`));
    mkdirSync(path.join(slotDir, `${DEAD_PID}-2`));
    symlinkSync(b, path.join(slotDir, `${DEAD_PID}-2`, 'link'));
    symlinkSync(path.join(b, `${DEAD_PID}-1`), path.join(slotDir, `${DEAD_PID}-2`, 'file-link'));
    const spool = await TransactionSpool.create(slotDir);
    assert.deepEqual(readdirSync(slotDir), [path.basename(spool.dir)], "the gone streams' entries are gone");
    untouched(a);
    untouched(b);
    await spool.close();
  });

  it('a link planted at a transaction file is neither written through nor read; folders 0700, files 0600', async () => {
    const spool = await TransactionSpool.create(path.join(fresh('planted-link'), 'slot'));
    const outside = path.join(base, 'outside-file');
    writeFileSync(outside, 'must stay');
    symlinkSync(outside, path.join(spool.dir, '7.spool'));
    await spool.startSegment(7, true);
    const file = path.join(spool.dir, '7.spool');
    assert.ok(lstatSync(file).isFile(), 'a file of its own replaced the link');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(spool.dir).mode & 0o777, 0o700);
    assert.equal(statSync(path.dirname(spool.dir)).mode & 0o777, 0o700);
    const sent = [message(1, 100), message(2, 200)];
    for (const m of sent) await spool.append(7, 7, m);
    await spool.endSegment();
    assert.deepEqual(await readBack(spool, 7), sent);
    assert.equal(readFileSync(outside, 'utf8'), 'must stay');
    await spool.close();
  });

  it('a file put in place of a transaction file while it is open is never replayed', async () => {
    const spool = await TransactionSpool.create(path.join(fresh('planted-file'), 'slot'));
    await spool.startSegment(9, true);
    const sent = [message(1, 100), message(2, 5000)];
    for (const m of sent) await spool.append(9, 9, m);
    await spool.endSegment();
    // Someone's own records, in the spool's format, moved over the path.
    const forged = message(66, 50);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(forged.length);
    const planted = path.join(spool.dir, 'planted');
    writeFileSync(planted, Buffer.concat([len, forged, len, forged]));
    renameSync(planted, path.join(spool.dir, '9.spool'));
    assert.deepEqual(await readBack(spool, 9), sent);
    await spool.close();
  });
});
