// The progress panel's script (bundled to dist/webview.js). It builds the whole page from
// script, posts `ready` once it listens, then renders the host's `state` and applies `update`s
// incrementally. Every element a test reads has a stable id or data-* attribute.
import { invalidationAtRisk } from '../src/engine/walHeadroom';
import { LineChart } from './charts';
import { h, setAttr, setText, toggleClass } from './dom';
import { activityBadge, ACTIVITY_RUNNING, DASH, formatByteRate, formatBytes, formatClock, formatCompact, formatDuration, tableSummary, type RowStateWord } from './format';
import type { HostToPanel, PanelAction, PanelHeader, PanelSample, PanelTable, PanelToHost } from './protocol';
import { TableGrid, type GridView, type SortColumn, type SortDir } from './tableGrid';
import { registerToolkit, TAG } from './toolkit';

interface VsCodeApi {
  postMessage(message: PanelToHost): void;
  getState(): unknown;
  setState(state: unknown): void;
}
declare function acquireVsCodeApi(): VsCodeApi;

/** What survives a reload of the webview; the host's serializer reads `name`. */
interface SavedState {
  name?: string;
  filter?: string;
  sort?: SortColumn;
  dir?: SortDir;
}

const CHART_WINDOW_MS = 10 * 60 * 1000;
const NOTICE_INFO_MS = 8000;

registerToolkit();
const vscode = acquireVsCodeApi();
let saved: SavedState = readSaved(vscode.getState());
// The host writes the sync's name on <body>, so a reload before the first state still restores.
const bodyName = document.body.dataset.syncName;
if (bodyName) saveState({ name: bodyName });

const post = (m: PanelToHost): void => vscode.postMessage(m);

// ---- header ----
const el = {
  name: h('h1', { id: 'sync-name', class: 'sync-name' }, bodyName ?? ''),
  mode: h('span', { id: 'sync-mode', class: 'sync-mode' }),
  activity: h('span', { id: 'sync-activity', class: 'activity', 'data-testid': 'sync-activity' }),
  spinner: h(TAG.progressRing, { id: 'activity-spinner', class: 'spinner is-hidden', 'aria-hidden': 'true' }),
  source: h('span', { id: 'sync-source', class: 'endpoint' }),
  target: h('span', { id: 'sync-target', class: 'endpoint' }),
  publications: h('span', { id: 'sync-publications' }),
  lsn: h('span', { id: 'applied-lsn', class: 'stat-value mono' }, DASH),
  lagBytes: h('span', { id: 'lag-bytes', class: 'stat-value' }, DASH),
  lagSeconds: h('span', { id: 'lag-seconds', class: 'stat-value' }, DASH),
  cps: h('span', { id: 'changes-per-second', class: 'stat-value' }, DASH),
  wal: h('span', { id: 'retained-wal', class: 'stat-value' }, DASH),
  summary: h('span', { id: 'table-summary', class: 'stat-value' }, DASH),
  updated: h('span', { id: 'updated-at', class: 'stat-value' }, DASH),
  lastError: h('div', { id: 'last-error', class: 'last-error is-hidden', role: 'alert' }),
  notice: h('div', { id: 'notice', class: 'notice is-hidden', role: 'status' }),
  noticeText: h('span', { id: 'notice-text', class: 'notice-text' }),
  loading: h('div', { id: 'loading', class: 'loading' }, h(TAG.progressRing), 'Waiting for the sync’s state…'),
};

/** "1.2 GiB of 4 GiB · 3h 05m left": retained WAL against max_slot_wal_keep_size, and the time left at the recent write rate. */
function walText(hd: PanelHeader): string {
  const of = hd.walKeepBytes === null ? '' : ` of ${formatBytes(hd.walKeepBytes)}`;
  const left = hd.secondsToInvalidation === null ? '' : ` · ${formatDuration(hd.secondsToInvalidation)} left`;
  return `${formatBytes(hd.retainedWalBytes)}${of}${left}`;
}

function stat(label: string, value: HTMLElement): HTMLElement {
  return h('div', { class: 'stat' }, h('span', { class: 'stat-label' }, label), value);
}

const actionButtons = new Map<PanelAction, HTMLElement>();
function actionButton(action: PanelAction, id: string, label: string, primary = false): HTMLElement {
  const button = h(TAG.button, { id, 'data-testid': id, appearance: primary ? 'primary' : 'secondary' }, label);
  button.addEventListener('click', () => {
    if (!button.hasAttribute('disabled')) post({ type: 'action', action });
  });
  actionButtons.set(action, button);
  return button;
}

