/**
 * Stage 3, part: transactions the source streams while they are still open (pgoutput protocol 2,
 * `streaming 'on'`), kept in one local file per top-level transaction until their Stream Commit.
 *
 * Without streaming the walsender holds a transaction bigger than logical_decoding_work_mem on its
 * own disk and sends all of it only after COMMIT, so a 2M-row transaction reached the target half
 * a minute after its commit (README "Performance"). Streamed, its changes arrive while it runs and
 * wait here; at Stream Commit they are replayed from local disk at apply speed, as one ordinary
 * transaction in commit order, so everything after stream.ts is unchanged. This is PostgreSQL's own
 * `streaming = on`. Memory stays bounded: writes go out every WRITE_BUFFER_BYTES and replay reads
 * the file in chunks, as fast as the applier takes them.
 *
 * Records are a uint32 length, then the pgoutput message as protocol 1 has it (the in-stream xid
 * taken out), so replay decodes them exactly as live messages.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describeEndpoint } from './connection';
import { SyncError } from './errors';

const WRITE_BUFFER_BYTES = 1 << 20;
const READ_CHUNK_BYTES = 1 << 20;

/**
 * Where streams on `slot` of `sourceUrl` keep their open transactions: a folder of its own under
 * `base` (--spool-dir, else PG_LIVE_SYNC_SPOOL_DIR, else the system's temp folder), in which each
 * stream has its own (TransactionSpool.create).
 */
export function spoolDirFor(sourceUrl: string, slot: string, base?: string): string {
  // Slot names are unique per source cluster only; the address (never the password) tells clusters apart.
  const id = createHash('sha256').update(`${describeEndpoint(sourceUrl)}\n${slot}`).digest('hex').slice(0, 16);
  return path.join(base ?? process.env.PG_LIVE_SYNC_SPOOL_DIR ?? path.join(tmpdir(), 'pg-live-sync-spool'), id);
}

interface OpenTransaction {
  file: string;
  handle: FileHandle;
  /** Bytes already in the file. */
  written: number;
  pending: Buffer[];
  pendingBytes: number;
  /** Each subtransaction's first record, in the order they started: where a ROLLBACK TO cuts. */
  subxacts: Map<number, number>;
}

export interface SpoolStats {
  transactions: number;
  bytes: number;
}

export class TransactionSpool {
  private readonly open = new Map<number, OpenTransaction>();
  /** Streamed transactions committed (replayed from here or applied while open) and their bytes, for the log. */
  readonly committed: SpoolStats = { transactions: 0, bytes: 0 };

  private constructor(readonly dir: string) {}

