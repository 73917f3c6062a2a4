// The tables grid: one row per table, keyed by its quoted name (PanelTable.key). Updates touch only the rows that
// changed (and only the cells whose text changed); sorting moves only the rows that are out of
// place; filtering toggles a class. Nothing re-creates the grid.
//
// Rows are plain elements (role=table/row/cell, a CSS grid styled with the theme's variables), not
// the toolkit's vscode-data-grid: measured with 2,000 tables in Chromium, the toolkit grid took
// 1.3-2.0 s for the first render and 0.5-1.0 s per sort (every row and cell is a custom element
// with a shadow root, re-bound on each move), against about a tenth of that for plain elements.
import { h, setAttr, setText, toggleClass } from './dom';
import {
  copyFraction,
  countWords,
  formatDuration,
  formatRate,
  formatRows,
  formatSizeProgress,
  rowStateWord,
  STATE_RANK,
  type RowStateWord,
} from './format';
import type { PanelTable, SyncMode } from './protocol';
import { TAG } from './toolkit';

export type SortColumn = 'table' | 'state' | 'progress' | 'rows' | 'bytes' | 'speed' | 'eta' | 'error';
export type SortDir = 1 | -1;

export interface GridView {
  filter: string;
  sort: SortColumn;
  dir: SortDir;
}

interface Column {
  id: SortColumn | 'actions';
  title: string;
}

const COLUMNS: readonly Column[] = [
  { id: 'table', title: 'Table' },
  { id: 'state', title: 'State' },
  { id: 'progress', title: 'Progress' },
  { id: 'rows', title: 'Rows' },
  { id: 'bytes', title: 'Size' },
  { id: 'speed', title: 'Speed' },
  { id: 'eta', title: 'ETA' },
  { id: 'error', title: 'Last error' },
  { id: 'actions', title: '' },
];

interface Row {
  key: string;
  data: PanelTable;
  word: RowStateWord;
  fraction: number;
  /** Lower-cased text the filter matches against. */
  haystack: string;
  el: HTMLElement;
  cells: Record<Column['id'], HTMLElement>;
  src: HTMLElement;
  dst: HTMLElement;
  stateWord: HTMLElement;
  barFill: HTMLElement;
  pct: HTMLElement;
  resync: HTMLElement;
}

