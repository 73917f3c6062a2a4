// Plain SVG line charts over the panel's samples. Two series per chart, each on its own scale
// (left axis for the first, right axis for the second). Colours come from classes in
// media/panel.css that use the theme's chart colours (var(--vscode-charts-*)).
import { h, setAttr, setText, svg } from './dom';
import type { PanelSample } from './protocol';

export type SampleField = 'lagBytes' | 'lagSeconds' | 'changesPerSecond' | 'copyBytesPerSecond';

export interface ChartSeries {
  field: SampleField;
  label: string;
  /** CSS class giving the series its colour (see media/panel.css). */
  colorClass: string;
  format: (value: number) => string;
  /** Axis steps in powers of 1024 (5 MiB, not 4.77 MiB). */
  bytes?: boolean;
}

const HEIGHT = 150;
const PAD = { left: 62, right: 62, top: 10, bottom: 20 };
const GRID_LINES = 4;

/** The smallest "nice" number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) at or above n. */
export function niceCeil(n: number): number {
  if (!(n > 0)) return 1;
  const pow = 10 ** Math.floor(Math.log10(n));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * pow >= n * 0.999999) return m * pow;
  return 10 * pow;
}

/** The top of an axis with GRID_LINES round steps (0, 2, 4, 6, 8 rather than 0, 1.25, ...). */
export function axisMax(max: number, bytes = false, lines = GRID_LINES): number {
  if (!(max > 0)) return lines;
  let unit = 1;
  if (bytes) while (max / unit >= 1024) unit *= 1024;
  return niceCeil(max / unit / lines) * unit * lines;
}

/** The SVG path of one series: segments broken where a value is missing. */
export function seriesPath(points: readonly { x: number; y: number | null }[]): string {
  let d = '';
  let pen = false;
  for (const p of points) {
    if (p.y === null) {
      pen = false;
      continue;
    }
    d += `${pen ? 'L' : 'M'}${p.x.toFixed(1)},${p.y.toFixed(1)}`;
    pen = true;
  }
  return d;
}

export class LineChart {
  readonly element: HTMLElement;
  private readonly svgEl: SVGSVGElement;
  private readonly values: HTMLElement[];
  private samples: readonly PanelSample[] = [];
  private width = 600;

  constructor(
    readonly id: string,
    title: string,
    private readonly series: readonly [ChartSeries, ChartSeries],
    private readonly windowMs: number,
  ) {
    this.values = series.map((s) => h('span', { class: 'legend-value', id: `${id}-${s.field}` }, '—'));
    const legend = h(
      'div',
      { class: 'chart-legend' },
      h('span', { class: 'chart-title' }, title),
      ...series.map((s, i) => h('span', { class: 'legend-item' }, h('span', { class: `swatch ${s.colorClass}` }), `${s.label} `, this.values[i])),
    );
    this.svgEl = svg('svg', { class: 'chart-svg', height: HEIGHT, role: 'img', 'aria-label': title });
    this.element = h('figure', { class: 'chart', id, 'data-testid': id }, legend, this.svgEl);
    // The width comes from the observer only: reading clientWidth in draw() would force a layout
    // of the whole page (2,000 table rows) on every update.
    new ResizeObserver((entries) => {
      const w = Math.floor(entries[entries.length - 1].contentRect.width);
      if (w > 0 && w !== this.width) {
        this.width = w;
        this.draw();
      }
    }).observe(this.svgEl);
  }

  /** Redraws from `samples` (oldest first; only the last window is shown). */
  update(samples: readonly PanelSample[]): void {
    this.samples = samples;
    this.series.forEach((s, i) => {
      const last = lastValue(samples, s.field);
      setText(this.values[i], last === null ? '—' : s.format(last));
      setAttr(this.values[i], 'data-value', last);
    });
    this.draw();
  }

  private draw(): void {
    const width = Math.max(200, this.width);
    const root = this.svgEl;
    root.setAttribute('viewBox', `0 0 ${width} ${HEIGHT}`);
    root.replaceChildren();
    const plotW = width - PAD.left - PAD.right;
    const plotH = HEIGHT - PAD.top - PAD.bottom;
    const end = this.samples.length > 0 ? this.samples[this.samples.length - 1].t : 0;
    const start = end - this.windowMs;
    const visible = this.samples.filter((s) => s.t >= start);

    const scales = this.series.map((s) => axisMax(Math.max(0, ...visible.map((p) => p[s.field] ?? 0)), s.bytes));
    const hasData = this.series.map((s) => visible.some((p) => p[s.field] !== null));
    for (let i = 0; i <= GRID_LINES; i++) {
      const y = PAD.top + plotH - (plotH * i) / GRID_LINES;
      root.append(svg('line', { class: 'chart-grid', x1: PAD.left, x2: PAD.left + plotW, y1: y, y2: y }));
      this.series.forEach((s, k) => {
        if (!hasData[k]) return;
        const label = svg('text', {
          class: `chart-axis ${s.colorClass}`,
          x: k === 0 ? PAD.left - 6 : PAD.left + plotW + 6,
          y: y + 4,
          'text-anchor': k === 0 ? 'end' : 'start',
        });
        label.textContent = s.format((scales[k] * i) / GRID_LINES);
        root.append(label);
      });
    }
    const minutes = Math.round(this.windowMs / 60000);
    for (const [frac, text] of [
      [0, `-${minutes}m`],
      [0.5, `-${minutes / 2}m`],
      [1, 'now'],
    ] as const) {
      const label = svg('text', { class: 'chart-axis', x: PAD.left + plotW * frac, y: HEIGHT - 4, 'text-anchor': frac === 0 ? 'start' : frac === 1 ? 'end' : 'middle' });
      label.textContent = text;
      root.append(label);
    }
    if (visible.length < 2) {
      const wait = svg('text', { class: 'chart-empty', x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, 'text-anchor': 'middle' });
      wait.textContent = 'Waiting for samples…';
      root.append(wait);
    }
    this.series.forEach((s, k) => {
      const points = visible.map((p) => {
        const v = p[s.field];
        return {
          x: PAD.left + ((p.t - start) / this.windowMs) * plotW,
          y: v === null || !Number.isFinite(v) ? null : PAD.top + plotH - (Math.max(0, v) / scales[k]) * plotH,
        };
      });
      const d = seriesPath(points);
      if (d === '') return;
      root.append(svg('path', { class: `chart-line ${s.colorClass}`, d, 'data-series': s.field }));
    });
  }
}

/** The newest sample's value (null while the quantity does not apply, e.g. no copy running). */
function lastValue(samples: readonly PanelSample[], field: SampleField): number | null {
  return samples.length === 0 ? null : samples[samples.length - 1][field];
}