  /**
   * The walsender streams every open transaction again from its start when a stream starts, so
   * what an earlier run left is never needed: a new folder `<pid>-<n>` under `slotDir`, and the
   * folders of processes that are gone are removed. A live process's are never touched, even one
   * started by mistake on the same slot (its START_REPLICATION fails afterwards).
   */
  static async create(slotDir: string): Promise<TransactionSpool> {
    try {
      await mkdir(slotDir, { recursive: true, mode: 0o700 });
      for (const entry of await readdir(slotDir)) {
        const pid = Number(/^(\d+)-/.exec(entry)?.[1]);
        if (pid && pid !== process.pid && !alive(pid)) await rm(path.join(slotDir, entry), { recursive: true, force: true });
      }
      const dir = path.join(slotDir, `${process.pid}-${++created}`);
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { mode: 0o700 });
      return new TransactionSpool(dir);
    } catch (err) {
      throw spoolError(slotDir, err);
    }
  }

  /** Stream Start: `first` when this is the transaction's first segment. */
  async startSegment(xid: number, first: boolean): Promise<void> {
    let t = this.open.get(xid);
    if (first && t) {
      await this.discard(xid);
      t = undefined;
    }
    if (!t) {
      if (!first) throw new Error(`the source streamed a later segment of transaction ${xid} without its first; restart the sync (it resumes from the target's position)`);
      const file = path.join(this.dir, `${xid}.spool`);
      // 0o600: the rows of the user's tables.
      const handle = await open(file, 'w+', 0o600).catch((err) => Promise.reject(spoolError(this.dir, err)));
      this.open.set(xid, { file, handle, written: 0, pending: [], pendingBytes: 0, subxacts: new Map() });
    }
  }

  /**
   * One message of transaction `topXid`, sent by (sub)transaction `xid`; `message` is in protocol 1
   * form. Returns a promise only when the buffer went out to disk.
   */
  append(topXid: number, xid: number, message: Buffer): Promise<void> | undefined {
    const t = this.open.get(topXid);
    if (!t) throw new Error(`the source streamed a change of transaction ${topXid} outside its stream; restart the sync`);
    if (xid !== topXid && !t.subxacts.has(xid)) t.subxacts.set(xid, t.written + t.pendingBytes);
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(message.length, 0);
    t.pending.push(len, message);
    t.pendingBytes += 4 + message.length;
    if (t.pendingBytes >= WRITE_BUFFER_BYTES) return this.flush(t);
    return undefined;
  }

  /** Stream Stop: what was buffered goes to disk, so the memory between segments is nothing. */
  async endSegment(): Promise<void> {
    for (const t of this.open.values()) if (t.pendingBytes > 0) await this.flush(t);
  }

  /**
   * Stream Abort: the whole transaction, or a subtransaction (ROLLBACK TO SAVEPOINT) with those
   * started after it, which are its own children. A Relation message in the cut part is not lost:
   * pgoutput forgets what it sent the transaction at every stream abort and sends it again.
   */
  async abort(xid: number, subxid: number): Promise<void> {
    const t = this.open.get(xid);
    if (!t) return;
    if (subxid === xid) {
      await this.discard(xid);
      return;
    }
    const cut = t.subxacts.get(subxid);
    if (cut === undefined) return; // it changed nothing
    await this.flush(t);
    await t.handle.truncate(cut);
    t.written = cut;
    let after = false;
    for (const id of [...t.subxacts.keys()]) {
      if (id === subxid) after = true;
      if (after) t.subxacts.delete(id);
    }
  }

  /**
   * Stream Commit: the transaction's messages in order, read back in chunks; the file is gone once
   * they have all been taken (or the reader stops).
   */
  async *commit(xid: number): AsyncGenerator<Buffer[]> {
    const t = this.open.get(xid);
    if (!t) return; // streamed but changed nothing we publish
    await this.flush(t);
    this.open.delete(xid);
    await t.handle.close();
    try {
      this.committed.transactions++;
      this.committed.bytes += t.written;
      let run: Buffer[] = [];
      for await (const m of this.records(t.file, 0, t.written)) {
        run.push(m);
        if (run.length === 1024) {
          yield run;
          run = [];
        }
      }
      if (run.length > 0) yield run;
    } finally {
      await rm(t.file, { force: true });
    }
  }

  /** A transaction committed without its file (applied while open): the file goes. */
  async drop(xid: number): Promise<void> {
    const t = this.open.get(xid);
    if (!t) return;
    this.committed.transactions++;
    this.committed.bytes += t.written + t.pendingBytes;
    await this.discard(xid);
  }

  async close(): Promise<void> {
    for (const xid of [...this.open.keys()]) await this.discard(xid).catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true }).catch(() => undefined);
  }

  private async discard(xid: number): Promise<void> {
    const t = this.open.get(xid);
    if (!t) return;
    this.open.delete(xid);
    await t.handle.close();
    await rm(t.file, { force: true });
  }

  private async flush(t: OpenTransaction): Promise<void> {
    if (t.pendingBytes === 0) return;
    const data = Buffer.concat(t.pending, t.pendingBytes);
    t.pending = [];
    t.pendingBytes = 0;
    let off = 0;
    try {
      while (off < data.length) {
        const { bytesWritten } = await t.handle.write(data, off, data.length - off, t.written + off);
        off += bytesWritten;
      }
    } catch (err) {
      throw spoolError(this.dir, err);
    }
    t.written += data.length;
  }

  /**
   * The records between byte offsets `from` and `to` of `file`, each a view of a read chunk. Chunks
   * are joined only once they hold the whole next record, so a record of many chunks (one big
   * value) is copied once, not once per chunk.
   */
  private async *records(file: string, from: number, to: number): AsyncGenerator<Buffer> {
    if (to <= from) return;
    let parts: Buffer[] = [];
    let have = 0;
    let need = 4;
    for await (const chunk of createReadStream(file, { start: from, end: to - 1, highWaterMark: READ_CHUNK_BYTES }) as AsyncIterable<Buffer>) {
      parts.push(chunk);
      have += chunk.length;
      if (have < need) continue;
      const b = parts.length === 1 ? parts[0] : Buffer.concat(parts, have);
      let p = 0;
      while (p + 4 <= b.length) {
        const len = b.readUInt32BE(p);
        if (p + 4 + len > b.length) break;
        yield b.subarray(p + 4, p + 4 + len);
        p += 4 + len;
      }
      const rest = b.subarray(p);
      parts = rest.length > 0 ? [rest] : [];
      have = rest.length;
      need = have >= 4 ? 4 + rest.readUInt32BE(0) : 4;
    }
    if (have > 0) throw new Error(`spooled transaction file ${file} ends inside a record`);
  }
}

let created = 0;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A full or unwritable spool stops the run (nothing is acknowledged, so nothing is lost). */
function spoolError(dir: string, err: unknown): SyncError {
  const why = (err as NodeJS.ErrnoException).code === 'ENOSPC' ? 'its disk is full' : (err as Error).message;
  return new SyncError(`cannot keep a source transaction still in progress in the spool folder ${dir} (${why}): free space there or run with --spool-dir on a bigger disk, or with --streaming off to leave it on the source; run again to resume, nothing is lost`, 'spool');
}
