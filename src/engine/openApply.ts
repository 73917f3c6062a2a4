/**
 * Stage 4, beside apply.ts: a transaction the source streams while it is still open is applied as
 * it arrives, in its own target transaction on a target connection of its own, and that transaction
 * commits (with its position) at the source's COMMIT, in commit order. Without this, a big
 * transaction is spooled and only then replayed (3 µs a row after COMMIT); with it, COMMIT leaves
 * nothing to do but commit. PostgreSQL 16's subscriber calls this `streaming = parallel`.
 *
 * Why it gives the same rows as applying the transaction at its commit:
 *  - Before each segment is applied, every transaction the stream delivered before it is
 *    committed on the target (the engine checkpoints at Stream Start). The source wrote the
 *    segment's changes after those commits, so they see the same rows here as there.
 *  - A transaction committing on the source while this one is open, or open beside it (up to
 *    MAX_OPEN_APPLIED are applied at once), never touched a row this one changed (the source's row
 *    locks kept it out), so the connection applying it does not meet this one's uncommitted rows,
 *    except where the target differs from the source (a unique index only the target has). Then
 *    that connection waits on this one's locks; a watch sees it within WATCH_MS and this
 *    transaction is dropped (its connection terminated, so its locks go at once).
 *  - SAVEPOINT per subtransaction that wrote, ROLLBACK TO at its Stream Abort: the target
 *    transaction ends as the source's did, as the spool's cut does.
 *  - Nothing of it is visible before it commits; a crash or stop rolls it back and the source
 *    sends it again (its commit is after the slot's confirmed position).
 * Everything is still spooled, so any failure here (an error on the target, a lost connection, a
 * table set that changed, a table whose part starts at a position this transaction's unknown
 * commit may fall on either side of) only drops the target transaction: at its commit the
 * transaction is replayed from the spool on the main connection, as without this.
 */
import type pg from 'pg';
import type { Applier } from './apply';
import { checkpoint, type CheckpointResult, type PositionWriter } from './checkpoint';
import { connect, quoteIdent, type Endpoint } from './connection';
import { errorMessage } from './errors';
import type { Lsn } from './lsn';
import type { Change, OpenTransactionEvent, StreamCommit } from './stream';
import type { Logger } from './types';

/** How often our target connections are checked for waiting on an open transaction's locks. */
const WATCH_MS = 250;
/** Past this many subtransactions that wrote (a loop with an EXCEPTION block), the spool is cheaper. */
const MAX_SAVEPOINTS = 1000;
/**
 * Open transactions applied at once, each on its own target connection (PostgreSQL 16's
 * max_parallel_apply_workers_per_subscription has the same default); more wait in the spool.
 */
export const MAX_OPEN_APPLIED = 2;

export interface OpenApplyContext {
  target: Endpoint;
  log: Logger;
  /** The main stream's applier: tables, relations and the applied position come from it. */
  main: Applier;
  /** The main apply connection, watched for waiting on the open transactions' locks. */
  mainConnection: pg.Client;
  /** A connection of its own for the watch and for ending a stuck open transaction. */
  watch: pg.Client;
}

interface OpenTransaction {
  xid: number;
  client: pg.Client | null;
  applier: Applier | null;
  /** Subtransactions that wrote, each with its savepoint, in the order they were set. */
  savepoints: number[];
  /** Relation messages it carried: the main applier learns them at its commit (pgoutput will not resend them). */
  relations: Map<number, Change>;
  tablesVersion: number;
  failed: boolean;
}

export class OpenTransactionApplier {
  private readonly open = new Map<number, OpenTransaction>();
  /** Connections whose transaction ended, kept for the next one. */
  private readonly spare: pg.Client[] = [];
  private watchTimer: NodeJS.Timeout | undefined;
  private watching = false;
  private lastCommitted: number | null = null;
  /** Applied while open and committed: transactions and their changes. */
  readonly applied = { transactions: 0, changes: 0 };

  constructor(private readonly ctx: OpenApplyContext) {}

  /** True when `xid` is being applied while open. */
  holds(xid: number): boolean {
    const tx = this.open.get(xid);
    return tx !== undefined && !tx.failed;
  }

  /** Room for one more (a failed one counts until its commit or abort ends it). */
  get hasRoom(): boolean {
    return this.open.size < MAX_OPEN_APPLIED;
  }

