/**
 * Turns what we know of a sync (a live run's status, or the target's state read from outside)
 * into the panel's and the tree's picture, with rates from successive readings. No `vscode`.
 */
import path from 'node:path';
import type { StatusJson } from '../cli/ipc';
import { tableKey, type Endpoint } from '../engine/connection';
import { DDL_KINDS, type DdlKind } from '../engine/drift';
import { formatBytes, parseSize } from '../engine/units';
import { formatLsn } from '../engine/lsn';
import { parseTableMap } from '../engine/tablemap';
import type { SyncOptions, TableMap } from '../engine/types';
import type { SyncReport } from '../engine/report';
import type { SlotInfo } from '../engine/slot';
import { secondsToInvalidation, walWriteRate } from '../engine/walHeadroom';
import type { PanelHeader, PanelSample, PanelTable, SyncActivity, SyncMode } from '../../webview/protocol';
import { STATE_WORDS } from '../../webview/protocol';
import { activityBadge, countWords, rowStateWord } from '../../webview/format';
import type { PanelSnapshot } from './panelSource';

/** A named sync as the `pgLiveSync.syncs` setting stores it. */
export interface SyncDefinition {
  name: string;
  source: string;
  target: string;
  publications: string[];
  tableMaps: unknown[];
  tableSyncWorkers: number;
  copyData: boolean;
  /** Create the published tables the target lacks before copying (`run --create-tables`). */
  createTables: boolean;
  /** Source DDL applied to the target as it streams by (`run --apply-ddl`). */
  applyDdl: DdlKind[];
  /** Run elsewhere (the CLI on a server); this window only reads the target's state. */
  attach: boolean;
  /** `copyChunkSize` in bytes (`run --copy-chunk-size`); absent: the engine's default. */
  copyChunkBytes?: number;
  /**
   * Source transactions still open (`run --streaming`): `parallel` (the default) streamed and also
   * applied as they arrive, `on` streamed and applied from the local spool at their commit, `off`
   * kept on the source until their commit.
   */
  streaming: StreamingMode;
  /** Where streamed open transactions wait for their commit (`run --spool-dir`); absent: the engine's default. */
  spoolDir?: string;
}

export const STREAMING_MODES = ['parallel', 'on', 'off'] as const;
export type StreamingMode = (typeof STREAMING_MODES)[number];

export function sanitizeSyncDefinition(raw: unknown): SyncDefinition | null {
  if (typeof raw !== 'object' || raw === null) return null;
  const r = raw as Record<string, unknown>;
  if (typeof r.name !== 'string' || typeof r.source !== 'string' || typeof r.target !== 'string') return null;
  const chunkBytes = typeof r.copyChunkSize === 'string' ? parseSize(r.copyChunkSize) : typeof r.copyChunkSize === 'number' && r.copyChunkSize >= 0 ? Math.floor(r.copyChunkSize) : null;
  // The engine runs in a child process whose working folder is not the user's: only an absolute folder means one place.
  const spoolDir = typeof r.spoolDir === 'string' && path.isAbsolute(r.spoolDir.trim()) ? r.spoolDir.trim() : null;
  return {
    name: r.name,
    source: r.source,
    target: r.target,
    publications: Array.isArray(r.publications) ? r.publications.filter((p): p is string => typeof p === 'string') : [],
    tableMaps: Array.isArray(r.tableMaps) ? r.tableMaps : [],
    tableSyncWorkers: typeof r.tableSyncWorkers === 'number' && Number.isInteger(r.tableSyncWorkers) ? r.tableSyncWorkers : 4,
    copyData: r.copyData !== false,
    createTables: r.createTables === true,
    applyDdl: Array.isArray(r.applyDdl) ? r.applyDdl.filter((k): k is DdlKind => (DDL_KINDS as readonly unknown[]).includes(k)) : [],
    attach: r.attach === true,
    ...(chunkBytes !== null ? { copyChunkBytes: chunkBytes } : {}),
    streaming: (STREAMING_MODES as readonly unknown[]).includes(r.streaming) ? r.streaming as StreamingMode : 'parallel',
    ...(spoolDir !== null ? { spoolDir } : {}),
  };
}

/**
 * What the engine is asked to run for a sync, as `pg-live-sync run` builds it from its flags:
 * `streaming` off is `streaming: false`, on is `applyWhileOpen: false`, parallel the engine's defaults.
 */
export function syncEngineOptions(def: SyncDefinition, source: Endpoint, target: Endpoint): SyncOptions {
  return {
    source: source.url, target: target.url, publications: def.publications, subscription: def.name,
    tableMaps: syncTableMaps(def), tableSyncWorkers: def.tableSyncWorkers, copyData: def.copyData,
    createTables: def.createTables, applyDdl: def.applyDdl, copyChunkBytes: def.copyChunkBytes,
    ...(def.streaming === 'off' ? { streaming: false } : def.streaming === 'on' ? { applyWhileOpen: false } : {}),
    ...(def.spoolDir !== undefined ? { spoolDir: def.spoolDir } : {}),
    configuredIn: { source: source.configuredIn!, target: target.configuredIn! },
  };
}

