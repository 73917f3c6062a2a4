/**
 * `npm run bench:panel`: how long the progress panel takes to put a message on screen, next to a
 * baseline measured in the same run. Usage: node --import tsx test/bench/panel.ts [--tables 2000]
 * [--updates 40] [--rounds 5].
 *
 * A local HTTP server (127.0.0.1, free port) serves the page the extension builds, `panelHtml()`
 * with its strict CSP, and the real dist/webview.js and media/panel.css (cspSource and
 * asWebviewUri map to that server). Debian chromium opens it through playwright-core; the fake
 * `acquireVsCodeApi` and the in-page probes come in as a playwright init script, which the page's
 * CSP does not govern, so the panel's own script and styles run under the policy unchanged.
 *
 * Each round opens a fresh page, waits for the panel's `ready`, posts one `state` with N tables
 * and 300 chart samples, then R `update`s (50 changed rows, a new header and one sample each),
 * then clicks header sort buttons 5 times. Each message is dispatched as the `message` event a
 * webview receives (structured clone included) and timed with performance.now() from dispatch
 * (or from the click) to just after the next frame: a requestAnimationFrame callback, then a
 * MessageChannel task, which runs once that frame's style, layout and paint are done. A line
 * after the table gives the script part alone (dispatch or click until the listeners return).
 * A small update's figure is mostly the wait for the next 60 Hz frame.
 *
 * The baseline, in its own page of the same browser: a bare <table> (no CSS) whose <tbody> is
 * re-rendered from scratch with innerHTML for every message and every sort: the same rows, the
 * same columns, the same order. For a first state it is the floor (the browser's own cost of
 * 2,000 rows); for updates and sorts it is what a non-incremental panel would pay.
 *
 * Prints median, p90 and worst; asserts nothing about time (the machine is shared and noisy).
 * Exits non-zero only on functional failure: no `ready`, a CSP violation, a page error, rows
 * missing or in the wrong order.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core';
import { panelHtml } from '../../src/extension/panelUpdates';
import type { HostToPanel, PanelHeader, PanelSample, PanelTable, TableStateCode } from '../../webview/protocol';

const REPO = path.resolve(__dirname, '../..');
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];
const CHANGED_PER_UPDATE = 50;
const STATE_SAMPLES = 300;
const SAMPLE_EVERY_MS = 2000;
/** Header columns clicked in turn: rows twice (ascending, then descending), then three others. */
const SORTS = ['rows', 'rows', 'progress', 'state', 'table'] as const;
const READY_TIMEOUT_MS = 30_000;
const STEP_TIMEOUT_MS = 60_000;

class FunctionalError extends Error {}

// ---- arguments ----

function intArg(name: string, fallback: number): number {
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    let value: string | undefined;
    if (argv[i] === `--${name}`) value = argv[i + 1];
    else if (argv[i].startsWith(`--${name}=`)) value = argv[i].slice(name.length + 3);
    else continue;
    const n = Number(value);
    if (!Number.isInteger(n) || n < 1) throw new FunctionalError(`--${name} wants a positive integer, got ${value}`);
    return n;
  }
  return fallback;
}

// ---- data: deterministic (seeded), shaped like a big initial copy in progress ----

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SCHEMAS = ['public', 'sales', 'billing', 'audit', 'inventory', 'crm', 'hr', 'ops', 'events', 'archive'];
const STEMS = ['orders', 'customers', 'invoices', 'events', 'line_items', 'payments', 'sessions', 'products', 'shipments', 'audit_log'];

