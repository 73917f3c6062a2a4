/**
 * Stage 4: apply changes to the target in source commit order. Source transactions are grouped
 * into target transactions (the checkpoint stage closes a group); a group never splits a source
 * transaction, so each source transaction is atomic on the target. Nothing is held in memory but
 * one batch of consecutive INSERTs, whatever the size of a transaction.
 */
import type pg from 'pg';
import { targetColumns } from './catalog';
import { emptyTables, qualified, quoteIdent } from './connection';
import { SyncError } from './errors';
import type { Lsn } from './lsn';
import { UNCHANGED_TOAST, type Change, type Relation, type Tuple } from './stream';
import type { Logger, SyncedTable } from './types';

const INSERT_BATCH_ROWS = 1000;
const MAX_PARAMS = 60_000;

interface RelationPlan {
  relation: Relation;
  table: SyncedTable;
  targetName: string;
  columns: string[];
  keyIndexes: number[];
  full: boolean;
}

/** The uncommitted work on the target: what a checkpoint will make durable. */
export interface OpenGroup {
  startedAt: number;
  transactions: number;
  changes: number;
  /** End LSN and commit time of the last source transaction applied in this group. */
  lastCommitLsn: Lsn | null;
  lastCommitTime: bigint | null;
}

export class Applier {
  private readonly plans = new Map<number, RelationPlan | null>();
  private readonly warned = new Set<string>();
  private readonly tables: Map<string, SyncedTable>;
  private batch: { plan: RelationPlan; rows: Tuple[] } | null = null;
  private skipping = false;
  private inSource = false;
  group: OpenGroup | null = null;

  constructor(
    private readonly target: pg.Client,
    tables: SyncedTable[],
    /** Transactions whose commit ends at or before this are already on the target. */
    private appliedLsn: Lsn,
    private readonly log: Logger,
  ) {
    this.tables = new Map(tables.map((t) => [tableKey(t.source.schema, t.source.table), t]));
  }

  /** True between a source BEGIN and its COMMIT: the group cannot be closed here. */
  get inSourceTransaction(): boolean {
    return this.inSource;
  }

  async apply(change: Change): Promise<void> {
    switch (change.tag) {
      case 'begin':
        this.inSource = true;
        // Replayed after a crash: the target already committed it together with its LSN.
        this.skipping = change.finalLsn < this.appliedLsn;
        if (!this.skipping && !this.group) {
          await this.target.query('BEGIN');
          this.group = { startedAt: Date.now(), transactions: 0, changes: 0, lastCommitLsn: null, lastCommitTime: null };
        }
        return;
      case 'commit':
        this.inSource = false;
        if (this.skipping) {
          this.skipping = false;
          return;
        }
        if (this.group) {
          this.group.transactions++;
          this.group.lastCommitLsn = change.endLsn;
          this.group.lastCommitTime = change.commitTime;
        }
        return;
      case 'relation':
        await this.flushInserts();
        this.plans.set(change.relation.relationOid, await this.plan(change.relation));
        return;
      case 'ignored':
        return;
    }
    if (this.skipping) return;
    if (!this.group) throw new Error(`pgoutput sent ${change.tag} outside a transaction`);
    this.group.changes++;
    switch (change.tag) {
      case 'insert': {
        const plan = this.planFor(change.relationOid);
        if (!plan) return;
        if (this.batch && this.batch.plan !== plan) await this.flushInserts();
        if (!this.batch) this.batch = { plan, rows: [] };
        this.batch.rows.push(change.new);
        if (this.batch.rows.length >= INSERT_BATCH_ROWS || this.batch.rows.length * plan.columns.length >= MAX_PARAMS - plan.columns.length) {
          await this.flushInserts();
        }
        return;
      }
      case 'update':
        await this.flushInserts();
        return this.update(change.relationOid, change.key ?? change.old, change.new);
      case 'delete':
        await this.flushInserts();
        return this.delete(change.relationOid, change.key ?? change.old);
      case 'truncate': {
        await this.flushInserts();
        const names = change.relationOids.map((oid) => this.planFor(oid)?.targetName).filter((n): n is string => !!n);
        if (names.length > 0) await emptyTables(this.target, names, change.restartIdentity);
        return;
      }
    }
  }

  /** Called by the checkpoint just before COMMIT. */
  async flushInserts(): Promise<void> {
    const b = this.batch;
    if (!b) return;
    this.batch = null;
    const width = b.plan.columns.length;
    const params: (string | null)[] = new Array(b.rows.length * width);
    const rowsSql: string[] = new Array(b.rows.length);
    let p = 0;
    for (let r = 0; r < b.rows.length; r++) {
      const row = b.rows[r];
      const refs = new Array<string>(width);
      for (let c = 0; c < width; c++) {
        params[p] = row[c] as string | null;
        refs[c] = `$${++p}`;
      }
      rowsSql[r] = `(${refs.join(',')})`;
    }
    await this.target.query(`INSERT INTO ${b.plan.targetName} (${b.plan.columns.join(', ')}) OVERRIDING SYSTEM VALUE VALUES ${rowsSql.join(',')}`, params);
  }