export class TableGrid {
  readonly element: HTMLElement;
  private readonly grid: HTMLElement;
  /** The rows' parent: holds nothing but table rows, in display order. */
  private readonly body: HTMLElement;
  private readonly headerCells = new Map<SortColumn, HTMLElement>();
  private readonly filterField: HTMLElement;
  private readonly countEl: HTMLElement;
  private readonly rows = new Map<string, Row>();
  /** All rows (filtered or not) in display order. */
  private order: Row[] = [];
  private mode: SyncMode = 'local';
  private view: GridView;
  private filterTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    initial: Partial<GridView>,
    private readonly onResync: (key: string) => void,
    private readonly onViewChange: (view: GridView) => void,
  ) {
    this.view = { filter: initial.filter ?? '', sort: initial.sort ?? 'table', dir: initial.dir ?? 1 };
    this.filterField = h(TAG.textField, { id: 'table-filter', 'data-testid': 'table-filter', placeholder: 'Filter by table or state', 'aria-label': 'Filter tables' }, 'Filter');
    (this.filterField as HTMLInputElement).value = this.view.filter;
    this.filterField.addEventListener('input', () => {
      clearTimeout(this.filterTimer);
      this.filterTimer = setTimeout(() => this.setFilter((this.filterField as HTMLInputElement).value ?? ''), 120);
    });
    this.countEl = h('span', { id: 'table-count', class: 'table-count' });

    const header = h('div', { role: 'row', class: 'grid-row grid-header' });
    for (const c of COLUMNS) {
      const cell = h('div', { role: 'columnheader', 'data-col': c.id, class: 'grid-cell' });
      if (c.id !== 'actions') {
        const id = c.id;
        const button = h('button', { class: 'sort-button', type: 'button', title: `Sort by ${c.title.toLowerCase()}` }, c.title);
        button.addEventListener('click', () => this.sortBy(id));
        cell.append(button);
        this.headerCells.set(id, cell);
      } else {
        cell.append(h('span', { class: 'visually-hidden' }, 'Actions'));
      }
      header.append(cell);
    }
    this.body = h('div', { role: 'rowgroup', class: 'grid-body' });
    this.grid = h('div', { id: 'tables-grid', 'data-testid': 'tables-grid', role: 'table', 'aria-label': 'Tables', class: 'grid' }, h('div', { role: 'rowgroup', class: 'grid-head' }, header), this.body);
    this.grid.addEventListener('click', (e) => {
      const button = (e.target as Element).closest('[data-action="resync"]');
      if (button === null || button.hasAttribute('disabled')) return;
      const key = button.closest<HTMLElement>('[data-table-key]')?.dataset.tableKey;
      if (key !== undefined) this.onResync(key);
    });
    this.element = h(
      'section',
      { class: 'tables', 'aria-label': 'Tables' },
      h('div', { class: 'tables-toolbar' }, this.filterField, this.countEl),
      this.grid,
    );
    this.applyMode();
    this.showSort();
  }

  get size(): number {
    return this.rows.size;
  }

  /** Rows by display state word, for the header summary. */
  counts(): Record<RowStateWord, number> {
    return countWords([...this.rows.values()].map((row) => row.word));
  }

  setMode(mode: SyncMode): void {
    if (mode === this.mode) return;
    this.mode = mode;
    this.applyMode();
  }

  /** A full state: upsert everything given, drop what is not there. */
  replaceAll(tables: readonly PanelTable[]): void {
    const keep = new Set(tables.map((t) => t.key));
    const gone = [...this.rows.keys()].filter((k) => !keep.has(k));
    this.apply(tables, gone);
  }

  /** An update: changed or new rows, and removed keys. */
  apply(tables: readonly PanelTable[], removedKeys: readonly string[]): void {
    let dropped = 0;
    for (const key of removedKeys) {
      const row = this.rows.get(key);
      if (row === undefined) continue;
      this.rows.delete(key);
      row.el.remove();
      dropped++;
    }
    if (dropped > 0) this.order = this.order.filter((r) => this.rows.get(r.key) === r);

    const touched: Row[] = [];
    for (const t of tables) {
      let row = this.rows.get(t.key);
      if (row === undefined) {
        row = this.createRow(t);
        this.rows.set(t.key, row);
      } else if (sameTable(row.data, t)) {
        continue;
      }
      this.renderRow(row, t);
      touched.push(row);
    }
    if (touched.length > 0) this.reposition(touched);
    this.updateCount();
  }

  setFilter(text: string): void {
    const filter = text.trim().toLowerCase();
    if (filter === this.view.filter) return;
    this.view = { ...this.view, filter };
    for (const row of this.rows.values()) this.applyFilter(row);
    this.updateCount();
    this.onViewChange(this.view);
  }

  private sortBy(col: SortColumn): void {
    const dir: SortDir = this.view.sort === col ? (-this.view.dir as SortDir) : 1;
    this.view = { ...this.view, sort: col, dir };
    this.showSort();
    // Every row is "touched": reposition moves only the rows not already in place.
    this.order = [];
    this.reposition([...this.rows.values()]);
    this.onViewChange(this.view);
  }

  private showSort(): void {
    for (const [col, cell] of this.headerCells) {
      const active = col === this.view.sort;
      setAttr(cell, 'aria-sort', active ? (this.view.dir === 1 ? 'ascending' : 'descending') : 'none');
      toggleClass(cell, 'sorted-asc', active && this.view.dir === 1);
      toggleClass(cell, 'sorted-desc', active && this.view.dir === -1);
    }
  }

  /** Column widths live in media/panel.css; read-only (attached) syncs have no actions column. */
  private applyMode(): void {
    toggleClass(this.grid, 'read-only', this.mode !== 'local');
  }

  private compare = (a: Row, b: Row): number => {
    let c = 0;
    switch (this.view.sort) {
      case 'table':
        break;
      case 'state':
        c = STATE_RANK[a.word] - STATE_RANK[b.word];
        break;
      case 'progress':
        c = a.fraction - b.fraction;
        break;
      case 'rows':
        c = a.data.rowsCopied - b.data.rowsCopied;
        break;
      case 'bytes':
        c = a.data.bytesCopied - b.data.bytesCopied;
        break;
      case 'speed':
        c = (a.data.copyRowsPerSecond ?? -1) - (b.data.copyRowsPerSecond ?? -1);
        break;
      case 'eta':
        c = (a.data.etaSeconds ?? -1) - (b.data.etaSeconds ?? -1);
        break;
      case 'error':
        c = cmpText(a.data.lastError ?? '', b.data.lastError ?? '');
        break;
    }
    if (c === 0) c = cmpText(a.key, b.key);
    return c * this.view.dir;
  };

  /**
   * Puts `touched` rows (new, changed, or all of them after a sort change) where the sort wants
   * them. The untouched rows are still sorted among themselves, so the touched ones are taken out
   * and binary-inserted; in the DOM a row moves only when its successor is not already right.
   */
  private reposition(touched: readonly Row[]): void {
    const set = new Set(touched);
    const rest = this.order.length === 0 ? [] : this.order.filter((r) => !set.has(r));
    if (touched.length > rest.length) {
      this.order = [...rest, ...touched].sort(this.compare);
    } else {
      for (const row of touched) rest.splice(upperBound(rest, row, this.compare), 0, row);
      this.order = rest;
    }
    // A tail of rows not in the DOM yet (the whole first state, or new tables sorting last)
    // goes in with one append after the rest is in place.
    let tail = this.order.length;
    while (tail > 0 && set.has(this.order[tail - 1]) && !this.order[tail - 1].el.isConnected) tail--;
    for (let i = tail - 1; i >= 0; i--) {
      const row = this.order[i];
      if (!set.has(row)) continue;
      const next = i + 1 < tail ? this.order[i + 1].el : null;
      if (!row.el.isConnected || row.el.nextElementSibling !== next) this.body.insertBefore(row.el, next);
    }
    if (tail < this.order.length) this.body.append(...this.order.slice(tail).map((r) => r.el));
  }

  private applyFilter(row: Row): void {
    const f = this.view.filter;
    toggleClass(row.el, 'filtered-out', f !== '' && !row.haystack.includes(f));
  }

  private updateCount(): void {
    let shown = 0;
    if (this.view.filter === '') shown = this.rows.size;
    else for (const row of this.rows.values()) if (!row.el.classList.contains('filtered-out')) shown++;
    const text = this.view.filter === '' ? `${this.rows.size} tables` : `${shown} of ${this.rows.size} tables`;
    setText(this.countEl, text);
    setAttr(this.countEl, 'data-shown', shown);
    setAttr(this.countEl, 'data-total', this.rows.size);
  }

  private createRow(t: PanelTable): Row {
    const cells = {} as Record<Column['id'], HTMLElement>;
    for (const c of COLUMNS) cells[c.id] = h('div', { role: 'cell', 'data-col': c.id, class: 'grid-cell' });
    const src = h('span', { class: 'tbl-src' });
    const dst = h('span', { class: 'tbl-dst' });
    cells.table.append(src, h('span', { class: 'tbl-arrow', 'aria-label': 'to' }, ' → '), dst);
    const stateWord = h('span', { class: 'state-word' });
    cells.state.append(h('span', { class: 'state-dot', 'aria-hidden': 'true' }), stateWord);
    const barFill = h('div', { class: 'bar-fill' });
    const pct = h('span', { class: 'pct' });
    cells.progress.append(h('div', { class: 'bar', 'aria-hidden': 'true' }, barFill), pct);
    // A plain button styled like the toolkit's secondary button: 2,000 toolkit buttons cost
    // about 0.4 s of the first render.
    const resync = h('button', { class: 'row-button', type: 'button', 'data-action': 'resync', title: `Copy ${t.key} afresh` }, 'Resync');
    cells.actions.append(resync);
    const el = h('div', { role: 'row', 'data-table-key': t.key, class: 'grid-row table-row' }, ...COLUMNS.map((c) => cells[c.id]));
    return {
      key: t.key,
      data: t,
      word: 'init',
      fraction: 0,
      haystack: '',
      el,
      cells,
      src,
      dst,
      stateWord,
      barFill,
      pct,
      resync,
    };
  }

  private renderRow(row: Row, t: PanelTable): void {
    row.data = t;
    const word = rowStateWord(t);
    const fraction = copyFraction(t);
    row.word = word;
    row.fraction = fraction ?? 0;
    const source = `${t.schema}.${t.table}`;
    const target = `${t.targetSchema}.${t.targetTable}`;
    row.haystack = `${source}\n${target}\n${word}`.toLowerCase();

    setText(row.src, source);
    setText(row.dst, target);
    toggleClass(row.dst, 'same', t.schema === t.targetSchema && t.table === t.targetTable);
    setAttr(row.cells.table, 'title', `${source} → ${target}`);

    setText(row.stateWord, word);
    setAttr(row.cells.state, 'data-state', word);
    setAttr(row.cells.state, 'data-state-code', t.state);

    if (fraction === null) {
      if (row.barFill.style.width !== '0%') row.barFill.style.width = '0%';
      setText(row.pct, '—');
    } else {
      const percent = Math.floor(fraction * 1000) / 10;
      const width = `${percent}%`;
      if (row.barFill.style.width !== width) row.barFill.style.width = width;
      setText(row.pct, `${percent.toFixed(percent >= 100 ? 0 : 1)}%${chunkText(t)}`);
    }
    setAttr(row.cells.progress, 'data-fraction', fraction === null ? null : fraction.toFixed(4));
    setAttr(row.cells.progress, 'data-chunks', t.chunksTotal ? `${t.chunksDone ?? 0}/${t.chunksTotal}` : null);
    setAttr(row.cells.progress, 'title', t.chunksTotal ? `copied in page ranges: ${t.chunksDone ?? 0} of ${t.chunksTotal} chunks done` : null);

    setText(row.cells.rows, formatRows(t));
    setAttr(row.cells.rows, 'data-rows-copied', t.rowsCopied);
    setAttr(row.cells.rows, 'data-approximate-rows', t.approximateRows);

    setText(row.cells.bytes, formatSizeProgress(t));
    setAttr(row.cells.bytes, 'data-bytes-copied', t.bytesCopied);
    setAttr(row.cells.bytes, 'data-approximate-size', t.approximateSize);

    setText(row.cells.speed, formatRate(t.copyRowsPerSecond, 'rows'));
    setAttr(row.cells.speed, 'data-copy-rows-per-second', t.copyRowsPerSecond);
    setText(row.cells.eta, formatDuration(t.etaSeconds));
    setAttr(row.cells.eta, 'data-eta-seconds', t.etaSeconds);

    const missing = missingRowsText(t);
    setText(row.cells.error, t.lastError ?? missing ?? '');
    setAttr(row.cells.error, 'title', t.lastError ?? missing);
    setAttr(row.cells.error, 'data-missing-updates', t.missingUpdates ?? 0);
    setAttr(row.cells.error, 'data-missing-deletes', t.missingDeletes ?? 0);
    toggleClass(row.el, 'row-missing-rows', missing !== null);

    setAttr(row.resync, 'disabled', t.removed);
    setAttr(row.el, 'data-state', word);
    setAttr(row.el, 'data-removed', t.removed);
    toggleClass(row.el, 'row-error', word === 'error');
    toggleClass(row.el, 'row-removed', t.removed);
    this.applyFilter(row);
  }
}

/** Changes that found no row on the target, with what to run; null when there were none. */
function missingRowsText(t: PanelTable): string | null {
  const updates = t.missingUpdates ?? 0;
  const deletes = t.missingDeletes ?? 0;
  if (updates + deletes === 0) return null;
  return `${updates} update(s) and ${deletes} delete(s) found no row: the target table was changed outside the sync; compare it with the source: pg-live-sync verify`;
}

/** " · 3/8 chunks" while a chunked table copies; nothing for a table copied whole or once copied. */
function chunkText(t: PanelTable): string {
  return t.chunksTotal && (t.state === 'd' || t.state === 'i') ? ` · ${t.chunksDone ?? 0}/${t.chunksTotal} chunks` : '';
}

function sameTable(a: PanelTable, b: PanelTable): boolean {
  for (const k of Object.keys(b) as (keyof PanelTable)[]) if (a[k] !== b[k]) return false;
  return Object.keys(a).length === Object.keys(b).length;
}

function cmpText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** First index whose element sorts after `x` (so equal elements keep insertion order). */
function upperBound<T>(arr: readonly T[], x: T, cmp: (a: T, b: T) => number): number {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cmp(arr[mid], x) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
