// The progress panel, host side: one webview panel per sync, fed from a PanelSource. The webview
// (webview/main.ts, bundled to dist/webview.js) asks for everything with `ready`; the diff and
// throttling live in panelUpdates.ts (no vscode there, so they are unit-tested).
import { randomBytes } from 'node:crypto';
import * as vscode from 'vscode';
import { errorMessage } from '../engine/errors';
import { parsePanelMessage, type HostToPanel, type PanelAction, type PanelToHost } from '../../webview/protocol';
import type { PanelSource } from './panelSource';
import { PanelUpdater, panelHtml, savedSyncName } from './panelUpdates';

const VIEW_TYPE = 'pgLiveSync.progress';
/** Actions that change a sync; an attached (read-only) sync refuses them. */
const CONTROL_ACTIONS: readonly PanelAction[] = ['pause', 'resume', 'stop', 'drop'];

function webviewOptions(extensionUri: vscode.Uri): vscode.WebviewOptions {
  return {
    enableScripts: true,
    localResourceRoots: [vscode.Uri.joinPath(extensionUri, 'dist'), vscode.Uri.joinPath(extensionUri, 'media')],
  };
}

/**
 * All progress panels of this window. Get it from `ProgressPanel.register`; `show(name)` opens or
 * reveals the panel of one sync.
 */
export class ProgressPanelRegistry implements vscode.Disposable {
  private readonly panels = new Map<string, ProgressPanel>();

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly source: PanelSource,
    private readonly log: vscode.LogOutputChannel,
  ) {}

  /** Opens the panel of sync `name`, or reveals it if it is open. */
  show(name: string): void {
    const open = this.panels.get(name);
    if (open !== undefined) {
      open.panel.reveal();
      return;
    }
    const panel = vscode.window.createWebviewPanel(VIEW_TYPE, `Sync: ${name}`, vscode.ViewColumn.Active, {
      ...webviewOptions(this.extensionUri),
      retainContextWhenHidden: false,
    });
    this.attach(name, panel);
  }

  /** A panel VS Code restored after a reload: re-attach it to its sync, or close it. */
  restore(panel: vscode.WebviewPanel, state: unknown): void {
    const name = savedSyncName(state);
    if (name === null || this.panels.has(name) || !this.source.names().includes(name)) {
      this.log.info(`progress panel: not restoring a panel for ${name === null ? 'an unknown sync' : `sync ${name}`}`);
      panel.dispose();
      return;
    }
    this.attach(name, panel);
  }

  /** Names of the syncs with an open panel. */
  openNames(): string[] {
    return [...this.panels.keys()];
  }

  dispose(): void {
    for (const p of [...this.panels.values()]) p.dispose();
    this.panels.clear();
  }

  private attach(name: string, panel: vscode.WebviewPanel): void {
    const p = new ProgressPanel(name, panel, this.extensionUri, this.source, this.log, () => {
      if (this.panels.get(name) === p) this.panels.delete(name);
    });
    this.panels.set(name, p);
  }
}

/** One sync's panel. Create them through `ProgressPanel.register(...).show(name)`. */
export class ProgressPanel implements vscode.Disposable {
  static readonly viewType = VIEW_TYPE;

  /**
   * Registers the panel serializer (a window reload restores open panels) and returns the
   * registry whose `show(name)` the Show Sync Progress command calls. Disposal is registered on
   * `context.subscriptions`. The manifest needs `onWebviewPanel:pgLiveSync.progress` among its
   * activationEvents for the restore to activate the extension.
   */
  static register(context: vscode.ExtensionContext, source: PanelSource, log: vscode.LogOutputChannel): ProgressPanelRegistry {
    const registry = new ProgressPanelRegistry(context.extensionUri, source, log);
    context.subscriptions.push(
      registry,
      vscode.window.registerWebviewPanelSerializer(VIEW_TYPE, {
        deserializeWebviewPanel: async (panel: vscode.WebviewPanel, state: unknown) => registry.restore(panel, state),
      }),
    );
    return registry;
  }

  private readonly updater: PanelUpdater;
  private readonly disposables: vscode.Disposable[] = [];
  private disposed = false;
  private goneNoticed = false;