/**
 * The setting's table maps as the engine takes them, each read as `--table-map` reads it: a map
 * edited by hand in settings.json (a "columns" map included) is checked, not passed on blindly.
 */
export function syncTableMaps(def: SyncDefinition): TableMap[] {
  return def.tableMaps.map((m) => parseTableMap(JSON.stringify(m)));
}

/** What one reading says; the tracker below adds rates and history. */
export interface Reading {
  at: number;
  activity: SyncActivity;
  appliedLsn: string | null;
  lagBytes: number | null;
  lagSeconds: number | null;
  /** Cumulative, for a rate; null where a reading cannot know it (attached). */
  changesApplied: number | null;
  /** The source's slot, when read, and when it was read (for the WAL write rate). */
  slot: SlotReading | null;
  lastError: string | null;
  tables: Omit<PanelTable, 'copyRowsPerSecond' | 'etaSeconds'>[];
}

export interface SlotReading {
  at: number;
  info: SlotInfo;
}

export function readingFromStatus(s: StatusJson, at: number, slot: SlotReading | null): Reading {
  const copying = s.tables.some((t) => !t.removed && (t.state === 'i' || t.state === 'd'));
  const activity: SyncActivity =
    s.phase === 'starting' ? 'starting' : s.phase === 'stopping' || s.phase === 'stopped' ? 'stopped' : copying || s.phase === 'copying' ? 'copying' : 'streaming';
  return {
    at,
    activity,
    appliedLsn: s.appliedLsn,
    lagBytes: s.lagBytes,
    lagSeconds: s.lagSeconds,
    changesApplied: s.changesApplied,
    slot,
    lastError: null,
    tables: s.tables.map((t) => ({
      key: tableKey(t.schema, t.table), schema: t.schema, table: t.table, targetSchema: t.targetSchema, targetTable: t.targetTable,
      state: t.state, removed: t.removed, rowsCopied: t.rowsCopied, bytesCopied: t.bytesCopied,
      approximateRows: t.approximateRows, approximateSize: t.approximateSize, lastError: t.lastError,
      chunksDone: t.chunks?.done ?? null, chunksTotal: t.chunks?.total ?? null,
      missingUpdates: t.missingUpdates, missingDeletes: t.missingDeletes,
    })),
  };
}

/** A reading from the target's state (attached, or a local sync that is not running). */
export function readingFromReport(r: SyncReport, at: number, notRunning: 'paused' | 'stopped'): Reading {
  const live = r.tables.filter((t) => !t.removed);
  const copying = live.some((t) => t.state === 'i' || t.state === 'd');
  const activity: SyncActivity = r.running ? (copying ? 'copying' : 'streaming') : r.subscription.lastError ? 'error' : notRunning;
  const applied = r.subscription.appliedLsn ?? r.subscription.consistentLsn;
  return {
    at,
    activity,
    appliedLsn: applied === null ? null : formatLsn(applied),
    lagBytes: r.lagBytes,
    lagSeconds: r.lagSeconds,
    changesApplied: null,
    slot: r.slot ? { at, info: r.slot } : null,
    lastError: r.subscription.lastError,
    tables: r.tables.map((t) => ({
      key: tableKey(t.schema, t.table), schema: t.schema, table: t.table, targetSchema: t.targetSchema, targetTable: t.targetTable,
      state: t.state, removed: t.removed, rowsCopied: t.rowsCopied, bytesCopied: t.bytesCopied,
      approximateRows: t.approximateRows, approximateSize: t.approximateSize, lastError: t.lastError,
      chunksDone: t.chunks?.done ?? null, chunksTotal: t.chunks?.total ?? null,
      missingUpdates: t.missingUpdates, missingDeletes: t.missingDeletes,
    })),
  };
}

const HISTORY_MS = 10 * 60_000;
/** Rates over at least this window, so one late reading does not make a spike. */
const RATE_WINDOW_MS = 5_000;

/** Keeps a sync's readings: rates, ETAs and the charts' history. */
export class SyncTracker {
  private readonly samples: PanelSample[] = [];
  private readonly recent: Reading[] = [];
  private last: Reading | null = null;
  private lastSlot: SlotReading | null = null;
  private walBytesPerSecond: number | null = null;

  constructor(private readonly header: Omit<PanelHeader, 'activity' | 'appliedLsn' | 'lagBytes' | 'lagSeconds' | 'changesPerSecond' | 'retainedWalBytes' | 'walKeepBytes' | 'safeWalBytes' | 'secondsToInvalidation' | 'lastError' | 'updatedAt'>) {}