  /**
   * The first segment of a transaction: applied while open when there is room. The caller has
   * committed everything before it; its commit will come after `commitAfter`.
   */
  async begin(xid: number, commitAfter: Lsn): Promise<void> {
    if (!this.hasRoom || this.open.has(xid)) return;
    const tx: OpenTransaction = { xid, client: null, applier: null, savepoints: [], relations: new Map(), tablesVersion: this.ctx.main.tableSetVersion, failed: false };
    this.open.set(xid, tx);
    try {
      tx.client = await this.connection();
      tx.applier = this.ctx.main.twin(tx.client, commitAfter);
      const begun = tx.applier.apply({ tag: 'begin', finalLsn: commitAfter, commitTime: 0n });
      if (begun) await begun;
    } catch (err) {
      await this.abandon(tx, `could not start: ${errorMessage(err)}`);
      return;
    }
    if (!this.watchTimer) {
      this.watchTimer = setInterval(() => void this.watchLocks(), WATCH_MS);
      this.watchTimer.unref();
    }
  }

  /** One change of an open transaction (ignored unless it is applied here). */
  async change(ev: Extract<OpenTransactionEvent, { kind: 'open-change' }>): Promise<void> {
    const tx = this.open.get(ev.xid);
    if (!tx || tx.failed || !tx.applier) return;
    try {
      if (tx.tablesVersion !== this.ctx.main.tableSetVersion) throw new Error('the set of synced tables changed');
      const c = ev.change;
      if (c.tag === 'relation') tx.relations.set(c.relation.relationOid, c);
      if (ev.subxid !== tx.xid && !tx.savepoints.includes(ev.subxid)) {
        if (tx.savepoints.length >= MAX_SAVEPOINTS) throw new Error(`more than ${MAX_SAVEPOINTS} subtransactions wrote`);
        await tx.applier.statement(`SAVEPOINT ${savepoint(ev.subxid)}`);
        tx.savepoints.push(ev.subxid);
      }
      const applying = tx.applier.apply(c);
      if (applying) await applying;
    } catch (err) {
      await this.abandon(tx, errorMessage(err));
    }
  }

  /** Stream Stop: what is queued goes to the target, which works on it while the source writes on. */
  async segmentEnd(xid: number): Promise<void> {
    const tx = this.open.get(xid);
    if (!tx || tx.failed || !tx.applier) return;
    await tx.applier.sendQueued().catch((err: unknown) => this.abandon(tx, errorMessage(err)));
  }

  /** Stream Abort of the transaction (it ends here) or of a subtransaction (back to its savepoint). */
  async abort(xid: number, subxid: number): Promise<void> {
    const tx = this.open.get(xid);
    if (!tx) return;
    if (subxid === xid) {
      this.finish(tx);
      if (tx.failed || !tx.applier || !tx.client) return;
      try {
        await tx.applier.statement('ROLLBACK');
        await tx.applier.flush();
        this.spare.push(tx.client);
      } catch {
        await this.dropConnection(tx.client);
      }
      return;
    }
    if (tx.failed || !tx.applier) return;
    const at = tx.savepoints.indexOf(subxid);
    if (at < 0) return; // it wrote nothing
    // Later savepoints are its own subtransactions' (they are rolled back with it).
    tx.savepoints.splice(at);
    await tx.applier.statement(`ROLLBACK TO SAVEPOINT ${savepoint(subxid)}`).catch((err: unknown) => this.abandon(tx, errorMessage(err)));
  }

  /**
   * Asked at the Stream Commit, once everything before it was applied: is it committed from here?
   * Not when it failed, when the table set moved, or when the target already holds it.
   */
  takes(c: StreamCommit): boolean {
    const tx = this.open.get(c.xid);
    if (!tx) return false;
    if (!tx.failed && tx.tablesVersion === this.ctx.main.tableSetVersion && c.endLsn > this.ctx.main.applied) return true;
    // Synchronous up to its first wait: the connection is let go before the replay starts.
    void this.abandon(tx, tx.tablesVersion !== this.ctx.main.tableSetVersion ? 'the set of synced tables changed' : 'the target already holds it');
    this.finish(tx);
    return false;
  }

