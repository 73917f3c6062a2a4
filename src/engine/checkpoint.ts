/**
 * Stage 5: make a group of applied source transactions durable. The position is written in the
 * same target transaction as the changes, and only after COMMIT is it acknowledged to the source,
 * so a crash anywhere replays from exactly what the target holds: nothing lost, nothing twice.
 */
import type pg from 'pg';
import type { Applier, MissingRowCount, MissingRowCounts, OpenGroup } from './apply';
import type { Lsn } from './lsn';

/** Bigger groups mean fewer commits; these bounds keep lag and lock time small. */
const MAX_GROUP_TRANSACTIONS = 2_000;
const MAX_GROUP_CHANGES = 20_000;
const MAX_GROUP_AGE_MS = 500;

export function checkpointDue(group: OpenGroup | null): boolean {
  if (!group) return false;
  return group.transactions >= MAX_GROUP_TRANSACTIONS || group.changes >= MAX_GROUP_CHANGES || Date.now() - group.startedAt >= MAX_GROUP_AGE_MS;
}

export interface CheckpointResult {
  lsn: Lsn;
  transactions: number;
  changes: number;
  /** Per table, the group's changes that found no row on the target (written with its position). */
  missing: MissingRowCount[];
}

/** Writes, inside the group's transaction, the position the group reaches (and any state it implies). */
export type PositionWriter = (client: pg.Client, lsn: Lsn, commitTimeMicros: bigint | null, missing: MissingRowCounts) => Promise<void>;

/**
 * Commits the open group; the caller guarantees no source transaction is half applied. Returns
 * what was committed; the caller acknowledges `lsn` to the source only after this returns.
 */
export async function checkpoint(target: pg.Client, applier: Applier, writePosition: PositionWriter): Promise<CheckpointResult | null> {
  const group = applier.group;
  if (!group) return null;
  if (applier.inSourceTransaction) throw new Error('checkpoint inside a source transaction');
  await applier.flush();
  const lsn = group.lastCommitLsn;
  const missing = applier.missingRowCounts();
  if (lsn !== null) await writePosition(target, lsn, group.lastCommitTime, missing);
  await target.query('COMMIT');
  applier.committed(lsn);
  return lsn === null ? null : { lsn, transactions: group.transactions, changes: group.changes, missing: missing.taken };
}

/**
 * The same without waiting for the target: the group's position and COMMIT are sent behind its
 * statements and the next group may start at once. The returned promise settles when COMMIT has
 * answered (rejecting if the group failed); the caller acknowledges only then, and waits for it
 * before any other checkpoint, so a later group never commits unless this one did.
 */
export async function checkpointPipelined(applier: Applier, position: (lsn: Lsn, commitTimeMicros: bigint | null, missing: MissingRowCounts) => [string, unknown[]]): Promise<{ committed: Promise<CheckpointResult> } | null> {
  const group = applier.group;
  if (!group || group.lastCommitLsn === null) return null;
  if (applier.inSourceTransaction) throw new Error('checkpoint inside a source transaction');
  const lsn = group.lastCommitLsn;
  const missing = applier.missingRowCounts();
  const { transactions, changes } = group;
  const { committed } = await applier.commitPipelined(lsn, [position(lsn, group.lastCommitTime, missing), ['COMMIT', []]]);
  // Taken when the position statement was sent, which COMMIT's answer follows.
  return { committed: committed.then(() => ({ lsn, transactions, changes, missing: missing.taken })) };
}

/** Stopping mid-transaction: the open group is discarded; the source sends it again on restart. */
export async function abandonGroup(target: pg.Client, applier: Applier): Promise<void> {
  if (!applier.group) return;
  applier.committed(null);
  await target.query('ROLLBACK');
}
