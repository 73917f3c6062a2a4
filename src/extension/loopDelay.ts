import { appendFileSync } from 'node:fs';
import { monitorEventLoopDelay, performance, type IntervalHistogram } from 'node:perf_hooks';

const RESOLUTION_MS = 10;
const REPORT_EVERY_MS = 30_000;
const STALL_PROBE_MS = 20;
const STALL_MS = 40;

/**
 * The extension host's event-loop delay while syncs run here, reported every 30 s and when the
 * last run ends, so "the engine never freezes VS Code" is measured, not assumed. With
 * PG_LIVE_SYNC_DIAGNOSTICS_FILE set, each report is also appended there as a JSON line, and so is
 * each stall of 40 ms or more, with its time.
 */
export class LoopDelayMonitor {
  private histogram: IntervalHistogram | null = null;
  private timer: NodeJS.Timeout | null = null;
  private stallProbe: NodeJS.Timeout | null = null;

  constructor(private readonly report: (line: string) => void) {}

  start(): void {
    if (this.histogram) return;
    this.histogram = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
    this.histogram.enable();
    this.timer = setInterval(() => this.flush(), REPORT_EVERY_MS);
    this.timer.unref();
    const file = process.env.PG_LIVE_SYNC_DIAGNOSTICS_FILE;
    if (file) {
      // Each stall with its time, so a slow report can be matched with what ran then (VS Code's logs).
      let last = performance.now();
      this.stallProbe = setInterval(() => {
        const now = performance.now();
        const late = now - last - STALL_PROBE_MS;
        last = now;
        if (late >= STALL_MS) appendFileSync(file, JSON.stringify({ at: new Date().toISOString(), stallMs: Math.round(late) }) + '\n');
      }, STALL_PROBE_MS);
      this.stallProbe.unref();
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.stallProbe) clearInterval(this.stallProbe);
    this.stallProbe = null;
    this.flush();
    this.histogram?.disable();
    this.histogram = null;
    this.timer = null;
  }

  private flush(): void {
    const h = this.histogram;
    if (!h || h.count === 0) return;
    // The histogram records the whole interval between checks; the delay is what exceeds the resolution.
    const ms = (ns: number) => Math.max(0, Math.round((ns / 1e6 - RESOLUTION_MS) * 10) / 10);
    const figures = { p50: ms(h.percentile(50)), p99: ms(h.percentile(99)), max: ms(h.max), samples: h.count };
    this.report(`extension host event-loop delay since the last report: p50 ${figures.p50} ms, p99 ${figures.p99} ms, max ${figures.max} ms`);
    const file = process.env.PG_LIVE_SYNC_DIAGNOSTICS_FILE;
    if (file) appendFileSync(file, JSON.stringify({ at: new Date().toISOString(), eventLoopDelayMs: figures }) + '\n');
    h.reset();
  }
}