  add(r: Reading): void {
    this.last = r;
    // The slot is read less often than the status: a rate between two different slot readings.
    if (r.slot && r.slot.at !== this.lastSlot?.at) {
      if (this.lastSlot) this.walBytesPerSecond = walWriteRate(this.lastSlot.at < r.slot.at ? { at: this.lastSlot.at, slot: this.lastSlot.info } : null, { at: r.slot.at, slot: r.slot.info });
      this.lastSlot = r.slot;
    }
    this.recent.push(r);
    while (this.recent.length > 2 && this.recent[1].at <= r.at - RATE_WINDOW_MS) this.recent.shift();
    const base = this.recent[0];
    const dt = (r.at - base.at) / 1000;
    const changesPerSecond = dt > 0 && r.changesApplied !== null && base.changesApplied !== null ? Math.max(0, (r.changesApplied - base.changesApplied) / dt) : null;
    const copiedNow = r.tables.reduce((a, t) => a + t.bytesCopied, 0);
    const copiedThen = base.tables.reduce((a, t) => a + t.bytesCopied, 0);
    const copyBytesPerSecond = dt > 0 && r.tables.some((t) => t.state === 'd') ? Math.max(0, (copiedNow - copiedThen) / dt) : null;
    const previous = this.samples.at(-1);
    // One point per second is plenty for a ten-minute chart.
    if (!previous || r.at - previous.t >= 1_000) {
      this.samples.push({ t: r.at, lagBytes: r.lagBytes, lagSeconds: r.lagSeconds, changesPerSecond, copyBytesPerSecond });
      while (this.samples.length > 0 && this.samples[0].t < r.at - HISTORY_MS) this.samples.shift();
    }
  }

  snapshot(): PanelSnapshot | null {
    const r = this.last;
    if (!r) return null;
    const base = this.recent[0];
    const dt = (r.at - base.at) / 1000;
    const before = new Map(base.tables.map((t) => [t.key, t]));
    const tables: PanelTable[] = r.tables.map((t) => {
      let copyRowsPerSecond: number | null = null;
      let etaSeconds: number | null = null;
      if (t.state === 'd' && dt > 0) {
        const then = before.get(t.key);
        copyRowsPerSecond = then ? Math.max(0, (t.rowsCopied - then.rowsCopied) / dt) : null;
        if (copyRowsPerSecond && t.approximateRows > t.rowsCopied) etaSeconds = (t.approximateRows - t.rowsCopied) / copyRowsPerSecond;
      }
      return { ...t, copyRowsPerSecond, etaSeconds };
    });
    const latest = this.samples.at(-1);
    return {
      header: {
        ...this.header,
        activity: r.activity,
        appliedLsn: r.appliedLsn,
        lagBytes: r.lagBytes,
        lagSeconds: r.lagSeconds,
        changesPerSecond: latest?.changesPerSecond ?? null,
        retainedWalBytes: r.slot?.info.retainedBytes ?? null,
        walKeepBytes: r.slot?.info.walKeepBytes ?? null,
        safeWalBytes: r.slot?.info.safeWalBytes ?? null,
        secondsToInvalidation: r.slot ? secondsToInvalidation(r.slot.info, this.walBytesPerSecond) : null,
        lastError: r.lastError,
        updatedAt: r.at,
      },
      tables,
      samples: [...this.samples],
    };
  }

  setMode(mode: SyncMode): void {
    this.header.mode = mode;
  }

  /** Marks the last reading as not running (the run ended), keeping its tables. */
  setActivity(activity: SyncActivity, lastError: string | null): void {
    if (this.last) this.last = { ...this.last, activity, lastError, at: Date.now() };
  }
}

/** The short text the Syncs view, the status bar and notifications use for a sync. */
export function describeActivity(s: PanelSnapshot): string {
  const live = s.tables.filter((t) => !t.removed);
  const h = s.header;
  const counts = countWords(s.tables.map(rowStateWord));
  const errors = counts.error;
  const ready = live.filter((t) => t.state === 'r').length;
  let text: string;
  switch (h.activity) {
    case 'copying':
      text = `copying ${live.filter((t) => t.state !== 'i' && t.state !== 'd').length}/${live.length}`;
      break;
    case 'streaming':
      text = `streaming, lag ${formatBytes(h.lagBytes ?? 0)}${ready < live.length ? `, ${ready}/${live.length} ready` : ''}`;
      break;
    default:
      text = h.activity;
  }
  if (errors === 0) return text;
  const tableErrors = `${errors} table error${errors > 1 ? 's' : ''}`;
  // The panel's badge and this text lead with the same word.
  return activityBadge(h.activity, counts) === 'error' && h.activity !== 'error' ? `error: ${tableErrors}; ${text}` : `${text}, ${tableErrors}`;
}

export function tableWord(t: Pick<PanelTable, 'state' | 'lastError' | 'removed'>): string {
  if (t.removed) return 'removed';
  if (t.lastError) return 'error';
  return STATE_WORDS[t.state];
}

/** Worst first: what the status bar shows when several syncs run. */
export function severity(s: PanelSnapshot): number {
  if (s.header.activity === 'error' || s.tables.some((t) => t.lastError && !t.removed)) return 5;
  if (s.header.activity === 'starting' || s.header.activity === 'copying') return 3;
  if (s.tables.some((t) => !t.removed && t.state !== 'r')) return 2;
  if (s.header.activity === 'paused' || s.header.activity === 'stopped') return 1;
  return 0;
}