function makeTables(n: number, rand: () => number): PanelTable[] {
  const tables: PanelTable[] = [];
  for (let i = 0; i < n; i++) {
    const schema = SCHEMAS[i % SCHEMAS.length];
    const table = `${STEMS[Math.floor(i / SCHEMAS.length) % STEMS.length]}_${String(i).padStart(5, '0')}`;
    const approximateRows = Math.floor(10 ** (2 + rand() * 5));
    const approximateSize = Math.floor(approximateRows * (80 + rand() * 300));
    const r = rand();
    const state: TableStateCode = r < 0.55 ? 'r' : r < 0.65 ? 's' : r < 0.8 ? 'd' : r < 0.88 ? 'f' : 'i';
    const t: PanelTable = {
      key: `${schema}.${table}`,
      schema,
      table,
      targetSchema: rand() < 0.1 ? 'replica' : schema,
      targetTable: table,
      state,
      removed: rand() < 0.005,
      rowsCopied: 0,
      bytesCopied: 0,
      approximateRows,
      approximateSize,
      copyRowsPerSecond: null,
      etaSeconds: null,
      lastError: null,
    };
    if (state === 'd') {
      t.rowsCopied = Math.floor(approximateRows * rand());
      t.bytesCopied = Math.floor((approximateSize * t.rowsCopied) / approximateRows);
      t.copyRowsPerSecond = Math.floor(1000 + rand() * 50000);
      t.etaSeconds = Math.ceil((approximateRows - t.rowsCopied) / t.copyRowsPerSecond);
    } else if (state !== 'i') {
      t.rowsCopied = Math.floor(approximateRows * (0.95 + rand() * 0.1));
      t.bytesCopied = Math.floor(approximateSize * (0.95 + rand() * 0.1));
    }
    if (rand() < 0.01) t.lastError = `permission denied for table ${table}\nFix: GRANT SELECT ON ${schema}.${table} TO the connector role`;
    tables.push(t);
  }
  return tables;
}

/** The next step of one table's copy: init starts, copying moves on, the rest get a new estimate. */
function advance(t: PanelTable, rand: () => number): PanelTable {
  const next = { ...t };
  switch (t.state) {
    case 'i':
      next.state = 'd';
      next.copyRowsPerSecond = Math.floor(1000 + rand() * 50000);
      next.etaSeconds = Math.ceil(t.approximateRows / next.copyRowsPerSecond);
      break;
    case 'd': {
      const cps = t.copyRowsPerSecond ?? 5000;
      next.rowsCopied = Math.min(t.approximateRows, t.rowsCopied + Math.floor(cps * (SAMPLE_EVERY_MS / 1000)));
      next.bytesCopied = Math.floor((t.approximateSize * next.rowsCopied) / t.approximateRows);
      if (next.rowsCopied >= t.approximateRows) {
        next.state = 'f';
        next.copyRowsPerSecond = null;
        next.etaSeconds = null;
      } else {
        next.copyRowsPerSecond = Math.floor(cps * (0.8 + rand() * 0.4));
        next.etaSeconds = Math.ceil((t.approximateRows - next.rowsCopied) / next.copyRowsPerSecond);
      }
      break;
    }
    case 'f':
      next.state = 's';
      break;
    case 's':
      next.state = 'r';
      break;
    case 'r':
      next.approximateRows = Math.max(1, Math.floor(t.approximateRows * (0.98 + rand() * 0.04)));
      break;
  }
  return next;
}

function makeHeader(t: number, rand: () => number): PanelHeader {
  return {
    name: 'bench',
    mode: 'local',
    source: 'db-source:5432/app',
    target: 'db-target:5432/app',
    publications: ['pub_all'],
    activity: 'copying',
    appliedLsn: `0/${(0x16b3748 + Math.floor(t / 10)).toString(16).toUpperCase()}`,
    lagBytes: Math.floor(rand() * 64 * 1024 * 1024),
    lagSeconds: Math.round(rand() * 300) / 10,
    changesPerSecond: Math.floor(rand() * 20000),
    retainedWalBytes: Math.floor(rand() * 2 * 1024 ** 3),
    walKeepBytes: 4 * 1024 ** 3,
    safeWalBytes: 2 * 1024 ** 3,
    secondsToInvalidation: 7200,
    lastError: null,
    updatedAt: t,
  };
}