const actions = h(
  'div',
  { class: 'actions', role: 'toolbar', 'aria-label': 'Sync actions' },
  actionButton('pause', 'action-pause', 'Pause', true),
  actionButton('resume', 'action-resume', 'Resume', true),
  actionButton('stop', 'action-stop', 'Stop'),
  actionButton('drop', 'action-drop', 'Drop…'),
  actionButton('verify', 'action-verify', 'Verify'),
  actionButton('openLogs', 'action-logs', 'Open Logs'),
  actionButton('copyStatus', 'action-copy', 'Copy Status as JSON'),
);

const dismiss = h(TAG.button, { id: 'notice-dismiss', appearance: 'icon', 'aria-label': 'Dismiss' }, '✕');
dismiss.addEventListener('click', () => el.notice.classList.add('is-hidden'));
el.notice.append(el.noticeText, dismiss);

const lagChart = new LineChart(
  'chart-lag',
  'Lag',
  [
    { field: 'lagBytes', label: 'bytes', colorClass: 'series-blue', format: formatBytes, bytes: true },
    { field: 'lagSeconds', label: 'seconds', colorClass: 'series-orange', format: (v) => formatDuration(v) },
  ],
  CHART_WINDOW_MS,
);
const throughputChart = new LineChart(
  'chart-throughput',
  'Throughput',
  [
    { field: 'changesPerSecond', label: 'changes/s', colorClass: 'series-green', format: (v) => formatCompact(v) },
    { field: 'copyBytesPerSecond', label: 'copy', colorClass: 'series-purple', format: formatByteRate, bytes: true },
  ],
  CHART_WINDOW_MS,
);

const grid = new TableGrid(
  { filter: saved.filter, sort: saved.sort, dir: saved.dir },
  (key) => post({ type: 'resyncTable', key }),
  (view: GridView) => saveState({ filter: view.filter, sort: view.sort, dir: view.dir }),
);

const app = h(
  'main',
  { id: 'panel', class: 'panel' },
  h(
    'header',
    { class: 'sync-header' },
    h('div', { class: 'title-line' }, el.name, el.mode, el.activity, el.spinner),
    h('div', { class: 'endpoints' }, el.source, h('span', { class: 'arrow' }, ' → '), el.target, h('span', { class: 'sep' }, ' · publications: '), el.publications),
    h(
      'div',
      { class: 'stats' },
      stat('Applied LSN', el.lsn),
      stat('Lag', el.lagBytes),
      stat('Lag time', el.lagSeconds),
      stat('Changes/s', el.cps),
      stat('Retained WAL', el.wal),
      stat('Tables', el.summary),
      stat('Updated', el.updated),
    ),
    el.lastError,
    actions,
  ),
  el.notice,
  el.loading,
  h('section', { class: 'charts', 'aria-label': 'Charts' }, lagChart.element, throughputChart.element),
  grid.element,
);
document.body.classList.add('no-state');
document.body.append(app);

// ---- state ----
let samples: PanelSample[] = [];
let noticeTimer: ReturnType<typeof setTimeout> | undefined;

function renderHeader(hd: PanelHeader, counts: Record<RowStateWord, number>): void {
  setText(el.name, hd.name);
  document.title = `Sync: ${hd.name}`;
  if (saved.name !== hd.name) saveState({ name: hd.name });
  setText(el.mode, hd.mode === 'local' ? 'local' : 'attached · read-only');
  setAttr(el.mode, 'data-mode', hd.mode);
  toggleClass(document.body, 'mode-attached', hd.mode === 'attached');

  const badge = activityBadge(hd.activity, counts);
  setText(el.activity, badge);
  setAttr(el.activity, 'data-activity', badge);
  toggleClass(el.spinner, 'is-hidden', hd.activity !== 'starting' && hd.activity !== 'copying');

  setText(el.source, hd.source);
  setText(el.target, hd.target);
  setText(el.publications, hd.publications.length > 0 ? hd.publications.join(', ') : DASH);

  setText(el.lsn, hd.appliedLsn ?? DASH);
  setAttr(el.lsn, 'data-lsn', hd.appliedLsn);
  setText(el.lagBytes, formatBytes(hd.lagBytes));
  setAttr(el.lagBytes, 'data-lag-bytes', hd.lagBytes);
  setText(el.lagSeconds, formatDuration(hd.lagSeconds));
  setAttr(el.lagSeconds, 'data-lag-seconds', hd.lagSeconds);
  setText(el.cps, hd.changesPerSecond === null ? DASH : formatCompact(hd.changesPerSecond));
  setAttr(el.cps, 'data-changes-per-second', hd.changesPerSecond);
  setText(el.wal, walText(hd));
  setAttr(el.wal, 'data-retained-wal-bytes', hd.retainedWalBytes);
  setAttr(el.wal, 'data-wal-keep-bytes', hd.walKeepBytes);
  setAttr(el.wal, 'data-seconds-to-invalidation', hd.secondsToInvalidation);
  toggleClass(el.wal, 'stat-warning', invalidationAtRisk(hd.safeWalBytes, hd.walKeepBytes, hd.secondsToInvalidation));
  setText(el.updated, formatClock(hd.updatedAt));
  setAttr(el.updated, 'data-updated-at', hd.updatedAt);

  setText(el.lastError, hd.lastError ?? '');
  toggleClass(el.lastError, 'is-hidden', hd.lastError === null);

  const local = hd.mode === 'local';
  const running = ACTIVITY_RUNNING.includes(hd.activity);
  const show = (action: PanelAction, on: boolean): void => toggleClass(actionButtons.get(action) as HTMLElement, 'is-hidden', !on);
  show('pause', local && running);
  show('resume', local && !running);
  show('stop', local && hd.activity !== 'stopped');
  show('drop', local);
}

