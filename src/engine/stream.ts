/**
 * Stage 3: the change stream, the only module that touches pg-logical-replication.
 *
 * We keep its pgoutput parser (fast and complete for protocol v1) and replace its transport,
 * LogicalReplicationService, with a CopyBoth stream from pg-copy-streams, because the service's
 * defects lose transactions (see ../shared/notes/pg-logical-replication.md and README "Design"):
 *  - it acknowledges `lsn + 1` and acknowledges on a timer what was only received (1, 2, 3):
 *    here nothing is acknowledged but what the caller says was durably applied, exactly;
 *  - it resumes from its in-memory position (4): here the start LSN is always explicit;
 *  - it never answers keepalives (5): here they are answered, and a timer keeps reporting;
 *  - it reads heartbeat times with the wrong epoch (9): here keepalives are decoded here;
 *  - with no error listener it crashes the process (11): here errors surface through the
 *    async iterator to the caller;
 *  - it buffers without bound under a slow consumer: here the consumer pulls (for await), so
 *    the socket is read only as fast as changes are applied.
 * The parser's tuple reader is replaced too: values stay raw text (6), binary values are copied
 * out of the reused buffer (7), and an unchanged TOAST value is marked, never guessed.
 * Transactions still in progress are streamed (8) on sources that can (PostgreSQL 14+, protocol 2):
 * the Stream Start/Stop/Commit/Abort messages are parsed here, each open transaction waits in
 * spool.ts, and at its Stream Commit it comes out as an ordinary Begin, changes, Commit, so nothing
 * downstream knows. Older sources (or --streaming off) get protocol 1, and big transactions arrive
 * after their commit.
 */
import type pg from 'pg';
import { both as copyBoth } from 'pg-copy-streams';
import { PgoutputParser } from 'pg-logical-replication/dist/output-plugins/pgoutput/pgoutput-parser.js';
import { connect, quoteIdent, quoteLiteral, type Endpoint } from './connection';
import { formatLsn, parseLsn, type Lsn } from './lsn';
import { spoolDirFor, TransactionSpool } from './spool';

export const UNCHANGED_TOAST: unique symbol = Symbol('unchanged TOAST value');
export type Value = string | null | typeof UNCHANGED_TOAST;
export type Tuple = Value[];

export interface RelationColumn {
  name: string;
  isKey: boolean;
  typeOid: number;
}

export interface Relation {
  relationOid: number;
  schema: string;
  table: string;
  replicaIdentity: 'default' | 'nothing' | 'full' | 'index';
  columns: RelationColumn[];
}

/**
 * A new row as pgoutput sent it (its TupleData bytes, copied out of the frame): inserts are
 * turned into COPY data straight from these bytes (see apply.ts), and decoded into values only
 * when something needs them (a key).
 */
export class RawTuple {
  constructor(readonly bytes: Buffer) {}

  values(): Tuple {
    const reader = { _b: this.bytes, _p: 0 };
    return readTuple(reader);
  }
}

export function tupleValues(t: Tuple | RawTuple): Tuple {
  return t instanceof RawTuple ? t.values() : t;
}

export type Change =
  | { tag: 'begin'; finalLsn: Lsn; commitTime: bigint }
  | { tag: 'commit'; endLsn: Lsn; commitTime: bigint }
  | { tag: 'relation'; relation: Relation }
  | { tag: 'insert'; relationOid: number; new: Tuple | RawTuple }
  | { tag: 'update'; relationOid: number; key: Tuple | null; old: Tuple | null; new: Tuple }
  | { tag: 'delete'; relationOid: number; key: Tuple | null; old: Tuple | null }
  | { tag: 'truncate'; relationOids: number[]; restartIdentity: boolean }
  | { tag: 'ignored'; what: string };

export type StreamEvent =
  | { kind: 'change'; change: Change; walEnd: Lsn }
  | { kind: 'keepalive'; walEnd: Lsn; replyRequested: boolean }
  | OpenTransactionEvent;

/**
 * A transaction the source streams while it is still open, as it arrives (only with
 * `applyOpen`): its segments' starts and ends, its changes tagged with the (sub)transaction that
 * made them, a subtransaction's or its own abort, and its commit, when the consumer took it (see
 * OpenCommitHooks). Each is also in the spool, whatever the consumer does with it.
 */
