// The vscode-free half of the progress panel's host side: what to send the webview and when.
// After the webview's `ready` it gets one full `state`; after that only `update`s with the rows
// that changed, the keys that went away and the new sample, at most one flush per interval
// however often the source fires. Unit-tested with an injected clock (test/unit/panel.test.ts).
import type { HostToPanel, PanelHeader, PanelSample, PanelTable } from '../../webview/protocol';
import type { PanelSnapshot } from './panelSource';

/** The clock and timers the updater uses; tests pass a fake one. */
export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** At most this many flushes a second (~4). */
export const DEFAULT_MIN_INTERVAL_MS = 250;
/** More new samples than this since the last message (a long stall): send a full state. */
const MAX_SAMPLE_CATCH_UP = 20;

/** Shallow equality of two table rows (every field is a primitive or null). */
export function sameTable(a: PanelTable, b: PanelTable): boolean {
  const ka = Object.keys(a) as (keyof PanelTable)[];
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => a[k] === b[k]);
}

export function sameHeader(a: PanelHeader, b: PanelHeader): boolean {
  const ka = Object.keys(a) as (keyof PanelHeader)[];
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => {
    const x = a[k];
    const y = b[k];
    if (Array.isArray(x) && Array.isArray(y)) return x.length === y.length && x.every((v, i) => v === y[i]);
    return x === y;
  });
}

/** The rows of `tables` that are new or differ from `sent`, and the keys of `sent` no longer there. */
export function diffTables(sent: ReadonlyMap<string, PanelTable>, tables: readonly PanelTable[]): { changed: PanelTable[]; removedKeys: string[] } {
  const changed: PanelTable[] = [];
  const seen = new Set<string>();
  for (const t of tables) {
    seen.add(t.key);
    const before = sent.get(t.key);
    if (before === undefined || !sameTable(before, t)) changed.push(t);
  }
  const removedKeys = [...sent.keys()].filter((k) => !seen.has(k));
  return { changed, removedKeys };
}

/**
 * Turns a source's change events into panel messages for one sync. Nothing is sent before
 * `ready()`; `ready()` sends the full state; `changed()` coalesces into at most one `update` per
 * `minIntervalMs`; `hidden()` stops everything until the next `ready()` (a hidden webview is
 * destroyed and posts `ready` again when shown).
 */
export class PanelUpdater {
  private isReady = false;
  /** What the webview has, as of the last message; null: no state sent since ready. */
  private sentHeader: PanelHeader | null = null;
  private readonly sentTables = new Map<string, PanelTable>();
  private lastSampleT = Number.NEGATIVE_INFINITY;
  private lastFlush = Number.NEGATIVE_INFINITY;
  private timer: unknown = undefined;
  private disposed = false;

  constructor(
    private readonly read: () => PanelSnapshot | null,
    private readonly post: (message: HostToPanel) => void,
    private readonly timers: Timers = realTimers,
    readonly minIntervalMs: number = DEFAULT_MIN_INTERVAL_MS,
  ) {}

  /** The webview listens: send the whole picture (or, if the source has none yet, wait for it). */
  ready(): void {
    if (this.disposed) return;
    this.cancelTimer();
    this.isReady = true;
    this.sentHeader = null;
    this.sentTables.clear();
    this.flush();
  }

  /** The webview went away (hidden, reloading): send nothing until it is ready again. */
  hidden(): void {
    this.isReady = false;
    this.cancelTimer();
  }