function makeSample(t: number, rand: () => number): PanelSample {
  return {
    t,
    lagBytes: Math.floor(rand() * 64 * 1024 * 1024),
    lagSeconds: Math.round(rand() * 300) / 10,
    changesPerSecond: Math.floor(rand() * 20000),
    copyBytesPerSecond: Math.floor(rand() * 200 * 1024 * 1024),
  };
}

/** One round's messages: a state, then `updates` updates of CHANGED_PER_UPDATE distinct rows. */
function makeScript(n: number, updates: number, seed: number): { state: HostToPanel; updates: HostToPanel[]; final: Map<string, PanelTable> } {
  const rand = prng(seed);
  const tables = makeTables(n, rand);
  const t0 = Date.UTC(2025, 0, 1, 12);
  const samples: PanelSample[] = [];
  for (let i = 0; i < STATE_SAMPLES; i++) samples.push(makeSample(t0 - (STATE_SAMPLES - 1 - i) * SAMPLE_EVERY_MS, rand));
  const state: HostToPanel = { type: 'state', header: makeHeader(t0, rand), tables: tables.map((t) => ({ ...t })), samples };
  const current = new Map(tables.map((t) => [t.key, t]));
  const keys = tables.map((t) => t.key);
  const list: HostToPanel[] = [];
  for (let u = 1; u <= updates; u++) {
    const t = t0 + u * SAMPLE_EVERY_MS;
    const picked = new Set<string>();
    while (picked.size < Math.min(CHANGED_PER_UPDATE, keys.length)) picked.add(keys[Math.floor(rand() * keys.length)]);
    const changed = [...picked].map((k) => advance(current.get(k) as PanelTable, rand));
    for (const c of changed) current.set(c.key, c);
    list.push({ type: 'update', header: makeHeader(t, rand), tables: changed, removedKeys: [], sample: makeSample(t, rand) });
  }
  return { state, updates: list, final: current };
}

// ---- the served pages ----

const BASELINE_HTML = `<!DOCTYPE html>
<html lang="en">
<head><meta charset="UTF-8"><title>baseline</title></head>
<body>
<div id="hdr"></div>
<table id="baseline">
<thead><tr>${['table', 'state', 'progress', 'rows', 'bytes', 'speed', 'eta', 'error'].map((c) => `<th data-col="${c}"><button class="sort-button" type="button">${c}</button></th>`).join('')}<th></th></tr></thead>
<tbody></tbody>
</table>
</body>
</html>`;

const CONTENT_TYPES: Record<string, string> = { '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml', '.png': 'image/png', '.map': 'application/json' };