  /**
   * Commits it with its position (the caller has committed everything before it), and hands back
   * the relations it described, which the main applier must learn. On failure it is dropped and
   * null returned: the stream then replays it from the spool.
   */
  async commit(c: StreamCommit, writePosition: PositionWriter): Promise<{ done: CheckpointResult; relations: Change[] } | null> {
    const tx = this.open.get(c.xid);
    this.lastCommitted = null;
    if (!tx) return null;
    try {
      if (tx.failed || !tx.applier || !tx.client) return null;
      tx.applier.apply({ tag: 'commit', endLsn: c.endLsn, commitTime: c.commitTime });
      const done = await checkpoint(tx.client, tx.applier, writePosition);
      if (!done) throw new Error('nothing to commit');
      this.lastCommitted = c.xid;
      this.applied.transactions++;
      this.applied.changes += done.changes;
      this.spare.push(tx.client);
      return { done, relations: [...tx.relations.values()] };
    } catch (err) {
      await this.abandon(tx, `its commit failed: ${errorMessage(err)}`);
      return null;
    } finally {
      this.finish(tx);
    }
  }

  /** Did the commit of `xid` go through here (else the stream replays it)? */
  committed(xid: number): boolean {
    return this.lastCommitted === xid;
  }

  /** Open target transactions roll back as their connections end. */
  async close(): Promise<void> {
    const clients = [...this.spare.splice(0), ...[...this.open.values()].flatMap((tx) => (tx.client ? [tx.client] : []))];
    for (const tx of [...this.open.values()]) this.finish(tx);
    await Promise.all(clients.map((c) => this.dropConnection(c, false)));
  }

  private finish(tx: OpenTransaction): void {
    this.open.delete(tx.xid);
    if (this.open.size === 0) {
      clearInterval(this.watchTimer);
      this.watchTimer = undefined;
    }
  }

  private async connection(): Promise<pg.Client> {
    const spare = this.spare.pop();
    if (spare) return spare;
    const client = await connect(this.ctx.target, { applicationName: 'pg_live_sync_apply_open' });
    try {
      // As the main connection; a lock held elsewhere on the target past lock_timeout drops it
      // to the spool rather than holding the stream; a role's idle timeout must not end it between segments.
      await client.query(`SET session_replication_role = replica; SET lock_timeout = '10s'; SET idle_in_transaction_session_timeout = 0; SET statement_timeout = 0`);
    } catch (err) {
      await client.end().catch(() => undefined);
      throw err;
    }
    return client;
  }

  /** Drops an open target transaction: its connection goes, and with it its locks. */
  private async abandon(tx: OpenTransaction, why: string): Promise<void> {
    if (tx.failed) return;
    tx.failed = true;
    this.ctx.log('info', `source transaction ${tx.xid}: applying it while open stopped (${why}); it is applied from the spool at its commit`);
    const client = tx.client;
    tx.client = null;
    if (client) await this.dropConnection(client);
  }

  private async dropConnection(client: pg.Client, terminate = true): Promise<void> {
    // A statement waiting on a lock would keep the connection (and its locks) until it ends.
    if (terminate) await this.ctx.watch.query('SELECT pg_terminate_backend($1)', [processId(client)]).catch(() => undefined);
    await Promise.race([client.end().catch(() => undefined), new Promise((r) => setTimeout(r, 2_000).unref())]);
  }

  /**
   * One of our target connections (the main one or another open transaction's) waiting on an
   * open transaction's locks: the stream would wait for it forever, so that one is dropped.
   */
  private async watchLocks(): Promise<void> {
    if (this.watching) return;
    const holders = new Map<number, OpenTransaction>();
    for (const tx of this.open.values()) if (!tx.failed && tx.client) holders.set(processId(tx.client), tx);
    if (holders.size === 0) return;
    this.watching = true;
    try {
      const pids = [processId(this.ctx.mainConnection), ...holders.keys()];
      const r = await this.ctx.watch.query('SELECT DISTINCT unnest(pg_blocking_pids(p)) AS blocker FROM unnest($1::int[]) AS p', [pids]);
      for (const row of r.rows as { blocker: number }[]) {
        const tx = holders.get(row.blocker);
        if (tx && this.open.get(tx.xid) === tx) await this.abandon(tx, 'another apply connection waited on its locks on the target');
      }
    } catch {
      // The watch connection's trouble is the engine's to see; the next tick tries again.
    } finally {
      this.watching = false;
    }
  }
}

function savepoint(subxid: number): string {
  return quoteIdent(`pg_live_sync_${subxid}`);
}

function processId(client: pg.Client): number {
  return (client as unknown as { processID: number }).processID;
}