function renderSummary(c: Record<RowStateWord, number>): void {
  const { text, done, total } = tableSummary(c);
  setText(el.summary, text);
  setAttr(el.summary, 'data-total', total);
  setAttr(el.summary, 'data-done', done);
  setAttr(el.summary, 'data-errors', c.error);
}

function renderCharts(): void {
  lagChart.update(samples);
  throughputChart.update(samples);
}

function pruneSamples(): void {
  if (samples.length === 0) return;
  const cutoff = samples[samples.length - 1].t - CHART_WINDOW_MS - 60000;
  let drop = 0;
  while (drop < samples.length && samples[drop].t < cutoff) drop++;
  if (drop > 0) samples = samples.slice(drop);
}

function onState(header: PanelHeader, tables: PanelTable[], all: PanelSample[]): void {
  el.loading.classList.add('is-hidden');
  document.body.classList.remove('no-state');
  grid.setMode(header.mode);
  grid.replaceAll(tables);
  const counts = grid.counts();
  renderHeader(header, counts);
  renderSummary(counts);
  samples = [...all].sort((a, b) => a.t - b.t);
  pruneSamples();
  renderCharts();
}

function onUpdate(header: PanelHeader, tables: PanelTable[], removedKeys: string[], sample: PanelSample | null): void {
  grid.setMode(header.mode);
  if (tables.length > 0 || removedKeys.length > 0) grid.apply(tables, removedKeys);
  // The badge depends on the tables too (a table in error), so both follow the grid.
  const counts = grid.counts();
  renderHeader(header, counts);
  if (tables.length > 0 || removedKeys.length > 0) renderSummary(counts);
  if (sample !== null && (samples.length === 0 || sample.t > samples[samples.length - 1].t)) {
    samples.push(sample);
    pruneSamples();
    renderCharts();
  }
}

function onNotice(level: 'info' | 'error', text: string): void {
  setText(el.noticeText, text);
  setAttr(el.notice, 'data-level', level);
  el.notice.classList.remove('is-hidden');
  clearTimeout(noticeTimer);
  if (level === 'info') noticeTimer = setTimeout(() => el.notice.classList.add('is-hidden'), NOTICE_INFO_MS);
}

window.addEventListener('message', (event: MessageEvent<unknown>) => {
  const m = event.data as HostToPanel | null;
  if (typeof m !== 'object' || m === null) return;
  switch (m.type) {
    case 'state':
      onState(m.header, m.tables, m.samples);
      break;
    case 'update':
      onUpdate(m.header, m.tables, m.removedKeys, m.sample);
      break;
    case 'notice':
      onNotice(m.level, m.text);
      break;
  }
});
post({ type: 'ready' });

function saveState(patch: SavedState): void {
  saved = { ...saved, ...patch };
  vscode.setState(saved);
}

function readSaved(raw: unknown): SavedState {
  if (typeof raw !== 'object' || raw === null) return {};
  const r = raw as Record<string, unknown>;
  const out: SavedState = {};
  if (typeof r.name === 'string') out.name = r.name;
  if (typeof r.filter === 'string') out.filter = r.filter;
  if (typeof r.sort === 'string' && ['table', 'state', 'progress', 'rows', 'bytes', 'speed', 'eta', 'error'].includes(r.sort)) out.sort = r.sort as SortColumn;
  if (r.dir === 1 || r.dir === -1) out.dir = r.dir;
  return out;
}