async function startServer(): Promise<{ origin: string; close: () => Promise<void> }> {
  let origin = '';
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const send = (status: number, type: string, body: string | Buffer) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (url.pathname === '/panel') {
      // What ProgressPanel.html() builds, with the webview's resource mapping pointed at us.
      const html = panelHtml({
        cspSource: origin,
        nonce: randomBytes(18).toString('base64'),
        scriptUri: `${origin}/dist/webview.js`,
        styleUri: `${origin}/media/panel.css`,
        syncName: 'bench',
      });
      send(200, 'text/html; charset=utf-8', html);
      return;
    }
    if (url.pathname === '/baseline') {
      send(200, 'text/html; charset=utf-8', BASELINE_HTML);
      return;
    }
    // localResourceRoots: dist/ and media/ only.
    const file = path.resolve(REPO, `.${decodeURIComponent(url.pathname)}`);
    const allowed = [path.join(REPO, 'dist') + path.sep, path.join(REPO, 'media') + path.sep].some((root) => file.startsWith(root));
    if (!allowed || !existsSync(file)) {
      send(404, 'text/plain', 'not found');
      return;
    }
    send(200, CONTENT_TYPES[path.extname(file)] ?? 'application/octet-stream', readFileSync(file));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { origin, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

// ---- in the page ----

// Kept as source text: tsx compiles this file with esbuild's keepNames, whose __name() helper does
// not exist in the browser (the same reason as test/e2e/workbench.ts).
const browserFn = <A, R>(source: string) => new Function(`return (${source});`)() as (arg: A) => R;

/**
 * Installed before any page script (playwright init script): the fake webview API, the probes
 * (CSP violations, errors, timings) and, on /baseline, the bare-table renderer.
 */
const PAGE_HARNESS = String.raw`(() => {
  const B = { ready: false, fromPanel: [], saved: undefined, violations: [], errors: [], sortTimes: [] };
  window.__bench = B;

  document.addEventListener('securitypolicyviolation', (e) => {
    B.violations.push({ directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample, where: e.sourceFile + ':' + e.lineNumber });
  }, true);
  window.addEventListener('error', (e) => B.errors.push(String(e.message)));
  window.addEventListener('unhandledrejection', (e) => B.errors.push(String(e.reason)));

  // Resolves with check()'s first truthy value, or null after timeoutMs. Waits happen here rather
  // than in page.waitForFunction, whose polling evals its predicate, which the CSP refuses.
  B.until = (check, timeoutMs) => new Promise((resolve) => {
    const t0 = performance.now();
    const tick = () => {
      const v = check();
      if (v) resolve(v);
      else if (performance.now() - t0 > timeoutMs) resolve(null);
      else setTimeout(tick, 10);
    };
    tick();
  });

  // From t0 to just after the next frame: rAF runs before the frame's style, layout and paint;
  // a MessageChannel task queued there runs once they are done.
  const afterFrame = (t0) => new Promise((resolve) => {
    requestAnimationFrame(() => {
      const ch = new MessageChannel();
      ch.port1.onmessage = () => resolve(performance.now() - t0);
      ch.port2.postMessage(null);
    });
  });

  // As a webview receives a host message: a structured clone, then a 'message' event on window.
  // script: until the listeners return; frame: until after the next frame.
  B.deliver = (msg) => {
    const t0 = performance.now();
    window.dispatchEvent(new MessageEvent('message', { data: structuredClone(msg) }));
    const script = performance.now() - t0;
    return afterFrame(t0).then((frame) => ({ frame, script }));
  };

  // A click on a header sort button: timed from its capture on the document (before the button's
  // own listener) to the bubble back to the document (script) and to after the next frame.
  let clickT0 = 0;
  let clickScript = 0;
  const isSort = (e) => e.target instanceof Element && e.target.closest('.sort-button') !== null;
  document.addEventListener('click', (e) => {
    if (!isSort(e)) return;
    clickT0 = performance.now();
    const t0 = clickT0;
    afterFrame(t0).then((frame) => B.sortTimes.push({ frame, script: clickScript }));
  }, true);
  document.addEventListener('click', (e) => {
    if (isSort(e)) clickScript = performance.now() - clickT0;
  });

  // A few of the theme variables VS Code sets on a webview's <html> (through the CSSOM, which the
  // CSP allows), so fonts and sizes are as in the editor.
  const THEME = {
    '--vscode-font-family': 'system-ui, "Ubuntu", "Droid Sans", sans-serif',
    '--vscode-font-size': '13px',
    '--vscode-font-weight': 'normal',
    '--vscode-editor-font-family': '"Droid Sans Mono", monospace',
    '--vscode-foreground': '#cccccc',
    '--vscode-editor-background': '#1f1f1f',
    '--vscode-descriptionForeground': '#9d9d9d',
    '--vscode-panel-border': '#2b2b2b',
    '--vscode-focusBorder': '#0078d4',
    '--vscode-list-hoverBackground': '#2a2d2e',
    '--vscode-progressBar-background': '#0078d4',
    '--vscode-button-secondaryBackground': '#313131',
    '--vscode-button-secondaryForeground': '#cccccc',
  };
  window.acquireVsCodeApi = () => {
    for (const [k, v] of Object.entries(THEME)) document.documentElement.style.setProperty(k, v);
    return {
      postMessage: (m) => {
        B.fromPanel.push(m);
        if (m !== null && typeof m === 'object' && m.type === 'ready') B.ready = true;
      },
      getState: () => B.saved,
      setState: (s) => { B.saved = s; },
    };
  };

  // What is on screen, for the functional checks.
  B.inspect = () => {
    if (location.pathname === '/baseline') {
      const trs = Array.from(document.querySelectorAll('#baseline tbody tr'));
      return { keys: trs.map((r) => r.dataset.key), rows: trs.map((r) => Number(r.dataset.rows)), total: trs.length };
    }
    const rs = Array.from(document.querySelectorAll('#tables-grid [data-table-key]'));
    const count = document.getElementById('table-count');
    return {
      keys: rs.map((r) => r.dataset.tableKey),
      rows: rs.map((r) => Number(r.querySelector('[data-col="rows"]').dataset.rowsCopied)),
      total: count === null ? -1 : Number(count.dataset.total),
    };
  };

  if (location.pathname !== '/baseline') return;

  // ---- the baseline: a bare table, its whole body re-rendered with innerHTML every time ----
  const WORDS = { i: 'init', d: 'copying', f: 'catching up', s: 'synced', r: 'ready' };
  const RANK = { error: 0, init: 1, copying: 2, 'catching up': 3, synced: 4, ready: 5, removed: 6 };
  const word = (t) => (t.removed ? 'removed' : t.lastError !== null ? 'error' : WORDS[t.state]);
  const fraction = (t) => (t.state === 'i' ? 0 : t.state === 'd' ? (t.approximateRows > 0 ? Math.min(1, t.rowsCopied / t.approximateRows) : 0) : 1);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => '&#' + c.charCodeAt(0) + ';');
  const bytes = (n) => (n >= 1048576 ? (n / 1048576).toFixed(1) + ' MiB' : n >= 1024 ? (n / 1024).toFixed(1) + ' KiB' : n + ' B');
  const cmpText = (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  let rows = new Map();
  let sort = 'table';
  let dir = 1;
  const compare = (a, b) => {
    let c = 0;
    if (sort === 'state') c = RANK[word(a)] - RANK[word(b)];
    else if (sort === 'progress') c = fraction(a) - fraction(b);
    else if (sort === 'rows') c = a.rowsCopied - b.rowsCopied;
    else if (sort === 'bytes') c = a.bytesCopied - b.bytesCopied;
    else if (sort === 'speed') c = (a.copyRowsPerSecond ?? -1) - (b.copyRowsPerSecond ?? -1);
    else if (sort === 'eta') c = (a.etaSeconds ?? -1) - (b.etaSeconds ?? -1);
    else if (sort === 'error') c = cmpText(a.lastError ?? '', b.lastError ?? '');
    if (c === 0) c = cmpText(a.key, b.key);
    return c * dir;
  };
  const rowHtml = (t) => {
    const target = t.targetSchema + '.' + t.targetTable;
    const f = fraction(t);
    return '<tr data-key="' + esc(t.key) + '" data-rows="' + t.rowsCopied + '">' +
      '<td>' + esc(t.key) + ' → ' + esc(target) + '</td>' +
      '<td>' + word(t) + '</td>' +
      '<td>' + (Math.floor(f * 1000) / 10) + '%</td>' +
      '<td>' + t.rowsCopied + ' / ~' + t.approximateRows + '</td>' +
      '<td>' + bytes(t.bytesCopied) + ' / ~' + bytes(t.approximateSize) + '</td>' +
      '<td>' + (t.copyRowsPerSecond === null ? '—' : t.copyRowsPerSecond + ' rows/s') + '</td>' +
      '<td>' + (t.etaSeconds === null ? '—' : t.etaSeconds + 's') + '</td>' +
      '<td>' + esc(t.lastError ?? '') + '</td>' +
      '<td><button type="button"' + (t.removed ? ' disabled' : '') + '>Resync</button></td></tr>';
  };
  document.addEventListener('DOMContentLoaded', () => {
    const tbody = document.querySelector('#baseline tbody');
    const hdr = document.getElementById('hdr');
    const render = () => { tbody.innerHTML = Array.from(rows.values()).sort(compare).map(rowHtml).join(''); };
    window.addEventListener('message', (e) => {
      const m = e.data;
      if (m.type === 'state') rows = new Map(m.tables.map((t) => [t.key, t]));
      else if (m.type === 'update') {
        for (const t of m.tables) rows.set(t.key, t);
        for (const k of m.removedKeys) rows.delete(k);
      } else return;
      hdr.textContent = m.header.name + ' · ' + m.header.activity + ' · lag ' + m.header.lagBytes + ' B · ' + m.header.appliedLsn;
      render();
    });
    for (const b of document.querySelectorAll('.sort-button')) {
      b.addEventListener('click', () => {
        const col = b.parentElement.dataset.col;
        dir = sort === col ? -dir : 1;
        sort = col;
        render();
      });
    }
    B.ready = true;
  });
})();`;

interface Inspection {
  keys: string[];
  rows: number[];
  total: number;
}
interface BenchProbe {
  violations: { directive: string; blocked: string; sample: string; where: string }[];
  errors: string[];
}

/** ms from dispatch to after the next frame, and to the listeners' return. */
interface Timing {
  frame: number;
  script: number;
}

const DELIVER = browserFn<HostToPanel, Timing>('(m) => window.__bench.deliver(m)');
const INSPECT = browserFn<undefined, Inspection>('() => window.__bench.inspect()');
const PROBE = browserFn<undefined, BenchProbe>('() => ({ violations: window.__bench.violations, errors: window.__bench.errors })');
const READY = browserFn<number, boolean | null>('(ms) => window.__bench ? window.__bench.until(() => window.__bench.ready, ms) : null');
const SORT_COUNT = browserFn<undefined, number>('() => window.__bench.sortTimes.length');
const SORT_TIME = browserFn<{ i: number; ms: number }, Timing | null>('({ i, ms }) => window.__bench.until(() => window.__bench.sortTimes[i], ms)');
const VIOLATION = browserFn<{ i: number; ms: number }, unknown>('({ i, ms }) => window.__bench.until(() => window.__bench.violations[i], ms)');
/** Sets a style attribute, which the panel's CSP (no 'unsafe-inline' styles) must refuse and report. */
const POKE_CSP = browserFn<undefined, void>(`() => { document.body.setAttribute('style', 'outline: 0'); }`);

function withTimeout<T>(what: string, p: Promise<T>, ms = STEP_TIMEOUT_MS): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new FunctionalError(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

// ---- one round in one page ----

interface Times {
  state: Timing[];
  update: Timing[];
  sort: Timing[];
}

interface PageLog {
  consoleCsp: string[];
  pageErrors: string[];
}

async function openPage(context: BrowserContext, url: string, log: PageLog): Promise<Page> {
  const page = await context.newPage();
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) log.consoleCsp.push(`${url}: ${m.text()}`);
  });
  page.on('pageerror', (e) => log.pageErrors.push(`${url}: ${String(e)}`));
  await page.goto(url);
  if ((await page.evaluate(READY, READY_TIMEOUT_MS)) !== true) throw new FunctionalError(`${url}: no ready within ${READY_TIMEOUT_MS} ms`);
  return page;
}

