/**
 * The extension runs the engine off its own thread by forking this CLI (`pg-live-sync serve-ipc`),
 * the same engine a server runs. These are the only messages on that channel. Connection URLs
 * (with passwords) travel in `start`, never in argv or the environment, where `ps` would show them.
 */
import { formatLsn } from '../engine/lsn';
import type { LogLevel, SyncOptions, SyncPhase, SyncStatus } from '../engine/types';

export type ToEngine = { type: 'start'; options: SyncOptions } | { type: 'stop' };

export interface StatusJson {
  subscription: string;
  phase: SyncPhase;
  appliedLsn: string | null;
  lagBytes: number;
  lagSeconds: number;
  changesApplied: number;
  transactionsApplied: number;
  tables: {
    schema: string; table: string; targetSchema: string; targetTable: string; state: 'i' | 'd' | 'f' | 's' | 'r';
    lsn: string | null; removed: boolean; rowsCopied: number; bytesCopied: number;
    approximateRows: number; approximateSize: number; lastError: string | null;
    missingUpdates: number; missingDeletes: number;
    chunks?: { done: number; total: number };
  }[];
}

export type FromEngine =
  | { type: 'log'; level: LogLevel; message: string }
  | { type: 'status'; status: StatusJson }
  /** The run ended: cleanly (error null) or with the one-line error the CLI would print. */
  | { type: 'exit'; error: string | null };

export function statusToJson(s: SyncStatus): StatusJson {
  return {
    ...s,
    appliedLsn: s.appliedLsn === null ? null : formatLsn(s.appliedLsn),
    tables: s.tables.map((t) => ({ ...t, lsn: t.lsn === null ? null : formatLsn(t.lsn) })),
  };
}
