/**
 * The one way sizes, counts and durations are written, by the CLI, the extension and the progress panel
 * (webview/format.ts re-exports these): IEC units for bytes, thousands separators for counts, 3m 20s for durations.
 * Plain functions importing nothing but oneLine (itself import-free), so the browser bundle can share them.
 */
import { oneLine } from './oneLine';

/** What a size or count that is not known shows. */
export const DASH = '—';

const SIZE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1536 -> "1.5 KiB", 5 * 1024 ** 3 -> "5 GiB"; null -> "—". */
export function formatBytes(bytes: number | null): string {
  if (bytes === null || !Number.isFinite(bytes)) return DASH;
  let value = Math.abs(bytes);
  let unit = 0;
  while (value >= 1024 && unit < SIZE_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  // "5.00" -> "5", "2.50" -> "2.5": round numbers (chart axes) read better.
  const text = value.toFixed(digits).replace(/\.0+$|(\.\d*?)0+$/, '$1');
  return `${bytes < 0 ? '-' : ''}${text} ${SIZE_UNITS[unit]}`;
}

/** 1234567 -> "1,234,567" (rounded to a whole number); null -> "—". Not locale-dependent. */
export function formatCount(n: number | null): string {
  if (n === null || !Number.isFinite(n)) return DASH;
  const whole = String(Math.round(Math.abs(n))).replace(/\B(?=(\d{3})+$)/g, ',');
  return Math.round(n) < 0 ? `-${whole}` : whole;
}

/** 1 -> "1 table", 63987 -> "63,987 tables": a count with its noun, singular or plural. */
export function counted(n: number, one: string, many = `${one}s`): string {
  return `${formatCount(n)} ${Math.round(n) === 1 ? one : many}`;
}

/** 42 -> "42s", 200 -> "3m 20s", 7500 -> "2h 05m", 0.4 -> "0.4s". */
export function formatDuration(seconds: number | null): string {
  if (seconds === null || !Number.isFinite(seconds)) return DASH;
  if (seconds < 0) seconds = 0;
  if (seconds < 10 && !Number.isInteger(seconds)) return `${seconds.toFixed(1)}s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d ${String(Math.floor((s % 86400) / 3600)).padStart(2, '0')}h`;
}

/** Rows of cells as aligned text columns, two spaces apart (the first row is the heading). */
export function formatColumns(rows: string[][]): string[] {
  // A cell holds names and errors read from servers: one row stays one line.
  const cells = rows.map((r) => r.map(oneLine));
  const widths = cells[0].map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  return cells.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd());
}

/**
 * A size as PostgreSQL writes one (kB, MB: powers of 1024) or in IEC units (KiB, MiB), or bare
 * bytes: "256MB" -> 268435456, "0" -> 0; null when it is not a size.
 */
export function parseSize(text: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*(?:(B)|([KMGT])i?B)?$/i.exec(text.trim());
  if (!m) return null;
  return Math.floor(Number(m[1]) * 1024 ** (m[3] ? 'KMGT'.indexOf(m[3].toUpperCase()) + 1 : 0));
}