function checkRows(label: string, seen: Inspection, expected: Map<string, PanelTable>): void {
  if (seen.keys.length !== expected.size || seen.total !== expected.size) {
    throw new FunctionalError(`${label}: ${seen.keys.length} rows on screen (count says ${seen.total}), expected ${expected.size}`);
  }
  const onScreen = new Set(seen.keys);
  const missing = [...expected.keys()].filter((k) => !onScreen.has(k));
  if (missing.length > 0) throw new FunctionalError(`${label}: ${missing.length} rows missing, e.g. ${missing.slice(0, 3).join(', ')}`);
  seen.keys.forEach((k, i) => {
    const want = (expected.get(k) as PanelTable).rowsCopied;
    if (seen.rows[i] !== want) throw new FunctionalError(`${label}: row ${k} shows ${seen.rows[i]} rows copied, expected ${want}`);
  });
}

function checkOrder(label: string, seen: Inspection, col: string, dir: 1 | -1): void {
  for (let i = 1; i < seen.keys.length; i++) {
    const c = col === 'rows' ? seen.rows[i] - seen.rows[i - 1] : col === 'table' ? (seen.keys[i] > seen.keys[i - 1] ? 1 : -1) : 0;
    if (c * dir < 0) throw new FunctionalError(`${label}: rows out of order after sorting by ${col} at ${seen.keys[i - 1]}, ${seen.keys[i]}`);
  }
}