  /** The source changed: flush now if the last flush is old enough, else once at the interval's end. */
  changed(): void {
    if (!this.isReady || this.disposed || this.timer !== undefined) return;
    const wait = this.lastFlush + this.minIntervalMs - this.timers.now();
    if (wait <= 0) {
      this.flush();
      return;
    }
    this.timer = this.timers.setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, wait);
  }

  dispose(): void {
    this.disposed = true;
    this.hidden();
  }

  private cancelTimer(): void {
    if (this.timer !== undefined) this.timers.clearTimeout(this.timer);
    this.timer = undefined;
  }

  private flush(): void {
    if (!this.isReady || this.disposed) return;
    const snap = this.read();
    if (snap === null) return;
    this.lastFlush = this.timers.now();
    const fresh = snap.samples.filter((s) => s.t > this.lastSampleT);
    if (this.sentHeader === null || fresh.length > MAX_SAMPLE_CATCH_UP) {
      this.sendState(snap);
      return;
    }
    const { changed, removedKeys } = diffTables(this.sentTables, snap.tables);
    const headerChanged = !sameHeader(this.sentHeader, snap.header);
    if (!headerChanged && changed.length === 0 && removedKeys.length === 0 && fresh.length === 0) return;

    // Samples beyond one ride in small updates of their own first, so the charts miss none.
    for (const sample of fresh.slice(0, -1)) this.post({ type: 'update', header: snap.header, tables: [], removedKeys: [], sample });
    const sample: PanelSample | null = fresh.length > 0 ? fresh[fresh.length - 1] : null;
    this.post({ type: 'update', header: snap.header, tables: changed, removedKeys, sample });

    this.sentHeader = copyHeader(snap.header);
    for (const key of removedKeys) this.sentTables.delete(key);
    for (const t of changed) this.sentTables.set(t.key, { ...t });
    if (sample !== null) this.lastSampleT = sample.t;
  }

  private sendState(snap: PanelSnapshot): void {
    this.post({ type: 'state', header: snap.header, tables: snap.tables, samples: snap.samples });
    this.sentHeader = copyHeader(snap.header);
    this.sentTables.clear();
    for (const t of snap.tables) this.sentTables.set(t.key, { ...t });
    this.lastSampleT = snap.samples.reduce((max, s) => Math.max(max, s.t), Number.NEGATIVE_INFINITY);
  }
}

/** A copy the source cannot change under us (it may reuse its objects). */
function copyHeader(h: PanelHeader): PanelHeader {
  return { ...h, publications: [...h.publications] };
}

/** The sync name a webview saved with setState ({ name, ...view settings }), or null. */
export function savedSyncName(state: unknown): string | null {
  if (typeof state !== 'object' || state === null) return null;
  const name = (state as Record<string, unknown>).name;
  return typeof name === 'string' && name.length > 0 && name.length <= 200 ? name : null;
}

/** Escapes text for HTML content and double-quoted attribute values. */
export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

export interface PanelHtmlOptions {
  /** webview.cspSource */
  cspSource: string;
  nonce: string;
  scriptUri: string;
  styleUri: string;
  syncName: string;
}

/**
 * The Content-Security-Policy of the panel: nothing but our own script (by nonce), styles and
 * fonts from the extension. `'nonce-…'` in style-src lets the toolkit's one feature-detection
 * `<style>` element (FAST reads the nonce from `<meta property="csp-nonce">`) in without
 * `'unsafe-inline'`; the toolkit's own styles are constructable stylesheets, which CSP allows.
 */
export function panelCsp(cspSource: string, nonce: string): string {
  return [
    "default-src 'none'",
    `img-src ${cspSource} data:`,
    `style-src ${cspSource} 'nonce-${nonce}'`,
    `font-src ${cspSource}`,
    `script-src 'nonce-${nonce}'`,
  ].join('; ') + ';';
}

/** The panel's whole HTML: the script builds the page; the body carries the sync's name. */
export function panelHtml(o: PanelHtmlOptions): string {
  const name = escapeHtml(o.syncName);
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${escapeHtml(panelCsp(o.cspSource, o.nonce))}">
<meta property="csp-nonce" content="${escapeHtml(o.nonce)}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${escapeHtml(o.styleUri)}">
<title>Sync: ${name}</title>
</head>
<body data-sync-name="${name}">
<script nonce="${escapeHtml(o.nonce)}" src="${escapeHtml(o.scriptUri)}"></script>
</body>
</html>`;
}