export type OpenTransactionEvent =
  | { kind: 'open-start'; xid: number; first: boolean; walEnd: Lsn }
  | { kind: 'open-change'; xid: number; subxid: number; change: Change; walEnd: Lsn }
  | { kind: 'open-stop'; xid: number; walEnd: Lsn }
  | { kind: 'open-abort'; xid: number; subxid: number; walEnd: Lsn }
  | ({ kind: 'open-commit' } & StreamCommit);

/**
 * How a Stream Commit comes out: `takes` says (once everything before it was consumed) whether the
 * consumer applied the transaction while open, which then arrives as one 'open-commit' event;
 * after it, `committed` says whether that worked. Otherwise, or if it did not, the spool replays
 * the transaction as an ordinary Begin, changes, Commit.
 */
export interface OpenCommitHooks {
  takes(c: StreamCommit): boolean;
  committed(xid: number): boolean;
}

/** The library's BinaryReader: the message buffer and the read position. */
interface LibReader {
  _b: Buffer;
  _p: number;
}

/** The library's parser with our tuple reader: positional raw values. */
class RawTextPgoutputParser extends PgoutputParser {}
const rawProto = RawTextPgoutputParser.prototype as unknown as Record<string, unknown>;
// Read straight from the message buffer: a view plus a TextDecoder call per value cost twice as much.
rawProto.readTuple = readTuple;
function readTuple(reader: LibReader): Tuple {
  const b = reader._b;
  let p = reader._p;
  const end = b.length;
  const truncated = () => new Error('pgoutput tuple ends early: unexpected end of message');
  if (p + 2 > end) throw truncated();
  const n = b.readUInt16BE(p);
  p += 2;
  const tuple: Tuple = new Array(n);
  for (let i = 0; i < n; i++) {
    if (p >= end) throw truncated();
    const kind = b[p++];
    switch (kind) {
      case 0x74: // 't' text
      case 0x62: { // 'b' binary: never requested; copied (as hex) because the buffer is reused
        if (p + 4 > end) throw truncated();
        const len = b.readUInt32BE(p);
        p += 4;
        if (p + len > end) throw truncated();
        tuple[i] = b.toString(kind === 0x74 ? 'utf8' : 'hex', p, p + len);
        p += len;
        break;
      }
      case 0x6e: // 'n' null
        tuple[i] = null;
        break;
      case 0x75: // 'u' unchanged TOAST: the value is not in the WAL; leave the target's alone
        tuple[i] = UNCHANGED_TOAST;
        break;
      default:
        throw new Error(`unknown pgoutput tuple value kind ${String.fromCharCode(kind)}`);
    }
  }
  reader._p = p;
  return tuple;
}
// A key tuple is a tuple whose non-key columns are null; positions keep their meaning.
rawProto.readKeyTuple = function readKeyTuple(this: { readTuple(r: LibReader): Tuple }, reader: LibReader): Tuple {
  return this.readTuple(reader);
};

type LibMessage = ReturnType<PgoutputParser['parse']>;

/** A value this large travels without being copied where it can (apply.ts, LARGE_VALUE there too). */
const LARGE_FRAME = 1024 * 1024;

/** A large view that is most of its buffer: keeping it keeps little else alive. */
function ownsItsBuffer(view: Buffer): boolean {
  return view.length >= LARGE_FRAME && view.buffer.byteLength < 2 * view.length;
}

/**
 * pg-copy-streams (7.x) gathers the pieces of a CopyData frame as they are read and joins them
 * into a new buffer at the frame's end: twice a large frame's size at once. Put in its place
 * (its `_copyDataChunks`), this writes each piece of a large frame into one buffer of the frame's
 * size as it arrives (the frame's length is known from its header), so the pieces go at once.
 */
class FrameAssembler {
  size = 0;
  private parts: Buffer[] = [];
  private whole: Buffer | null = null;

  constructor(private readonly query: { _unreadMessageContentLength: number }) {}

  /** A piece of the current frame; the library has already counted it off what is left unread. */
  push(piece: Buffer): void {
    if (this.size === 0 && piece.length + this.query._unreadMessageContentLength >= LARGE_FRAME) {
      this.whole = Buffer.allocUnsafe(piece.length + this.query._unreadMessageContentLength);
    }
    if (this.whole) piece.copy(this.whole, this.size);
    else this.parts.push(piece);
    this.size += piece.length;
  }