async function runRound(context: BrowserContext, url: string, label: string, n: number, updates: number, seed: number, times: Times, log: PageLog): Promise<void> {
  const script = makeScript(n, updates, seed);
  const page = await openPage(context, url, log);
  try {
    times.state.push(await withTimeout(`${label} state`, page.evaluate(DELIVER, script.state)));
    const afterState = new Map((script.state as { tables: PanelTable[] }).tables.map((t) => [t.key, t]));
    checkRows(`${label} after the state`, await page.evaluate(INSPECT, undefined), afterState);

    for (const [i, u] of script.updates.entries()) times.update.push(await withTimeout(`${label} update ${i + 1}`, page.evaluate(DELIVER, u)));
    checkRows(`${label} after ${updates} updates`, await page.evaluate(INSPECT, undefined), script.final);

    let sortCol = 'table';
    let dir: 1 | -1 = 1;
    for (const col of SORTS) {
      const before = await page.evaluate(SORT_COUNT, undefined);
      await page.locator(`[data-col="${col}"] .sort-button`).click({ timeout: STEP_TIMEOUT_MS });
      const timing = await page.evaluate(SORT_TIME, { i: before, ms: STEP_TIMEOUT_MS });
      if (timing === null) throw new FunctionalError(`${label}: no frame after the click on ${col}`);
      times.sort.push(timing);
      dir = sortCol === col ? (-dir as 1 | -1) : 1;
      sortCol = col;
      const seen = await page.evaluate(INSPECT, undefined);
      checkRows(`${label} after sorting by ${col}`, seen, script.final);
      checkOrder(label, seen, col, dir);
    }

    const probe = await page.evaluate(PROBE, undefined);
    if (probe.errors.length > 0) throw new FunctionalError(`${label}: errors in the page: ${probe.errors.join('; ')}`);
    if (probe.violations.length > 0) {
      throw new FunctionalError(`${label}: ${probe.violations.length} CSP violation(s): ${probe.violations.slice(0, 5).map((v) => `${v.directive} blocked ${v.blocked || v.sample} at ${v.where}`).join('; ')}`);
    }
  } finally {
    await page.close();
  }
}