  /** The group is durable on the target (checkpoint committed it). */
  committed(lsn: Lsn | null): void {
    if (lsn !== null) this.appliedLsn = lsn;
    this.group = null;
  }

  private planFor(relationOid: number): RelationPlan | null {
    const plan = this.plans.get(relationOid);
    if (plan === undefined) throw new Error(`pgoutput sent a change for relation ${relationOid} before describing it`);
    return plan;
  }

  private async plan(relation: Relation): Promise<RelationPlan | null> {
    const table = this.tables.get(tableKey(relation.schema, relation.table));
    const sourceName = qualified(relation.schema, relation.table);
    if (!table) {
      if (!this.warned.has(sourceName)) {
        this.warned.add(sourceName);
        this.log('warn', `${sourceName} is published but was not part of this sync when it started; its changes are skipped (restart with a new subscription to include it)`);
      }
      return null;
    }
    const known = new Set(table.columns.map((c) => c.name));
    const added = relation.columns.filter((c) => !known.has(c.name));
    if (added.length > 0) {
      const cols = (await targetColumns(this.target, table.target)) ?? [];
      const present = new Set(cols.filter((c) => !c.generated).map((c) => c.name));
      const missing = added.find((c) => !present.has(c.name));
      if (missing) {
        throw new SyncError(`source table ${sourceName} now has column ${quoteIdent(missing.name)} that target table ${qualified(table.target.schema, table.target.table)} lacks; add it on the target (ALTER TABLE ... ADD COLUMN) and run again`, 'target_column');
      }
    }
    const keyIndexes = relation.columns.flatMap((c, i) => (c.isKey ? [i] : []));
    const full = relation.replicaIdentity === 'full';
    return {
      relation,
      table,
      targetName: qualified(table.target.schema, table.target.table),
      columns: relation.columns.map((c) => quoteIdent(c.name)),
      keyIndexes,
      full,
    };
  }

  /**
   * Rows are found by their replica identity. For FULL every old value is compared, as text so
   * types without an equality operator (json, point) work, and exactly one row is touched (by
   * tableoid and ctid), so duplicate rows stay duplicates.
   */
  private whereClause(plan: RelationPlan, identity: Tuple, params: (string | null)[]): string {
    if (plan.full) {
      const conds: string[] = [];
      identity.forEach((v, i) => {
        if (v === UNCHANGED_TOAST) return;
        if (v === null) conds.push(`${plan.columns[i]} IS NULL`);
        else {
          params.push(v);
          conds.push(`${plan.columns[i]}::text = $${params.length}`);
        }
      });
      return `(tableoid, ctid) = (SELECT tableoid, ctid FROM ${plan.targetName} WHERE ${conds.join(' AND ') || 'true'} LIMIT 1)`;
    }
    if (plan.keyIndexes.length === 0) {
      throw new SyncError(`${qualified(plan.relation.schema, plan.relation.table)} has no replica identity on the source, so its UPDATE or DELETE cannot be applied; on the source run ALTER TABLE ... REPLICA IDENTITY FULL (or add a primary key)`, 'replica_identity');
    }
    return plan.keyIndexes
      .map((i) => {
        const v = identity[i];
        if (v === UNCHANGED_TOAST || v === null) {
          throw new SyncError(`key column ${plan.columns[i]} of ${plan.targetName} arrived without a value; give the source table a primary key or REPLICA IDENTITY FULL`, 'replica_identity');
        }
        params.push(v);
        return `${plan.columns[i]} = $${params.length}`;
      })
      .join(' AND ');
  }

  private async update(relationOid: number, identity: Tuple | null, row: Tuple): Promise<void> {
    const plan = this.planFor(relationOid);
    if (!plan) return;
    const params: (string | null)[] = [];
    const sets: string[] = [];
    row.forEach((v, i) => {
      if (v === UNCHANGED_TOAST) return; // the target already holds it; never overwrite
      params.push(v);
      sets.push(`${plan.columns[i]} = $${params.length}`);
    });
    if (sets.length === 0) return;
    const where = this.whereClause(plan, identity ?? row, params);
    const r = await this.target.query(`UPDATE ${plan.targetName} SET ${sets.join(', ')} WHERE ${where}`, params);
    if (r.rowCount === 0) this.missingRow('update', plan);
  }

  private async delete(relationOid: number, identity: Tuple | null): Promise<void> {
    const plan = this.planFor(relationOid);
    if (!plan) return;
    if (!identity) throw new Error(`pgoutput sent a DELETE on ${plan.targetName} without an old key`);
    const params: (string | null)[] = [];
    const where = this.whereClause(plan, identity, params);
    const r = await this.target.query(`DELETE FROM ${plan.targetName} WHERE ${where}`, params);
    if (r.rowCount === 0) this.missingRow('delete', plan);
  }

  private missingRow(op: string, plan: RelationPlan): void {
    // As PostgreSQL's own subscriber does: the row is gone on the target; report and go on.
    this.log('warn', `${op} found no row in ${plan.targetName}: the target was changed outside the sync`);
  }
}

function tableKey(schema: string, table: string): string {
  return `${schema}\u0000${table}`;
}
