/**
 * The one message protocol between the progress panel (webview/) and the extension host
 * (src/extension/panel.ts). Both sides import this file; nothing else crosses the boundary.
 * Everything here is plain JSON: LSNs travel as their text form, times as epoch milliseconds.
 */

export type TableStateCode = 'i' | 'd' | 'f' | 's' | 'r';

/** What the sync as a whole is doing, in words the header shows. */
export type SyncActivity = 'starting' | 'copying' | 'streaming' | 'paused' | 'stopped' | 'error';

/** `local`: run by this window (controllable). `attached`: run elsewhere, read from the target. */
export type SyncMode = 'local' | 'attached';

export interface PanelTable {
  /** `schema.table` on the source; unique within a sync. */
  key: string;
  schema: string;
  table: string;
  targetSchema: string;
  targetTable: string;
  state: TableStateCode;
  /** Left the publication: no longer synced, target data kept. */
  removed: boolean;
  rowsCopied: number;
  bytesCopied: number;
  /** Planner estimates from the source (pg_class), so progress can pass 100 % a little. */
  approximateRows: number;
  approximateSize: number;
  /** Rows per second over the last samples while copying; null when not copying. */
  copyRowsPerSecond: number | null;
  etaSeconds: number | null;
  /** The table's last error, with its fix, as the engine wrote it. */
  lastError: string | null;
  /** A table copied in page ranges (--copy-chunk-size): chunks committed / planned; null otherwise. */
  chunksDone?: number | null;
  chunksTotal?: number | null;
  /** Source UPDATEs and DELETEs that found no row on the target (it was changed outside the sync). */
  missingUpdates?: number;
  missingDeletes?: number;
}

export interface PanelHeader {
  name: string;
  mode: SyncMode;
  /** host:port/database, never a user or password. */
  source: string;
  target: string;
  publications: string[];
  activity: SyncActivity;
  appliedLsn: string | null;
  lagBytes: number | null;
  lagSeconds: number | null;
  changesPerSecond: number | null;
  retainedWalBytes: number | null;
  /** max_slot_wal_keep_size in bytes; null when unlimited or unknown. */
  walKeepBytes: number | null;
  /** WAL the source may still write before it invalidates the slot (safe_wal_size); null without a limit. */
  safeWalBytes: number | null;
  /** At the source's recent write rate; null when unknown or when there is no limit. */
  secondsToInvalidation: number | null;
  /** The sync's last error (stopped runs), with its fix. */
  lastError: string | null;
  /** When the host last read this state (epoch ms). */
  updatedAt: number;
}

/** One point of the lag and throughput charts. */
export interface PanelSample {
  t: number;
  lagBytes: number | null;
  lagSeconds: number | null;
  changesPerSecond: number | null;
  copyBytesPerSecond: number | null;
}

export type HostToPanel =
  /** The whole picture: sent in answer to `ready` and whenever the panel switches sync. */
  | { type: 'state'; header: PanelHeader; tables: PanelTable[]; samples: PanelSample[] }
  /** Only what changed since the last message; `tables` holds changed or new rows. */
  | { type: 'update'; header: PanelHeader; tables: PanelTable[]; removedKeys: string[]; sample: PanelSample | null }
  /** A one-line outcome of an action (e.g. "status copied", or an error with its fix). */
  | { type: 'notice'; level: 'info' | 'error'; text: string };

export type PanelAction = 'pause' | 'resume' | 'stop' | 'drop' | 'verify' | 'openLogs' | 'copyStatus';

export type PanelToHost =
  /** Posted once the panel's script listens, so the first state is never lost. */
  | { type: 'ready' }
  | { type: 'action'; action: PanelAction }
  | { type: 'resyncTable'; key: string };

const ACTIONS: readonly PanelAction[] = ['pause', 'resume', 'stop', 'drop', 'verify', 'openLogs', 'copyStatus'];

/** The host trusts nothing from the webview: anything not exactly a PanelToHost is dropped. */
export function parsePanelMessage(raw: unknown): PanelToHost | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const m = raw as Record<string, unknown>;
  if (m.type === 'ready' && Object.keys(m).length === 1) return { type: 'ready' };
  if (m.type === 'action' && typeof m.action === 'string' && (ACTIONS as readonly string[]).includes(m.action) && Object.keys(m).length === 2) {
    return { type: 'action', action: m.action as PanelAction };
  }
  if (m.type === 'resyncTable' && typeof m.key === 'string' && m.key.length > 0 && m.key.length <= 300 && Object.keys(m).length === 2) {
    return { type: 'resyncTable', key: m.key };
  }
  return null;
}

/** Words for the per-table states, as the CLI prints them. */
export const STATE_WORDS: Record<TableStateCode, string> = {
  i: 'init',
  d: 'copying',
  f: 'catching up',
  s: 'synced',
  r: 'ready',
};