/** Shows the violation probe works: the panel's CSP refuses an inline style and the page reports it. */
async function cspIsLive(context: BrowserContext, origin: string, log: PageLog): Promise<boolean> {
  const page = await openPage(context, `${origin}/panel`, log);
  try {
    const before = (await page.evaluate(PROBE, undefined)).violations.length;
    await page.evaluate(POKE_CSP, undefined);
    return (await page.evaluate(VIOLATION, { i: before, ms: 5000 })) !== null;
  } finally {
    await page.close();
  }
}

// ---- report ----

/** Nearest-rank percentile of sorted values. */
function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

function stats(values: readonly number[]): { n: number; median: number; p90: number; worst: number } {
  const s = [...values].sort((a, b) => a - b);
  return { n: s.length, median: percentile(s, 50), p90: percentile(s, 90), worst: s[s.length - 1] };
}

const ms = (v: number) => (v >= 10 ? v.toFixed(0) : v.toFixed(1));

function report(ours: Times, base: Times, changed: number): void {
  const rows: [string, Timing[], Timing[]][] = [
    ['first state', ours.state, base.state],
    [`update (${changed} rows + sample)`, ours.update, base.update],
    ['sort (header click)', ours.sort, base.sort],
  ];
  const w = 26;
  const out = (line: string) => process.stdout.write(`${line}\n`);
  const cols = (c: string[]) => c.map((v) => v.padStart(7)).join('');
  out(`${''.padEnd(w + 5)}${'panel (ms)'.padStart(14).padEnd(21)} |${'baseline (ms)'.padStart(17).padEnd(21)} | ours/baseline`);
  out(`${'ms to next frame'.padEnd(w)}${'n'.padStart(5)}${cols(['median', 'p90', 'worst'])} |${cols(['median', 'p90', 'worst'])} |${cols(['median', 'p90'])}`);
  for (const [name, a, b] of rows) {
    const x = stats(a.map((t) => t.frame));
    const y = stats(b.map((t) => t.frame));
    out(
      `${name.padEnd(w)}${String(x.n).padStart(5)}${cols([x.median, x.p90, x.worst].map(ms))} |${cols([y.median, y.p90, y.worst].map(ms))} |` +
        cols([(x.median / y.median).toFixed(2), (x.p90 / y.p90).toFixed(2)]),
    );
  }
  // The rest of each frame is style, layout and paint (and, for a small update, waiting for vsync).
  const script = (t: Timing[]) => ms(stats(t.map((x) => x.script)).median);
  out(`of which script (median ms, panel/baseline): ${rows.map(([name, a, b]) => `${name.split(' (')[0]} ${script(a)}/${script(b)}`).join(', ')}`);
}

