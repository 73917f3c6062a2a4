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
  const chunkBytes = r.copyChunkSize === undefined ? null : copyChunkBytes(r.copyChunkSize);
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

export type SettingScope = 'user' | 'workspace';

/** Where the user fixes a setting, in VS Code's words. */
function settingsCommand(scope: SettingScope): string {
  return scope === 'user' ? 'Preferences: Open User Settings (JSON)' : 'Preferences: Open Workspace Settings (JSON)';
}

const MAX_WORKERS = 64;

/**
 * What is wrong with one `pgLiveSync.syncs` entry, each as one line naming the setting, the value
 * and the fix; empty when nothing is. sanitizeSyncDefinition falls back to defaults quietly, so a
 * sync with problems is shown but neither run nor polled.
 */
export function syncDefinitionProblems(raw: unknown, scope: SettingScope): string[] {
  const settings = scope === 'user' ? 'your user settings' : "this folder's settings";
  const where = (name: string) => `pgLiveSync.syncs entry "${name}" in ${settings}`;
  const fix = settingsCommand(scope);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return [`pgLiveSync.syncs in ${settings} holds ${JSON.stringify(raw)}, not a sync: remove it (${fix})`];
  const r = raw as Record<string, unknown>;
  const name = typeof r.name === 'string' ? r.name : JSON.stringify(r.name ?? null);
  const out: string[] = [];
  const bad = (key: string, want: string) => out.push(`${where(name)}: "${key}" is ${r[key] === undefined ? 'missing' : JSON.stringify(r[key])}; ${want} (${fix})`);
  if (typeof r.name !== 'string') bad('name', 'set the sync\'s name, 1 to 50 lowercase letters, digits and underscores');
  else if (!/^[a-z0-9_]{1,50}$/.test(r.name)) bad('name', 'use 1 to 50 lowercase letters, digits and underscores (it names the replication slot)');
  for (const key of ['source', 'target']) if (typeof r[key] !== 'string' || (key === 'target' && !r[key])) bad(key, `set the name of a connection (${key === 'source' ? 'empty only for an attached sync' : 'the target'})`);
  if (r.source === '' && r.attach !== true) bad('source', 'set the name of the source connection');
  if (r.publications !== undefined && (!Array.isArray(r.publications) || r.publications.some((p) => typeof p !== 'string' || !p))) bad('publications', 'list publication names, e.g. ["app_pub"]');
  else if (r.attach !== true && (!Array.isArray(r.publications) || r.publications.length === 0)) bad('publications', 'list at least one publication of the source, e.g. ["app_pub"]');
  if (r.tableSyncWorkers !== undefined && !(Number.isInteger(r.tableSyncWorkers) && (r.tableSyncWorkers as number) >= 1 && (r.tableSyncWorkers as number) <= MAX_WORKERS)) {
    bad('tableSyncWorkers', `set a whole number from 1 to ${MAX_WORKERS} (default 4)`);
  }
  if (r.copyChunkSize !== undefined && copyChunkBytes(r.copyChunkSize) === null) bad('copyChunkSize', 'set a size of at least "1MiB", such as "256MiB" or "64MB", or "0" to never split a table');
  if (r.streaming !== undefined && !(STREAMING_MODES as readonly unknown[]).includes(r.streaming)) bad('streaming', `set one of ${STREAMING_MODES.map((m) => `"${m}"`).join(', ')}`);
  if (r.spoolDir !== undefined && !(typeof r.spoolDir === 'string' && path.isAbsolute(r.spoolDir.trim()))) bad('spoolDir', 'set an absolute folder path, or remove it for the default');
  for (const key of ['copyData', 'createTables', 'attach']) if (r[key] !== undefined && typeof r[key] !== 'boolean') bad(key, 'set true or false');
  if (r.applyDdl !== undefined && (!Array.isArray(r.applyDdl) || r.applyDdl.some((k) => !(DDL_KINDS as readonly unknown[]).includes(k)))) bad('applyDdl', `list some of ${DDL_KINDS.map((k) => `"${k}"`).join(', ')}, or []`);
  if (r.tableMaps !== undefined && !Array.isArray(r.tableMaps)) bad('tableMaps', 'set a list of table maps, e.g. [{"source":{"schema":"public"},"target":{"schema":"mirror"}}]');
  else for (const [i, m] of ((r.tableMaps as unknown[] | undefined) ?? []).entries()) {
    try {
      parseTableMap(JSON.stringify(m));
    } catch (err) {
      out.push(`${where(name)}: tableMaps[${i}]: ${err instanceof Error ? err.message : String(err)} (${fix})`);
    }
  }
  return out;
}

