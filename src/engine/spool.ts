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
import { constants, type Stats } from 'node:fs';
import { lstat, mkdir, open, readdir, rm, rmdir, unlink, type FileHandle } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { describeEndpoint } from './connection';
import { SyncError } from './errors';

const WRITE_BUFFER_BYTES = 1 << 20;
const READ_CHUNK_BYTES = 1 << 20;

/**
 * The folder all spools go under when neither --spool-dir nor PG_LIVE_SYNC_SPOOL_DIR names one:
 * the user's cache folder, on disk and private to them. Not the system's temp folder, where another
 * local user can create our (predictable) folders first; not XDG_RUNTIME_DIR, a small tmpfs in RAM
 * that a transaction of gigabytes would fill.
 */
export function defaultSpoolBase(): string {
  const cache = process.env.XDG_CACHE_HOME;
  return path.join(cache && path.isAbsolute(cache) ? cache : path.join(homedir(), '.cache'), 'pg-live-sync', 'spool');
}

/** The base folder: `base` (--spool-dir), else PG_LIVE_SYNC_SPOOL_DIR, else defaultSpoolBase(). */
export function spoolBase(base?: string): string {
  return path.resolve(base ?? (process.env.PG_LIVE_SYNC_SPOOL_DIR || defaultSpoolBase()));
}

/**
 * Where streams on `slot` of `sourceUrl` keep their open transactions: a folder of its own under
 * the base (spoolBase), in which each stream has its own (TransactionSpool.create). The slot name
 * comes first so that `drop` finds a subscription's folders (removeSpoolFolders).
 */