// ---- main ----

async function main(): Promise<void> {
  const n = intArg('tables', 2000);
  const updates = intArg('updates', 40);
  const rounds = intArg('rounds', 5);
  for (const f of ['dist/webview.js', 'media/panel.css']) {
    if (!existsSync(path.join(REPO, f))) throw new FunctionalError(`${f} is missing: run \`npm run build\` first (or \`npm run bench:panel\`)`);
  }
  if (!existsSync(CHROMIUM)) throw new FunctionalError(`${CHROMIUM} is missing (apt-get install chromium)`);

  const server = await startServer();
  let browser: Browser | undefined;
  try {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
    const context = await browser.newContext({ viewport: { width: 1400, height: 900 } });
    await context.addInitScript({ content: PAGE_HARNESS });
    process.stdout.write(
      `panel bench: ${n.toLocaleString('en')} tables, ${rounds} rounds of 1 state + ${updates} updates + ${SORTS.length} sorts, chromium ${browser.version()}\n` +
        'baseline: a bare <table> re-rendered with innerHTML for every message and sort (no CSS)\n',
    );

    const log: PageLog = { consoleCsp: [], pageErrors: [] };
    const ours: Times = { state: [], update: [], sort: [] };
    const base: Times = { state: [], update: [], sort: [] };
    // Alternating panel and baseline rounds, so a noisy spell on the machine hits both alike.
    for (let r = 0; r < rounds; r++) {
      await runRound(context, `${server.origin}/panel`, `panel round ${r + 1}`, n, updates, 1000 + r, ours, log);
      await runRound(context, `${server.origin}/baseline`, `baseline round ${r + 1}`, n, updates, 1000 + r, base, log);
    }
    if (log.pageErrors.length > 0) throw new FunctionalError(`page errors: ${log.pageErrors.join('; ')}`);
    if (log.consoleCsp.length > 0) throw new FunctionalError(`CSP violations reported on the console: ${log.consoleCsp.slice(0, 5).join('; ')}`);
    const live = await cspIsLive(context, server.origin, { consoleCsp: [], pageErrors: [] });
    if (!live) throw new FunctionalError('the CSP probe saw no violation for a deliberate inline style: the policy or the probe is not working');

    report(ours, base, Math.min(CHANGED_PER_UPDATE, n));
    process.stdout.write('CSP violations: 0 (the probe does see a deliberate inline style refused)\n');
  } finally {
    await browser?.close();
    await server.close();
  }
}

main().catch((err) => {
  process.stderr.write(`bench:panel: ${err instanceof Error ? (err instanceof FunctionalError ? err.message : (err.stack ?? err.message)) : String(err)}\n`);
  process.exit(1);
});