  constructor(
    readonly name: string,
    readonly panel: vscode.WebviewPanel,
    private readonly extensionUri: vscode.Uri,
    private readonly source: PanelSource,
    private readonly log: vscode.LogOutputChannel,
    private readonly onDispose: () => void,
  ) {
    panel.title = `Sync: ${name}`;
    panel.iconPath = vscode.Uri.joinPath(extensionUri, 'media', 'icon.svg');
    panel.webview.options = webviewOptions(extensionUri);
    this.updater = new PanelUpdater(() => source.snapshot(name), (m) => this.post(m));
    // Listen before the HTML loads, so the webview's `ready` is never missed.
    this.disposables.push(
      panel.webview.onDidReceiveMessage((raw: unknown) => this.receive(raw)),
      // A hidden webview is destroyed (retainContextWhenHidden is off) and says `ready` again
      // when shown; nothing is sent meanwhile.
      panel.onDidChangeViewState(() => {
        if (!panel.visible) this.updater.hidden();
      }),
      panel.onDidDispose(() => this.dispose()),
      source.onDidChange((changed) => {
        if (changed !== name) return;
        if (this.source.snapshot(name) === null && !this.source.names().includes(name)) {
          // Dropped or removed from the settings: say so once; the last picture stays.
          if (!this.goneNoticed) this.notice('info', `Sync ${name} no longer exists (dropped, or removed from the settings).`);
          this.goneNoticed = true;
          return;
        }
        this.goneNoticed = false;
        this.updater.changed();
      }),
    );
    panel.webview.html = this.html();
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.updater.dispose();
    for (const d of this.disposables) d.dispose();
    this.disposables.length = 0;
    this.onDispose();
    this.panel.dispose();
  }

  private html(): string {
    const webview = this.panel.webview;
    return panelHtml({
      cspSource: webview.cspSource,
      nonce: randomBytes(18).toString('base64'),
      scriptUri: webview.asWebviewUri(vscode.Uri.joinPath(this.extensionUri, 'dist', 'webview.js')).toString(),
      styleUri: webview.asWebviewUri(vscode.Uri.joinPath(this.extensionUri, 'media', 'panel.css')).toString(),
      syncName: this.name,
    });
  }

  private post(message: HostToPanel): void {
    if (this.disposed) return;
    this.panel.webview.postMessage(message).then(
      (delivered) => {
        if (!delivered) this.log.debug(`progress panel ${this.name}: a ${message.type} message was not delivered (webview gone)`);
      },
      (err: unknown) => this.log.debug(`progress panel ${this.name}: postMessage failed: ${errorMessage(err)}`),
    );
  }

  private notice(level: 'info' | 'error', text: string): void {
    this.post({ type: 'notice', level, text });
  }

  private receive(raw: unknown): void {
    const message = parsePanelMessage(raw);
    if (message === null) {
      // Never the content: it is untrusted and could be anything.
      this.log.warn(`progress panel ${this.name}: dropped an invalid message from the webview`);
      return;
    }
    void this.handle(message);
  }

  private async handle(message: PanelToHost): Promise<void> {
    switch (message.type) {
      case 'ready':
        this.updater.ready();
        if (this.source.snapshot(this.name) === null && !this.source.names().includes(this.name)) {
          this.notice('error', `There is no sync named ${this.name} in this window's settings (pgLiveSync.syncs).`);
        }
        return;
      case 'action':
        if (CONTROL_ACTIONS.includes(message.action) && this.readOnly()) {
          this.notice('error', `Sync ${this.name} is attached read-only: ${message.action} it where it runs.`);
          return;
        }
        try {
          await this.source.act(this.name, message.action);
        } catch (err) {
          this.fail(message.action, err);
        }
        return;
      case 'resyncTable': {
        if (this.readOnly()) {
          this.notice('error', `Sync ${this.name} is attached read-only: resync ${message.key} where it runs.`);
          return;
        }
        const answer = await vscode.window.showWarningMessage(
          `Resync ${message.key} in sync ${this.name}?`,
          { modal: true, detail: 'The table is emptied on the target and copied afresh; the other tables go on.' },
          'Resync',
        );
        if (answer !== 'Resync') return;
        try {
          await this.source.resyncTable(this.name, message.key);
          this.notice('info', `${message.key} is being copied afresh.`);
        } catch (err) {
          this.fail(`resync ${message.key}`, err);
        }
        return;
      }
    }
  }

  private readOnly(): boolean {
    return this.source.snapshot(this.name)?.header.mode === 'attached';
  }

  private fail(what: string, err: unknown): void {
    const text = errorMessage(err);
    this.log.error(`progress panel ${this.name}: ${what}: ${text}`);
    this.notice('error', text);
  }
}