  /** The frame: the library takes all it holds at a frame's end. */
  take(n: number): Buffer {
    if (n !== this.size) throw new Error(`pg-copy-streams took ${n} of ${this.size} bytes of a CopyData frame`);
    const frame = this.whole ?? (this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, n));
    this.whole = null;
    this.parts = [];
    this.size = 0;
    return frame;
  }

  /** Installs itself in a copyBoth stream whose internals are as expected; else leaves it as it is. */
  static install(duplex: unknown): void {
    const q = duplex as { _copyDataChunks?: { push?: unknown; take?: unknown }; _unreadMessageContentLength?: unknown };
    if (typeof q._copyDataChunks?.push !== 'function' || typeof q._copyDataChunks.take !== 'function' || typeof q._unreadMessageContentLength !== 'number') return;
    q._copyDataChunks = new FrameAssembler(q as { _unreadMessageContentLength: number }) as never;
  }
}

/** Where the TupleData starting at `p` ends. */
function tupleEnd(b: Buffer, p: number): number {
  const end = b.length;
  if (p + 2 > end) throw new Error('pgoutput tuple ends early: unexpected end of message');
  const n = b.readUInt16BE(p);
  p += 2;
  for (let i = 0; i < n; i++) {
    const kind = b[p++];
    if (kind === 0x74 || kind === 0x62) p += 4 + b.readUInt32BE(p);
    else if (kind !== 0x6e && kind !== 0x75) throw new Error(`unknown pgoutput tuple value kind ${String.fromCharCode(kind)}`);
    if (p > end) throw new Error('pgoutput tuple ends early: unexpected end of message');
  }
  return p;
}

/**
 * The messages of every transaction (Begin, Commit, Insert, Update, Delete; protocol v1) decoded
 * here: the library's parser formats each LSN as a string (parsed back at once) and slices a
 * Buffer per field, which was a fifth of the CPU on small transactions. Others go to the library.
 * `m` is the pgoutput message: the XLogData payload.
 */
function decodeChange(parser: PgoutputParser, m: Buffer, unshared = false): Change {
  switch (m[0]) {
    case 0x42: // 'B': final LSN, commit time, xid
      return { tag: 'begin', finalLsn: m.readBigUInt64BE(1), commitTime: m.readBigUInt64BE(9) + PG_EPOCH_MICROS };
    case 0x43: // 'C': flags, commit LSN, end LSN, commit time
      return { tag: 'commit', endLsn: m.readBigUInt64BE(10), commitTime: m.readBigUInt64BE(18) + PG_EPOCH_MICROS };
    case 0x49: { // 'I': relation, 'N', new tuple
      if (m[5] !== 0x4e) break;
      const end = tupleEnd(m, 6);
      // Copied: the frame's buffer is the socket's, and a view would keep all of it alive. A large
      // `unshared` frame has a buffer of its own that nothing writes into again (pg-copy-streams
      // assembles a frame spanning reads into a new one): a view then saves a copy of its size.
      const view = m.subarray(6, end);
      return { tag: 'insert', relationOid: m.readUInt32BE(1), new: new RawTuple(unshared && ownsItsBuffer(view) ? view : Buffer.from(view)) };
    }
    case 0x55: { // 'U': relation, optional 'K' key or 'O' old tuple, 'N', new tuple
      const reader: LibReader = { _b: m, _p: 5 };
      let key: Tuple | null = null;
      let old: Tuple | null = null;
      const first = m[5];
      if (first === 0x4b || first === 0x4f) {
        reader._p++;
        if (first === 0x4b) key = readTuple(reader);
        else old = readTuple(reader);
      }
      if (m[reader._p] !== 0x4e) break;
      reader._p++;
      return { tag: 'update', relationOid: m.readUInt32BE(1), key, old, new: readTuple(reader) };
    }
    case 0x44: { // 'D': relation, 'K' key or 'O' old tuple
      const first = m[5];
      if (first !== 0x4b && first !== 0x4f) break;
      const t = readTuple({ _b: m, _p: 6 });
      return { tag: 'delete', relationOid: m.readUInt32BE(1), key: first === 0x4b ? t : null, old: first === 0x4f ? t : null };
    }
  }
  return toChange(parser.parse(m));
}

