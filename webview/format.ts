// Pure formatting for the progress panel: numbers, sizes, durations and the words for states.
import { DASH, formatBytes, formatCount } from '../src/engine/units';
import { STATE_WORDS, type PanelTable, type SyncActivity } from './protocol';

export { DASH, formatBytes, formatCount, formatDuration } from '../src/engine/units';

/** 1234567 -> "1.23M", 12345 -> "12.3k", 950 -> "950", 1.25 -> "1.3". */
export function formatCompact(n: number | null): string {
  if (n === null || !Number.isFinite(n)) return DASH;
  const abs = Math.abs(n);
  if (abs >= 1e9) return `${(n / 1e9).toFixed(abs >= 1e11 ? 0 : abs >= 1e10 ? 1 : 2)}G`;
  if (abs >= 1e6) return `${(n / 1e6).toFixed(abs >= 1e8 ? 0 : abs >= 1e7 ? 1 : 2)}M`;
  if (abs >= 1e4) return `${(n / 1e3).toFixed(abs >= 1e5 ? 0 : 1)}k`;
  if (abs >= 100 || Number.isInteger(n)) return String(Math.round(n));
  return n.toFixed(1);
}

export function formatRate(perSecond: number | null, unit: string): string {
  return perSecond === null || !Number.isFinite(perSecond) ? DASH : `${formatCompact(perSecond)} ${unit}/s`;
}

export function formatByteRate(bytesPerSecond: number | null): string {
  return bytesPerSecond === null || !Number.isFinite(bytesPerSecond) ? DASH : `${formatBytes(bytesPerSecond)}/s`;
}

/** The word a table row shows: removed and error win over the replication state. */
export type RowStateWord = 'init' | 'copying' | 'catching up' | 'synced' | 'ready' | 'error' | 'removed';

export function rowStateWord(t: Pick<PanelTable, 'state' | 'removed' | 'lastError'>): RowStateWord {
  if (t.removed) return 'removed';
  if (t.lastError !== null) return 'error';
  return STATE_WORDS[t.state] as RowStateWord;
}

/** Sort rank of a row state: errors first, then by progress, removed last. */
export const STATE_RANK: Record<RowStateWord, number> = {
  error: 0,
  init: 1,
  copying: 2,
  'catching up': 3,
  synced: 4,
  ready: 5,
  removed: 6,
};

/** A CSS class suffix for a state word ("catching up" -> "catching-up"). */
export function stateClass(word: string): string {
  return word.replace(/\s+/g, '-');
}

/**
 * How far a table's copy is, 0..1. Rows against the planner estimate when there is one, else bytes;
 * a table past the copy (synced, ready, catching up) is complete whatever the estimate said.
 * Null while copying a table with no estimate at all (never analyzed, empty when planned).
 */
export function copyFraction(t: PanelTable): number | null {
  if (t.state === 's' || t.state === 'r' || t.state === 'f') return 1;
  if (t.state === 'i') return 0;
  if (t.approximateRows > 0) return Math.min(1, t.rowsCopied / t.approximateRows);
  if (t.approximateSize > 0) return Math.min(1, t.bytesCopied / t.approximateSize);
  return null;
}

/** "1,234 / ~1,200": rows copied, then the estimate. */
export function formatRows(t: PanelTable): string {
  const est = t.approximateRows > 0 ? ` / ~${formatCount(t.approximateRows)}` : '';
  return `${formatCount(t.rowsCopied)}${est}`;
}

export function formatSizeProgress(t: PanelTable): string {
  const est = t.approximateSize > 0 ? ` / ~${formatBytes(t.approximateSize)}` : '';
  return `${formatBytes(t.bytesCopied)}${est}`;
}

export const ACTIVITY_RUNNING: readonly SyncActivity[] = ['starting', 'copying', 'streaming'];

/**
 * The one word the panel's badge and the status bar show for a sync. The sync's own error wins;
 * a sync the user paused or that is not running says so; while it runs, a table in error beats
 * copying, which beats streaming: the word names what most needs looking at.
 */
export function activityBadge(activity: SyncActivity, counts: Record<RowStateWord, number>): SyncActivity {
  if (activity !== 'copying' && activity !== 'streaming') return activity;
  return counts.error > 0 ? 'error' : activity;
}

/** Rows by the word each shows. */
export function countWords(words: Iterable<RowStateWord>): Record<RowStateWord, number> {
  const counts: Record<RowStateWord, number> = { init: 0, copying: 0, 'catching up': 0, synced: 0, ready: 0, error: 0, removed: 0 };
  for (const w of words) counts[w]++;
  return counts;
}

/**
 * The header's tables line. Removed tables are not counted in the total. Until every table has
 * been copied it counts copies ("4 / 5 copied · 1 copying": `f` is a finished copy, whatever it
 * waits for); then it counts tables streaming ("4 / 5 ready · 1 catching up"). Errors always show.
 */
export function tableSummary(c: Record<RowStateWord, number>): { text: string; done: number; total: number } {
  const total = c.init + c.copying + c['catching up'] + c.synced + c.ready + c.error;
  const part = (n: number, word: string) => (n > 0 ? ` · ${formatCount(n)} ${word}` : '');
  const copyStage = c.init + c.copying > 0;
  const done = copyStage ? c['catching up'] + c.synced + c.ready : c.ready;
  let text = `${formatCount(done)} / ${formatCount(total)} ${copyStage ? 'copied' : 'ready'}`;
  text += copyStage ? part(c.copying, 'copying') + part(c.init, 'waiting') : part(c['catching up'] + c.synced, 'catching up');
  text += part(c.error, c.error === 1 ? 'error' : 'errors') + part(c.removed, 'removed');
  return { text, done, total };
}

/** epoch ms -> "14:03:09" in the webview's local time. */
export function formatClock(ms: number): string {
  const d = new Date(ms);
  return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
}
