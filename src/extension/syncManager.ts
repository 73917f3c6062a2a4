import * as vscode from 'vscode';
import type pg from 'pg';
import { connect, describeEndpoint, type Endpoint } from '../engine/connection';
import { listSyncSlots, slotsDocument } from '../engine/guardrails';
import { errorMessage } from '../engine/errors';
import { oneLine } from '../engine/oneLine';
import { readSyncReport, dropSync } from '../engine/report';
import { slotInfo, slotNameFor } from '../engine/slot';
import { parseLsn, type Lsn } from '../engine/lsn';
import { describeSequence, syncSequencesOfSync } from '../engine/sequences';
import { DEFAULT_CHUNK_ROWS, VERIFY_CATCH_UP_SECONDS, verifyLines, verifySync } from '../engine/verify';
import { resetTableForResync } from '../engine/state';
import type { PanelAction } from '../../webview/protocol';
import type { ConnectionStore } from './connections';
import { EngineProcess } from './engineProcess';
import { LoopDelayMonitor } from './loopDelay';
import { MonitorClients } from './monitorClients';
import type { PanelSnapshot, PanelSource } from './panelSource';
import { connectionIdentity, connectionUser } from './connectionModel';
import {
  readingFromReport, readingFromStatus, sanitizeSyncDefinition, syncApprovalKey, syncEngineOptions, syncsFromSettings, SyncTracker,
  type SlotReading, type SyncConnection, type SyncDefinition, type SyncSetting,
} from './syncModel';
import { counted } from '../engine/units';

const SECTION = 'pgLiveSync';
const KEY = 'syncs';
const RUNNING_AT_CLOSE = 'pgLiveSync.runningAtClose';
const PAUSED = 'pgLiveSync.paused';
/** Approvals (syncApprovalKey) of syncs from a folder's settings: kept by VS Code, never in the folder. */
const APPROVED = 'pgLiveSync.approvedSyncs';
const SLOT_POLL_MS = 5_000;

interface LocalRun {
  process: EngineProcess;
  source: Endpoint;
  /** Set when the user paused it: the run ends but the sync stays "paused", not "stopped". */
  pausing: boolean;
}

/**
 * Every sync this window knows: those it runs (each in its own engine process) and those it
 * watches from the target's state. It is the panel's, the tree's and the status bar's source.
 */