/**
 * copyChunkSize in bytes: a size string or a whole number of bytes, 0 (never split) or at least
 * 1 MiB as `run --copy-chunk-size` takes it (each chunk costs a target transaction and a state row);
 * null when it is neither.
 */
function copyChunkBytes(v: unknown): number | null {
  const bytes = typeof v === 'string' ? parseSize(v) : typeof v === 'number' && Number.isInteger(v) ? v : null;
  return bytes !== null && (bytes === 0 || bytes >= 1024 * 1024) && Number.isSafeInteger(bytes) ? bytes : null;
}

/** One sync as the settings define it: where, and what is wrong with it. */
export interface SyncSetting {
  def: SyncDefinition;
  scope: SettingScope;
  problems: string[];
}

/**
 * The syncs of both scopes. The user's come first and win: a folder's sync of the same name is
 * left out (with a note), or it would take over the user's name, its paused state and its runs.
 * `notes` also names entries too broken to show.
 */
export function syncsFromSettings(user: unknown[] | undefined, workspace: unknown[] | undefined): { syncs: SyncSetting[]; notes: string[] } {
  const syncs: SyncSetting[] = [];
  const notes: string[] = [];
  for (const [scope, values] of [['user', user], ['workspace', workspace]] as const) {
    for (const raw of values ?? []) {
      const def = sanitizeSyncDefinition(raw);
      if (!def) {
        notes.push(`${syncDefinitionProblems(raw, scope).join('; ')}; the entry is ignored`);
        continue;
      }
      const first = syncs.find((x) => x.def.name === def.name);
      if (first) {
        notes.push(`pgLiveSync.syncs entry "${def.name}" in ${scope === 'workspace' ? "this folder's" : 'your user'} settings is ignored: ${first.scope === 'user' ? 'your user settings' : 'the same settings'} define a sync of that name already; rename one (${settingsCommand(scope)})`);
        continue;
      }
      syncs.push({ def, scope, problems: syncDefinitionProblems(raw, scope) });
    }
  }
  return { syncs, notes };
}

/** A connection a sync names, as the connections setting resolves it. */
export interface SyncConnection {
  scope: SettingScope;
  /** connectionIdentity: the server, role and TLS it reaches. */
  identity: string;
}

/**
 * What the user approves by starting or attaching a sync once, or null for a sync that needs no
 * approval: one whose definition and connections all come from the user's own settings. A
 * folder's sync (or a user's sync whose connection a folder's entry of the same name replaces)
 * could name any server, and connecting would hand it PGPASSWORD or a wildcard ~/.pgpass line:
 * nothing connects for it until the user approves exactly these servers.
 */
export function syncApprovalKey(s: Pick<SyncSetting, 'def' | 'scope'>, source: SyncConnection | undefined, target: SyncConnection | undefined): string | null {
  const fromFolder = s.scope === 'workspace' || source?.scope === 'workspace' || target?.scope === 'workspace';
  if (!fromFolder) return null;
  return JSON.stringify([s.def.name, s.def.attach, s.def.source, source?.identity ?? null, s.def.target, target?.identity ?? null]);
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
/**
 * Whether a sync's lag calls for the user: past `thresholdSeconds` it does (0: never), and it stays
 * so until the lag falls under half of it, so a lag hovering at the line raises one alert, not one
 * per poll. `notify` is set once, when the lag crosses the line.
 */
export function lagAlert(name: string, lagSeconds: number | null, thresholdSeconds: number, alerting: boolean): { alerting: boolean; notify: string | null } {
  if (thresholdSeconds <= 0 || lagSeconds === null) return { alerting: false, notify: null };
  const now = alerting ? lagSeconds >= thresholdSeconds / 2 : lagSeconds > thresholdSeconds;
  if (!now || alerting) return { alerting: now, notify: null };
  return {
    alerting: true,
    notify: `Sync ${name} is ${Math.round(lagSeconds).toLocaleString('en-US')} s behind its source (the warning is set at ${thresholdSeconds.toLocaleString('en-US')} s in pgLiveSync.lagWarningSeconds): the source writes faster than the target applies, or a lock or a long query on the target holds the sync up. Show Sync Progress shows the lag and which tables are busy.`,
  };
}

export function severity(s: PanelSnapshot): number {
  if (s.header.activity === 'error' || s.tables.some((t) => t.lastError && !t.removed)) return 5;
  if (s.header.activity === 'starting' || s.header.activity === 'copying') return 3;
  if (s.tables.some((t) => !t.removed && t.state !== 'r')) return 2;
  if (s.header.activity === 'paused' || s.header.activity === 'stopped') return 1;
  return 0;
}