function toChange(m: LibMessage): Change {
  switch (m.tag) {
    case 'begin':
      return { tag: 'begin', finalLsn: parseLsn(m.commitLsn ?? '0/0'), commitTime: m.commitTime as bigint };
    case 'commit':
      return { tag: 'commit', endLsn: parseLsn(m.commitEndLsn ?? '0/0'), commitTime: m.commitTime as bigint };
    case 'relation':
      return {
        tag: 'relation',
        relation: {
          relationOid: m.relationOid,
          schema: m.schema,
          table: m.name,
          replicaIdentity: m.replicaIdentity,
          columns: m.columns.map((c) => ({ name: c.name, isKey: (c.flags & 1) === 1, typeOid: c.typeOid })),
        },
      };
    case 'insert':
      return { tag: 'insert', relationOid: m.relation.relationOid, new: m.new as unknown as Tuple };
    case 'update':
      return { tag: 'update', relationOid: m.relation.relationOid, key: m.key as unknown as Tuple | null, old: m.old as unknown as Tuple | null, new: m.new as unknown as Tuple };
    case 'delete':
      return { tag: 'delete', relationOid: m.relation.relationOid, key: m.key as unknown as Tuple | null, old: m.old as unknown as Tuple | null };
    case 'truncate':
      return { tag: 'truncate', relationOids: m.relations.map((r) => r.relationOid), restartIdentity: m.restartIdentity };
    default:
      return { tag: 'ignored', what: m.tag };
  }
}

const PG_EPOCH_MICROS = 946_684_800_000_000n;
/** The readable's buffer, in frames: how many events one run can hold. */
const BATCH_FRAMES = 256;
const MAX_STATUS_INTERVAL_MS = 5_000;

/**
 * While apply waits on the target the socket is not read, so keepalives are not seen; the timer's
 * status messages alone keep the walsender from dropping us: send them well inside its timeout.
 */
function statusInterval(walSenderTimeout: string): number {
  const m = /^(\d+)\s*(ms|s|min|h)?$/.exec(walSenderTimeout.trim());
  if (!m) return MAX_STATUS_INTERVAL_MS;
  const ms = Number(m[1]) * { ms: 1, s: 1_000, min: 60_000, h: 3_600_000 }[(m[2] ?? 'ms') as 'ms'];
  if (ms === 0) return MAX_STATUS_INTERVAL_MS;
  return Math.max(200, Math.min(MAX_STATUS_INTERVAL_MS, Math.floor(ms / 3)));
}

export class ReplicationStream {
  private flushed: Lsn;
  private receivedUpTo: Lsn;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** The duplex's error, kept from the start: a stop between start() and the first read closes the
   * connection, and an 'error' with no listener would end the process instead of the run. */
  private failure: unknown = null;

  private constructor(
    private readonly client: pg.Client,
    private readonly duplex: ReturnType<typeof copyBoth>,
    startLsn: Lsn,
    intervalMs: number,
    /** Open streamed transactions; null on a source too old to stream them. */
    readonly spool: TransactionSpool | null,
  ) {
    this.flushed = startLsn;
    this.receivedUpTo = startLsn;
    this.timer = setInterval(() => this.sendStatus(false), intervalMs);
    this.timer.unref();
    duplex.on('error', (err: unknown) => {
      this.failure ??= err;
    });
  }