export class SyncManager implements PanelSource, vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<string>();
  readonly onDidChange = this.changed.event;
  private readonly runs = new Map<string, LocalRun>();
  private readonly trackers = new Map<string, SyncTracker>();
  private readonly retained = new Map<string, SlotReading | { at: number; info: null }>();
  private readonly pollErrors = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private polling = false;
  private shuttingDown = false;
  private lastNotes = '';
  private readonly disposables: vscode.Disposable[] = [];
  private readonly monitor = new MonitorClients();
  private readonly loopDelay: LoopDelayMonitor;

  constructor(
    private readonly context: vscode.ExtensionContext,
    private readonly connections: ConnectionStore,
    private readonly log: vscode.LogOutputChannel,
  ) {
    this.loopDelay = new LoopDelayMonitor((line) => this.log.info(line));
    this.disposables.push(vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration(`${SECTION}.${KEY}`)) void this.poll();
    }));
    // The syncs a folder configures name servers: none is polled before the user trusts the folder.
    if (vscode.workspace.isTrusted) this.startPolling();
    else this.disposables.push(vscode.workspace.onDidGrantWorkspaceTrust(() => this.startPolling()));
  }

  private startPolling(): void {
    if (this.timer) return;
    const seconds = vscode.workspace.getConfiguration(SECTION).get<number>('statusRefreshSeconds', 2);
    this.timer = setInterval(() => void this.poll(), Math.max(1, seconds) * 1000);
    // The folder's own syncs appear in the views once it is trusted.
    for (const d of this.definitions()) this.changed.fire(d.name);
    void this.poll();
  }

  dispose(): void {
    clearInterval(this.timer);
    this.loopDelay.stop();
    this.monitor.dispose();
    for (const d of this.disposables) d.dispose();
    this.changed.dispose();
  }

  // ---- definitions -------------------------------------------------------------------------

  /** The syncs of both settings scopes; an untrusted folder's are left out until it is trusted. */
  private settings(): SyncSetting[] {
    const inspect = vscode.workspace.getConfiguration(SECTION).inspect<unknown[]>(KEY);
    const { syncs, notes } = syncsFromSettings(inspect?.globalValue, vscode.workspace.isTrusted ? inspect?.workspaceValue : undefined);
    // Said once per change, not at every poll.
    const text = notes.join('\n');
    if (text !== this.lastNotes) {
      this.lastNotes = text;
      for (const n of notes) this.log.warn(n);
    }
    return syncs;
  }

  definitions(): SyncDefinition[] {
    return this.settings().map((s) => s.def);
  }

  definition(name: string): SyncDefinition | undefined {
    return this.definitions().find((d) => d.name === name);
  }

  /** What is wrong with a sync's settings entry (each line names the fix); empty when nothing. */
  problems(name: string): string[] {
    return this.settings().find((s) => s.def.name === name)?.problems ?? [];
  }

  /** The approval a sync still needs before anything connects for it (see syncApprovalKey), or null. */
  private pendingApproval(name: string): string | null {
    const s = this.settings().find((x) => x.def.name === name);
    const key = s ? this.approvalKey(s) : null;
    return key === null || this.context.workspaceState.get<string[]>(APPROVED, []).includes(key) ? null : key;
  }

  private approvalKey(s: Pick<SyncSetting, 'def' | 'scope'>): string | null {
    const conn = (n: string): SyncConnection | undefined => {
      const c = n ? this.connections.get(n) : undefined;
      return c && { scope: c.scope, identity: connectionIdentity(c) };
    };
    return syncApprovalKey(s, conn(s.def.source), conn(s.def.target));
  }

  /** Whether this window may connect to a sync's servers without asking (polling, List Sync Slots). */
  isApproved(name: string): boolean {
    return this.pendingApproval(name) === null;
  }

  /** Starting or attaching here is the user's word that these servers are the ones meant. */
  private async approve(s: Pick<SyncSetting, 'def' | 'scope'>): Promise<void> {
    const key = this.approvalKey(s);
    const approved = this.context.workspaceState.get<string[]>(APPROVED, []);
    if (key !== null && !approved.includes(key)) await this.context.workspaceState.update(APPROVED, [...approved, key]);
  }

  /**
   * A folder's sync (or one using a folder's connection) never used from this window: asks, naming
   * the servers, before `doing` connects to them. False when the user declines.
   */
  private async confirmServers(def: SyncDefinition, doing: string): Promise<boolean> {
    if (this.isApproved(def.name)) return true;
    const describe = (role: string, n: string) => {
      const c = n ? this.connections.get(n) : undefined;
      return c ? `${role} ${n}: ${connectionUser(c)}@${this.connections.describe(c)} (${c.scope === 'workspace' ? "this folder's" : 'your user'} settings)` : null;
    };
    const servers = [describe('source', def.source), describe('target', def.target)].filter((x) => x !== null);
    const answer = await vscode.window.showWarningMessage(
      `Sync ${def.name} comes from this folder's settings, or uses a connection from them, and has not connected from this window yet. ${doing} connects to its servers: are they yours?`,
      { modal: true, detail: `${servers.join('\n')}\n\nYour stored password for each connection (or PGPASSWORD, or a matching ~/.pgpass line) is sent to these servers.` },
      'Connect',
    );
    if (answer !== 'Connect') return false;
    const setting = this.settings().find((x) => x.def.name === def.name);
    if (setting) await this.approve(setting);
    return true;
  }

  /** A sync's settings entry must be valid before it runs or is watched. */
  private checkProblems(name: string): void {
    const problems = this.problems(name);
    if (problems.length > 0) throw new Error(problems.join('; '));
  }

  /** Saves a sync the user set up in this window's prompts, and with it the approval of its servers. */
  private async saveDefinition(def: SyncDefinition): Promise<void> {
    const config = vscode.workspace.getConfiguration(SECTION);
    const inWorkspace = (vscode.workspace.workspaceFolders?.length ?? 0) > 0;
    const inspect = config.inspect<unknown[]>(KEY);
    const current = ((inWorkspace ? inspect?.workspaceValue : inspect?.globalValue) ?? []).filter((raw) => sanitizeSyncDefinition(raw)?.name !== def.name);
    await config.update(KEY, [...current, def], inWorkspace ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global);
    await this.approve({ def, scope: inWorkspace ? 'workspace' : 'user' });
  }

  private async removeDefinition(name: string): Promise<void> {
    const config = vscode.workspace.getConfiguration(SECTION);
    const inspect = config.inspect<unknown[]>(KEY);
    for (const [values, target] of [[inspect?.workspaceValue, vscode.ConfigurationTarget.Workspace], [inspect?.globalValue, vscode.ConfigurationTarget.Global]] as const) {
      if (values?.some((raw) => sanitizeSyncDefinition(raw)?.name === name)) {
        await config.update(KEY, values.filter((raw) => sanitizeSyncDefinition(raw)?.name !== name), target);
      }
    }
    this.trackers.delete(name);
    this.changed.fire(name);
  }

  // ---- PanelSource --------------------------------------------------------------------------

  names(): string[] {
    return this.definitions().map((d) => d.name);
  }

  snapshot(name: string): PanelSnapshot | null {
    return this.trackers.get(name)?.snapshot() ?? null;
  }

  isRunning(name: string): boolean {
    return this.runs.has(name);
  }

  isPaused(name: string): boolean {
    return this.context.workspaceState.get<string[]>(PAUSED, []).includes(name);
  }

  async act(name: string, action: PanelAction): Promise<void> {
    switch (action) {
      case 'pause':
        return this.pause(name);
      case 'resume':
        return this.resume(name);
      case 'stop':
        return this.stop(name);
      case 'drop':
        return this.drop(name);
      case 'openLogs':
        this.log.show(true);
        return;
      case 'verify':
        await this.verify(name);
        return;
      case 'copyStatus':
        await vscode.env.clipboard.writeText(JSON.stringify(this.snapshot(name), null, 2));
        void vscode.window.showInformationMessage(`Copied the status of sync ${name} as JSON.`);
        return;
    }
  }

  /** Stops the run, sends the table back to init on the target, and runs again: the table recopies alone. */
  async resyncTable(name: string, key: string): Promise<void> {
    const def = this.definition(name);
    if (!def || def.attach) throw new Error(`sync ${name} is not run by this window; resync it where it runs`);
    const table = this.snapshot(name)?.tables.find((t) => t.key === key);
    if (!table) throw new Error(`sync ${name} has no table ${key}`);
    this.checkProblems(name);
    if (!(await this.confirmServers(def, 'Resyncing a table'))) return;
    const wasRunning = this.runs.has(name);
    if (wasRunning) await this.stopRun(name, false);
    const target = await connect(await this.connections.endpoint(def.target));
    try {
      if (!(await resetTableForResync(target, name, { schema: table.schema, table: table.table }))) throw new Error(`sync ${name} has no state for ${key} on the target`);
    } finally {
      await target.end();
    }
    this.log.info(`sync ${name}: ${key} sent back to init; it is copied afresh through its own slot`);
    await this.setPaused(name, false);
    await this.startRun(def);
  }

  // ---- commands -------------------------------------------------------------------------------

  /** A new named sync (from Start Sync's prompts): saved, then run. */
  async create(def: SyncDefinition): Promise<void> {
    // Its connections were picked in Start Sync's prompts: saving approves them.
    await this.saveDefinition(def);
    await this.startRun(def);
  }

  /** A sync run elsewhere (from Attach's prompts): saved, then watched from the target. */
  async attach(def: SyncDefinition): Promise<void> {
    await this.saveDefinition(def);
    this.log.info(`attached read-only to sync ${def.name} on ${def.target}`);
    void this.poll();
  }

  async pickSync(title: string, filter: (d: SyncDefinition) => boolean): Promise<string | undefined> {
    const defs = this.definitions().filter(filter);
    if (defs.length === 0) {
      void vscode.window.showInformationMessage('No sync fits; start one with Postgres Live Sync: Start Sync.');
      return undefined;
    }
    if (defs.length === 1) return defs[0].name;
    const p = await vscode.window.showQuickPick(defs.map((d) => ({ label: d.name, description: `${d.source} > ${d.target}${d.attach ? ' (attached)' : ''}` })), { title, ignoreFocusOut: true });
    return p?.label;
  }

  async stop(name: string): Promise<void> {
    await this.setPaused(name, false);
    await this.stopRun(name, false);
  }

  async pause(name: string): Promise<void> {
    await this.setPaused(name, true);
    await this.stopRun(name, true);
  }

  async resume(name: string): Promise<void> {
    const def = this.definition(name);
    if (!def) return;
    this.checkProblems(name);
    if (def.attach && !this.isApproved(name)) {
      // An attached sync from a folder's settings: resuming it here means watching it.
      if (await this.confirmServers(def, 'Watching it')) void this.poll();
      return;
    }
    if (def.attach) throw new Error(`sync ${name} is attached read-only; resume it where it runs`);
    if (!(await this.confirmServers(def, 'Starting it'))) return;
    await this.setPaused(name, false);
    await this.startRun(def);
  }

  async drop(name: string): Promise<void> {
    const def = this.definition(name);
    if (!def) return;
    if (def.attach && !def.source) {
      throw new Error(`sync ${name} was attached without a source connection; dropping needs the source to remove its slot`);
    }
    const answer = await vscode.window.showWarningMessage(
      `Drop sync ${name}?`,
      { modal: true, detail: `This removes replication slot ${slotNameFor(name)} on ${def.source} and the sync's state on ${def.target}. The target tables keep their data. A sync started again copies everything afresh.` },
      'Drop',
    );
    if (answer !== 'Drop') return;
    if (!(await this.confirmServers(def, 'Dropping it'))) return;
    await this.stopRun(name, false);
    const { notOwned } = await dropSync(await this.connections.endpoint(def.source), await this.connections.endpoint(def.target), name, (level, message) => this.log[level](`sync ${name}: ${message}`), { spoolDir: def.spoolDir });
    await this.setPaused(name, false);
    await this.removeDefinition(name);
    if (notOwned.length > 0) void vscode.window.showWarningMessage(`Dropped sync ${name}, but its target has no state for it: slot ${notOwned.join(', ')} belongs to a sync of the same name into another target and stays. See the log.`);
    else void vscode.window.showInformationMessage(`Dropped sync ${name}: slot and state removed; the target's data stays.`);
  }

  /**
   * Cutover: sets the target's sequences past the source's (see engine/sequences), after a modal
   * listing every change a dry run found; running it again changes nothing.
   */
  async syncSequences(name: string): Promise<'set' | 'unchanged' | 'declined'> {
    const def = await this.withConfirmedSource(name, 'syncing sequences');
    const planned = await this.withBoth(def, (source, target) => syncSequencesOfSync(source, target, name, true));
    const changes = planned.filter((r) => r.skipped === null);
    if (changes.length === 0) {
      void vscode.window.showInformationMessage(`Sync ${name}: ${planned.length === 1 ? 'the sequence' : `all ${counted(planned.length, 'sequence')}`} on ${def.target} ${planned.length === 1 ? 'is' : 'are'} already past the source's; nothing to change.`);
      return 'unchanged';
    }
    const answer = await vscode.window.showWarningMessage(
      `Set ${counted(changes.length, 'sequence')} on ${def.target}?`,
      { modal: true, detail: `${changes.map((r) => describeSequence(r, true)).join('\n')}\n\nDo this once writes to the source have stopped: sequences only move forward.` },
      'Set Sequences',
    );
    if (answer !== 'Set Sequences') return 'declined';
    const done = await this.withBoth(def, (source, target) => syncSequencesOfSync(source, target, name, false));
    for (const r of done) this.log.info(`sync ${name}: ${describeSequence(r, false)}`);
    void vscode.window.showInformationMessage(`Sync ${name}: ${counted(done.filter((r) => r.skipped === null).length, 'sequence')} set on ${def.target}.`);
    return 'set';
  }

  /**
   * Compares every ready table, source against target, in key ranges (engine/verify), while the
   * sync streams or not; the report opens in an editor. True when everything matches.
   */
  async verify(name: string): Promise<boolean> {
    const def = await this.withConfirmedSource(name, 'verifying');
    const [source, target] = [await this.connections.endpoint(def.source!), await this.connections.endpoint(def.target)];
    const report = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `Verifying sync ${name}: comparing source and target in key ranges…` },
      () => verifySync({
        source, target, subscription: name, tables: [], chunkRows: DEFAULT_CHUNK_ROWS, fix: false,
        catchUpTimeoutMs: VERIFY_CATCH_UP_SECONDS * 1000, log: (level, message) => this.log[level](`sync ${name}: verify: ${message}`),
      }),
    );
    const { lines, ok } = verifyLines(report, false);
    const doc = await vscode.workspace.openTextDocument({ language: 'log', content: `${lines.map(oneLine).join('\n')}\n` });
    await vscode.window.showTextDocument(doc, { preview: false });
    const summary = lines[lines.length - 1];
    if (ok) void vscode.window.showInformationMessage(`Sync ${name}: ${summary}`);
    else void vscode.window.showWarningMessage(`Sync ${name}: ${summary}. pg-live-sync verify --fix re-copies differing ranges with the sync stopped.`);
    return ok;
  }

  /**
   * Every slot of ours on a source connection, with the sync (of this window's syncs' targets)
   * that owns it; the drop statements for the others open as SQL to review and run.
   */
  async listSlots(connection: string): Promise<void> {
    // A folder's syncs name targets only once the user has used them here.
    const targets = [...new Set(this.definitions().filter((d) => this.isApproved(d.name)).map((d) => d.target))];
    const source = await connect(await this.connections.endpoint(connection));
    const opened: { client: pg.Client; where: string }[] = [];
    try {
      for (const t of targets) {
        const ep = await this.connections.endpoint(t);
        opened.push({ client: await connect(ep), where: `${t} (${describeEndpoint(ep.url)})` });
      }
      const found = await listSyncSlots(source, opened);
      const content = slotsDocument(connection, found, targets.length === 0 ? 'any target (this window has no syncs)' : `the targets of this window's syncs (${targets.join(', ')})`);
      const doc = await vscode.workspace.openTextDocument({ language: 'sql', content });
      await vscode.window.showTextDocument(doc, { preview: false });
    } finally {
      await Promise.all(opened.map((t) => t.client.end()));
      await source.end();
    }
  }

  /** The source's WAL position now, and whether the slot confirms (the target applied) up to a position. */
  async slotProgress(name: string): Promise<{ caughtUp: (lsn: Lsn) => Promise<boolean>; sourceLsn: () => Promise<Lsn> }> {
    const def = await this.withConfirmedSource(name, 'a cutover');
    const source = await this.connections.endpoint(def.source!);
    return {
      sourceLsn: () => this.monitor.use(source, async (c) => parseLsn((await c.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l)),
      caughtUp: (lsn) => this.monitor.use(source, async (c) => ((await slotInfo(c, slotNameFor(name)))?.confirmedFlush ?? 0n) >= lsn),
    };
  }

  private withSource(name: string, doing: string): SyncDefinition & { source: string } {
    const def = this.definition(name);
    if (!def) throw new Error(`there is no sync ${name}`);
    if (!def.source) throw new Error(`sync ${name} was attached without a source connection; ${doing} needs the source`);
    return def as SyncDefinition & { source: string };
  }

  /** withSource, once the user has confirmed the servers of a folder's sync. */
  private async withConfirmedSource(name: string, doing: string): Promise<SyncDefinition & { source: string }> {
    const def = this.withSource(name, doing);
    if (!(await this.confirmServers(def, doing[0].toUpperCase() + doing.slice(1)))) throw new Error(`sync ${name}: ${doing} cancelled; nothing connected to its servers`);
    return def;
  }

  private async withBoth<T>(def: SyncDefinition & { source: string }, work: (source: pg.Client, target: pg.Client) => Promise<T>): Promise<T> {
    const source = await connect(await this.connections.endpoint(def.source));
    try {
      const target = await connect(await this.connections.endpoint(def.target));
      try {
        return await work(source, target);
      } finally {
        await target.end();
      }
    } finally {
      await source.end();
    }
  }

  // ---- runs ----------------------------------------------------------------------------------

  async startRun(def: SyncDefinition): Promise<void> {
    if (this.runs.has(def.name)) return;
    this.checkProblems(def.name);
    // Every way here asks first (confirmServers) or is the user's own new sync.
    if (!this.isApproved(def.name)) throw new Error(`sync ${def.name} comes from this folder's settings (or uses a connection from them) and its servers were not confirmed; start it with Postgres Live Sync: Resume Sync`);
    const source = await this.connections.endpoint(def.source, 'source');
    const target = await this.connections.endpoint(def.target, 'target');
    const tracker = this.tracker(def);
    tracker.setMode('local');
    const cli = this.context.asAbsolutePath('dist/cli.js');
    const run: LocalRun = {
      source,
      pausing: false,
      process: new EngineProcess(
        cli,
        syncEngineOptions(def, source, target),
        {
          log: (level, message) => this.log[level](`sync ${def.name}: ${message}`),
          status: (status) => {
            const slot = this.retained.get(def.name);
            tracker.add(readingFromStatus(status, Date.now(), slot?.info ? slot as SlotReading : null));
            this.changed.fire(def.name);
          },
          exit: (error) => {
            this.runs.delete(def.name);
            if (error) {
              this.log.error(`sync ${def.name}: ${error}`);
              void vscode.window.showErrorMessage(`Sync ${def.name} stopped: ${error}`, 'Show Logs').then((a) => a && this.log.show(true));
            } else {
              this.log.info(`sync ${def.name}: stopped; everything applied is kept on the target`);
            }
            tracker.setActivity(error ? 'error' : run.pausing ? 'paused' : 'stopped', error);
            if (this.runs.size === 0) this.loopDelay.stop();
            // A run that ended on its own is not one to offer again; one stopped by closing VS Code is.
            if (!this.shuttingDown) void this.rememberRunning();
            this.changed.fire(def.name);
            void this.poll();
          },
        },
      ),
    };
    this.runs.set(def.name, run);
    this.log.info(`sync ${def.name}: started (engine process ${run.process.pid}) from ${def.source} to ${def.target}, publications ${def.publications.join(', ')}`);
    this.loopDelay.start();
    await this.rememberRunning();
    this.changed.fire(def.name);
  }

  private async stopRun(name: string, pausing: boolean): Promise<void> {
    const run = this.runs.get(name);
    if (!run) return;
    run.pausing = pausing;
    await run.process.stop();
    await this.rememberRunning();
  }

  private async setPaused(name: string, paused: boolean): Promise<void> {
    const list = this.context.workspaceState.get<string[]>(PAUSED, []).filter((n) => n !== name);
    await this.context.workspaceState.update(PAUSED, paused ? [...list, name] : list);
  }

  private async rememberRunning(): Promise<void> {
    await this.context.workspaceState.update(RUNNING_AT_CLOSE, [...this.runs.keys()]);
  }

  /** Closing VS Code: every local run commits and ends; the next window offers to resume them. */
  async shutdown(): Promise<void> {
    this.shuttingDown = true;
    const names = [...this.runs.keys()];
    await this.context.workspaceState.update(RUNNING_AT_CLOSE, names);
    // VS Code gives deactivate a few seconds; the engine's stop is a commit and a disconnect.
    await Promise.all(names.map((n) => this.runs.get(n)?.process.stop(4_000)));
  }

  /** A window reopened after syncs ran in it: offer to resume them (once the folder is trusted). */
  async offerResume(): Promise<void> {
    if (!vscode.workspace.isTrusted) {
      const once = vscode.workspace.onDidGrantWorkspaceTrust(() => {
        once.dispose();
        void this.offerResume();
      });
      this.disposables.push(once);
      return;
    }
    const names = this.context.workspaceState.get<string[]>(RUNNING_AT_CLOSE, []).filter((n) => this.definition(n) && !this.runs.has(n));
    if (names.length === 0) return;
    const label = names.length === 1 ? `Sync ${names[0]} was running when this window closed; its progress is saved on the target.` : `${names.length} syncs were running when this window closed (${names.join(', ')}); their progress is saved on the target.`;
    const answer = await vscode.window.showInformationMessage(label, 'Resume', 'Not Now');
    if (answer === 'Resume') {
      for (const n of names) await this.resume(n).catch((err) => void vscode.window.showErrorMessage(`Sync ${n}: ${errorMessage(err)}`));
    } else {
      await this.context.workspaceState.update(RUNNING_AT_CLOSE, []);
    }
  }

  // ---- monitoring --------------------------------------------------------------------------

  private tracker(def: SyncDefinition): SyncTracker {
    let t = this.trackers.get(def.name);
    if (!t) {
      const describe = (conn: string) => {
        const c = this.connections.get(conn);
        return c ? this.connections.describe(c) : conn || '(no source connection)';
      };
      t = new SyncTracker({ name: def.name, mode: def.attach ? 'attached' : 'local', source: describe(def.source), target: describe(def.target), publications: def.publications });
      this.trackers.set(def.name, t);
    }
    return t;
  }

  /**
   * Reads what no live run reports: the target's state for syncs not running here, and the
   * source slot's retained WAL for all. Errors are logged once per change, not every poll.
   */
  private async poll(): Promise<void> {
    if (this.polling || !vscode.workspace.isTrusted) return;
    this.polling = true;
    try {
      const defs = this.definitions();
      for (const name of [...this.trackers.keys()]) if (!defs.some((d) => d.name === name)) this.trackers.delete(name);
      await Promise.all(defs.map((def) => this.pollOne(def)));
    } finally {
      this.polling = false;
    }
  }

  private async pollOne(def: SyncDefinition): Promise<void> {
    const tracker = this.tracker(def);
    const run = this.runs.get(def.name);
    // Not a connection before the user has used a folder's sync here, nor for a broken entry.
    if (!run && (!this.isApproved(def.name) || this.problems(def.name).length > 0)) return;
    try {
      if (run) {
        const last = this.retained.get(def.name);
        if (last && Date.now() - last.at < SLOT_POLL_MS) return;
        const info = await this.monitor.use(run.source, async (c) => slotInfo(c, slotNameFor(def.name)));
        this.retained.set(def.name, { at: Date.now(), info });
        return;
      }
      const targetEp = await this.connections.endpoint(def.target);
      const sourceEp = def.source && this.connections.get(def.source) ? await this.connections.endpoint(def.source) : null;
      const report = await this.monitor.use(targetEp, async (target) => {
        // Without the source the report still has the target's side: states, positions, errors.
        if (!sourceEp) return readSyncReport(target, def.name, null);
        return this.monitor.use(sourceEp, (source) => readSyncReport(target, def.name, source)).catch(() => readSyncReport(target, def.name, null));
      });
      if (report) {
        tracker.add(readingFromReport(report, Date.now(), this.isPaused(def.name) ? 'paused' : 'stopped'));
        this.changed.fire(def.name);
      }
      this.pollErrors.delete(def.name);
    } catch (err) {
      const text = errorMessage(err);
      if (this.pollErrors.get(def.name) !== text) {
        this.pollErrors.set(def.name, text);
        this.log.warn(`sync ${def.name}: cannot read its state: ${text}`);
      }
    }
  }
}
