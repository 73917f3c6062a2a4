/**
 * Stage 5: make a group of applied source transactions durable. The applied LSN is written in the
 * same target transaction as the changes, and only after COMMIT is it acknowledged to the source,
 * so a crash anywhere replays from exactly what the target holds: nothing lost, nothing twice.
 */
import type pg from 'pg';
import type { Applier, OpenGroup } from './apply';
import type { Lsn } from './lsn';
import { writeAppliedLsn } from './state';
import type { ReplicationStream } from './stream';

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
}

/** Commits the open group; the caller guarantees no source transaction is half applied. */
export async function checkpoint(target: pg.Client, subscription: string, applier: Applier, stream: ReplicationStream): Promise<CheckpointResult | null> {
  const group = applier.group;
  if (!group) return null;
  if (applier.inSourceTransaction) throw new Error('checkpoint inside a source transaction');
  await applier.flush();
  const lsn = group.lastCommitLsn;
  if (lsn === null) {
    await target.query('COMMIT');
    applier.committed(null);
    return null;
  }
  await writeAppliedLsn(target, subscription, lsn, group.lastCommitTime);
  await target.query('COMMIT');
  applier.committed(lsn);
  stream.acknowledge(lsn, true);
  return { lsn, transactions: group.transactions, changes: group.changes };
}

/** Stopping mid-transaction: the open group is discarded; the source sends it again on restart. */
export async function abandonGroup(target: pg.Client, applier: Applier): Promise<void> {
  if (!applier.group) return;
  await target.query('ROLLBACK');
}