  /** Starts streaming from exactly `startLsn`: the end of the last commit the target holds. */
  static async start(source: Endpoint, slot: string, publications: string[], startLsn: Lsn, opts: { spoolBase?: string; streaming?: boolean; openCommits?: OpenCommitHooks } = {}): Promise<ReplicationStream> {
    const client = await connect(source, { replication: true, applicationName: 'pg_live_sync_stream' });
    let spool: TransactionSpool | null = null;
    let duplex: ReturnType<typeof copyBoth>;
    let timeout: string;
    try {
      timeout = (await client.query('SHOW wal_sender_timeout')).rows[0].wal_sender_timeout as string;
      const version = Number((await client.query('SHOW server_version_num')).rows[0].server_version_num);
      const streaming = version >= 140000 && opts.streaming !== false;
      if (streaming) spool = await TransactionSpool.create(spoolDirFor(source.url, slot, opts.spoolBase));
      const pubs = publications.map((p) => quoteIdent(p)).join(',');
      const protocol = streaming ? `proto_version '2', streaming 'on'` : `proto_version '1'`;
      const sql = `START_REPLICATION SLOT ${quoteIdent(slot)} LOGICAL ${formatLsn(startLsn)} (${protocol}, publication_names ${quoteLiteral(pubs)})`;
      // One CopyData frame per read: in byte mode a read would hand back several frames glued together.
      duplex = copyBoth(sql, { alignOnCopyDataFrame: true, readableObjectMode: true, readableHighWaterMark: BATCH_FRAMES });
      FrameAssembler.install(duplex);
    } catch (err) {
      await client.end().catch(() => undefined);
      await spool?.close();
      throw err;
    }
    client.query(duplex);
    const stream = new ReplicationStream(client, duplex, startLsn, statusInterval(timeout), spool);
    stream.openCommits = spool ? (opts.openCommits ?? null) : null;
    return stream;
  }

  /** Set: open transactions' events come out as they arrive too (OpenTransactionEvent). */
  private openCommits: OpenCommitHooks | null = null;

  /** Changes and keepalives in WAL order; the socket is read only as fast as this is consumed. */
  async *events(): AsyncGenerator<StreamEvent> {
    for await (const batch of this.eventBatches()) yield* batch;
  }

  /**
   * The same, as the runs of events already received: one await per run rather than per change,
   * which at a hundred thousand changes a second is much of the CPU. A run is at most the
   * readable's buffer (BATCH_FRAMES frames), so memory stays bounded.
   */
  async *eventBatches(): AsyncGenerator<StreamEvent[]> {
    const parser = new RawTextPgoutputParser();
    const duplex = this.duplex;
    let ended = false;
    let wake: (() => void) | null = null;
    const poke = () => {
      const w = wake;
      wake = null;
      w?.();
    };
    duplex.on('readable', poke);
    duplex.once('end', () => {
      ended = true;
      poke();
    });
    duplex.once('error', poke);
    duplex.once('close', () => {
      ended = true;
      poke();
    });
    const spool = this.spool;
    const open = this.openCommits;
    // The top-level transaction of the Stream Start ... Stream Stop block being read, if any.
    let streamXid: number | null = null;
    try {
      for (;;) {
        const batch: StreamEvent[] = [];
        let streamCommit: StreamCommit | null = null;
        let frame: Buffer | null;
        while (batch.length < BATCH_FRAMES && (frame = duplex.read() as Buffer | null) !== null) {
          if (frame[0] === 0x77) {
            // XLogData: 'w', start LSN, current end of WAL on the server, send time, payload
            const walEnd = frame.readBigUInt64BE(9);
            const m = frame.subarray(25);
            if (spool) {
              if (streamXid !== null) {
                if (m[0] === 0x45) {
                  // 'E' Stream Stop
                  if (open) batch.push({ kind: 'open-stop', xid: streamXid, walEnd });
                  streamXid = null;
                  await spool.endSegment();
                } else if (m[0] !== 0x4f) {
                  // Any other message in a block (but 'O' origin): type, (sub)transaction xid, then protocol 1's body.
                  const v1 = Buffer.allocUnsafe(m.length - 4);
                  v1[0] = m[0];
                  m.copy(v1, 1, 5);
                  const subxid = m.readUInt32BE(1);
                  const writing = spool.append(streamXid, subxid, v1);
                  if (writing) await writing;
                  if (open) batch.push({ kind: 'open-change', xid: streamXid, subxid, change: decodeChange(parser, v1, true), walEnd });
                }
                continue;
              }
              if (m[0] === 0x53) {
                // 'S' Stream Start: xid, first segment
                streamXid = m.readUInt32BE(1);
                await spool.startSegment(streamXid, m[5] === 1);
                if (open) batch.push({ kind: 'open-start', xid: streamXid, first: m[5] === 1, walEnd });
                continue;
              }
              if (m[0] === 0x41) {
                // 'A' Stream Abort: xid, subtransaction xid
                await spool.abort(m.readUInt32BE(1), m.readUInt32BE(5));
                if (open) batch.push({ kind: 'open-abort', xid: m.readUInt32BE(1), subxid: m.readUInt32BE(5), walEnd });
                continue;
              }
              if (m[0] === 0x63) {
                // 'c' Stream Commit: xid, flags, commit LSN, end LSN, commit time
                streamCommit = { xid: m.readUInt32BE(1), commitLsn: m.readBigUInt64BE(6), endLsn: m.readBigUInt64BE(14), commitTime: m.readBigUInt64BE(22) + PG_EPOCH_MICROS, walEnd };
                break;
              }
            }
            const change = decodeChange(parser, m, true);
            if (change.tag === 'commit' && change.endLsn > this.receivedUpTo) this.receivedUpTo = change.endLsn;
            batch.push({ kind: 'change', change, walEnd });
          } else if (frame[0] === 0x6b) {
            // Primary keepalive: 'k', current end of WAL on the server, send time, reply requested
            batch.push({ kind: 'keepalive', walEnd: frame.readBigUInt64BE(1), replyRequested: frame[17] === 1 });
          }
        }
        if (batch.length > 0) yield batch;
        if (streamCommit && spool) {
          if (open?.takes(streamCommit)) {
            yield [{ kind: 'open-commit', ...streamCommit }];
            if (open.committed(streamCommit.xid)) {
              await spool.drop(streamCommit.xid);
              if (streamCommit.endLsn > this.receivedUpTo) this.receivedUpTo = streamCommit.endLsn;
              continue;
            }
          }
          yield* this.replay(parser, spool, streamCommit);
          continue;
        }
        if (batch.length > 0) continue;
        if (this.failure) throw this.failure;
        if (ended || duplex.readableEnded || duplex.destroyed) return;
        await new Promise<void>((resolve) => (wake = resolve));
      }
    } finally {
      duplex.off('readable', poke);
    }
  }