export function spoolDirFor(sourceUrl: string, slot: string, base?: string): string {
  // Slot names are unique per source cluster only; the address (never the password) tells clusters apart.
  const id = createHash('sha256').update(`${describeEndpoint(sourceUrl)}\n${slot}`).digest('hex').slice(0, 16);
  return path.join(spoolBase(base), `${slot}-${id}`);
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

  private constructor(readonly dir: string, private readonly slotDir: string) {}

  /**
   * The walsender streams every open transaction again from its start when a stream starts, so
   * what an earlier run left is never needed: a new folder `<pid>-<n>` under `slotDir`, and the
   * folders of processes that are gone are removed. A live process's are never touched, even one
   * started by mistake on the same slot (its START_REPLICATION fails afterwards). `slotDir` and
   * the base above it must be this user's own (privateFolder): the rows of the user's tables are
   * kept there, and what is read back from there is applied to the target.
   */
  static async create(slotDir: string): Promise<TransactionSpool> {
    await privateFolder(path.dirname(slotDir));
    await privateFolder(slotDir);
    try {
      await sweep(slotDir);
      const dir = path.join(slotDir, `${process.pid}-${++created}`);
      await rm(dir, { recursive: true, force: true });
      await mkdir(dir, { mode: 0o700 });
      return new TransactionSpool(dir, slotDir);
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
      const handle = await createFile(file).catch((err) => Promise.reject(spoolError(this.dir, err)));
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
    try {
      this.committed.transactions++;
      this.committed.bytes += t.written;
      let run: Buffer[] = [];
      // Through the handle that wrote it: whatever is at the path now is never read.
      for await (const m of this.records(t.handle, 0, t.written)) {
        run.push(m);
        if (run.length === 1024) {
          yield run;
          run = [];
        }
      }
      if (run.length > 0) yield run;
    } finally {
      await t.handle.close();
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
    // The slot's folder too, unless another stream of it (a live process) still has its own there.
    await rmdir(this.slotDir).catch(() => undefined);
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
  private async *records(handle: FileHandle, from: number, to: number): AsyncGenerator<Buffer> {
    if (to <= from) return;
    let parts: Buffer[] = [];
    let have = 0;
    let need = 4;
    for await (const chunk of chunks(handle, from, to)) {
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
    if (have > 0) throw new Error(`a spooled transaction file in ${this.dir} ends inside a record`);
  }
}

let created = 0;

/** The bytes of `handle` from `from` to `to`, READ_CHUNK_BYTES at a time, each chunk a buffer of its own (records are views of it). */
async function* chunks(handle: FileHandle, from: number, to: number): AsyncGenerator<Buffer> {
  for (let pos = from; pos < to;) {
    const chunk = Buffer.allocUnsafe(Math.min(READ_CHUNK_BYTES, to - pos));
    const { bytesRead } = await handle.read(chunk, 0, chunk.length, pos);
    if (bytesRead === 0) throw new Error(`a spooled transaction file is shorter than what was written to it (${pos} of ${to} bytes)`);
    pos += bytesRead;
    yield bytesRead === chunk.length ? chunk : chunk.subarray(0, bytesRead);
  }
}

/**
 * A new file, mode 0600 (the rows of the user's tables), that was not there before and is not a
 * link: nothing planted at the path is written through or read. Something there already (a file
 * of this process whose removal failed) is removed first, a link as itself.
 */
async function createFile(file: string): Promise<FileHandle> {
  const flags = constants.O_RDWR | constants.O_CREAT | constants.O_EXCL | (constants.O_NOFOLLOW ?? 0);
  try {
    return await open(file, flags, 0o600);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    await unlink(file);
    return await open(file, flags, 0o600);
  }
}

/**
 * Removes what streams of processes that are gone left in `slotDir`. rm never follows a link: a
 * link is removed itself, and so are the links inside a removed folder, never what they point at.
 */
async function sweep(slotDir: string): Promise<void> {
  for (const entry of await readdir(slotDir)) {
    const pid = Number(/^(\d+)-/.exec(entry)?.[1]);
    if (pid && pid !== process.pid && !alive(pid)) await rm(path.join(slotDir, entry), { recursive: true, force: true });
  }
}

/**
 * Removes the spool folders under the base (`base` as in spoolBase) of every slot `isOurs` names
 * (`drop`): what killed runs left there. A stream still running keeps its own. Returns the
 * folders removed.
 */
export async function removeSpoolFolders(isOurs: (slot: string) => boolean, base?: string): Promise<string[]> {
  const root = spoolBase(base);
  const found = await lstat(root).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? null : Promise.reject(spoolError(root, err))));
  if (!found) return [];
  await privateFolder(root);
  const removed: string[] = [];
  for (const entry of await readdir(root)) {
    const slot = /^([a-z0-9_]+)-[0-9a-f]{16}$/.exec(entry)?.[1];
    if (!slot || !isOurs(slot)) continue;
    const dir = path.join(root, entry);
    await privateFolder(dir);
    await sweep(dir);
    if (await rmdir(dir).then(() => true, () => false)) removed.push(dir);
  }
  return removed;
}

/**
 * Creates `dir` (mode 0700) if it is missing, then makes sure it is a folder of this user's that
 * nobody else may enter, without following a link: in a folder another user can write to, they
 * could read the rows kept there, plant rows to be applied, or point a link at a file to overwrite.
 */
async function privateFolder(dir: string): Promise<void> {
  const stat = () => lstat(dir).catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? null : Promise.reject(spoolError(dir, err))));
  let st = await stat();
  if (!st) {
    await mkdir(dir, { recursive: true, mode: 0o700 }).catch((err) => Promise.reject(spoolError(dir, err)));
    st = await stat();
  }
  const why = notPrivate(dir, st);
  if (why) throw new SyncError(`the spool folder ${dir} ${why}`, 'spool');
}

const OWN_FOLDER = 'or run with --spool-dir set to a folder of your own with mode 0700';

/** Why `st` is no private folder, with the fix; null when it is one. */
function notPrivate(dir: string, st: Stats | null): string | null {
  if (!st) return `vanished while it was being made; run again, ${OWN_FOLDER}`;
  if (st.isSymbolicLink()) return `is a symbolic link, which is never followed (another user may have planted it): remove the link, ${OWN_FOLDER}`;
  if (!st.isDirectory()) return `is not a folder: remove that file, ${OWN_FOLDER}`;
  const me = process.geteuid?.();
  // Windows: no owner ids or mode bits; the user's profile folders are private already.
  if (me === undefined) return null;
  const mode = st.mode & 0o7777;
  // A folder everyone shares (a temp folder) must stay so: a folder of one's own goes inside it.
  if ((mode & 0o1002) === 0o1002) return `is a folder all users share (mode ${mode.toString(8)}): run with --spool-dir set to a folder of your own with mode 0700, e.g. one made with mkdir -m 700 ${path.join(dir, `pg-live-sync-spool-${me}`)}`;
  if (st.uid !== me) return `belongs to user id ${st.uid}, not to you (user id ${me}), so they could read or change what is kept there: have it removed, ${OWN_FOLDER}`;
  if ((mode & 0o077) !== 0) return `has mode 0${mode.toString(8)}, so other users could read or change what is kept there: run chmod 700 ${dir}, ${OWN_FOLDER}`;
  return null;
}

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