  /** A streamed transaction at its commit, as one ordinary transaction: Begin, its changes from the spool, Commit. */
  private async *replay(parser: PgoutputParser, spool: TransactionSpool, c: StreamCommit): AsyncGenerator<StreamEvent[]> {
    const event = (change: Change): StreamEvent => ({ kind: 'change', change, walEnd: c.walEnd });
    yield [event({ tag: 'begin', finalLsn: c.commitLsn, commitTime: c.commitTime })];
    for await (const run of spool.commit(c.xid)) yield run.map((m) => event(decodeChange(parser, m)));
    yield [event({ tag: 'commit', endLsn: c.endLsn, commitTime: c.commitTime })];
    if (c.endLsn > this.receivedUpTo) this.receivedUpTo = c.endLsn;
  }

  /**
   * Everything before `lsn` has been seen (a keepalive outside a transaction): reported as
   * written, so the walsender does not ping again for WAL we have, while flushed waits for the
   * target.
   */
  received(lsn: Lsn): void {
    if (lsn > this.receivedUpTo) this.receivedUpTo = lsn;
  }

  /** `lsn` is the end of the last commit durably applied on the target: never more, never + 1. */
  acknowledge(lsn: Lsn, replyNow = false): void {
    if (lsn > this.flushed) this.flushed = lsn;
    if (replyNow) this.sendStatus(false);
  }

  get acknowledged(): Lsn {
    return this.flushed;
  }

  private sendStatus(requestReply: boolean): void {
    if (this.closed) return;
    const buf = Buffer.alloc(34);
    buf[0] = 0x72; // 'r' standby status update
    const written = this.receivedUpTo > this.flushed ? this.receivedUpTo : this.flushed;
    buf.writeBigUInt64BE(written, 1);
    buf.writeBigUInt64BE(this.flushed, 9);
    buf.writeBigUInt64BE(this.flushed, 17);
    buf.writeBigUInt64BE(BigInt(Date.now()) * 1000n - PG_EPOCH_MICROS, 25);
    buf[33] = requestReply ? 1 : 0;
    this.duplex.write(buf);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.sendStatus(false);
    this.closed = true;
    clearInterval(this.timer);
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        (this.client as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
        resolve();
      }, 3_000);
      this.client.end().finally(() => {
        clearTimeout(t);
        resolve();
      });
    });
    this.duplex.destroy();
    await this.spool?.close();
  }
}

export interface StreamCommit {
  xid: number;
  commitLsn: Lsn;
  endLsn: Lsn;
  commitTime: bigint;
  walEnd: Lsn;
}
