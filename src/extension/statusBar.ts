import * as vscode from 'vscode';
import type { SyncManager } from './syncManager';
import { describeActivity, lagAlert, severity } from './syncModel';

/** The running and attached syncs' worst state and lag; a click opens the progress panel. */
export class SyncStatusBar implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem('pgLiveSync.status', vscode.StatusBarAlignment.Left, 50);
  private pending: NodeJS.Timeout | null = null;
  private readonly subscription: vscode.Disposable;
  /** Syncs whose lag is past the user's line (pgLiveSync.lagWarningSeconds), each alerted once. */
  private readonly lagging = new Set<string>();

  constructor(private readonly syncs: SyncManager) {
    this.item.name = 'Postgres Live Sync';
    this.item.command = 'pgLiveSync.showProgress';
    this.subscription = syncs.onDidChange(() => {
      this.pending ??= setTimeout(() => {
        this.pending = null;
        this.update();
      }, 500);
    });
    this.update();
  }

  dispose(): void {
    this.subscription.dispose();
    this.item.dispose();
  }

  update(): void {
    const shown = this.syncs.definitions()
      .map((d) => ({ d, snap: this.syncs.snapshot(d.name) }))
      .filter((x) => x.snap && (this.syncs.isRunning(x.d.name) || x.d.attach || x.snap.header.activity === 'paused' || x.snap.header.activity === 'error'));
    if (shown.length === 0) {
      this.item.hide();
      return;
    }
    shown.sort((a, b) => severity(b.snap!) - severity(a.snap!));
    const worst = shown[0];
    const h = worst.snap!.header;
    const icon = h.activity === 'error' || severity(worst.snap!) === 5 ? '$(error)' : h.activity === 'paused' ? '$(debug-pause)' : '$(sync)';
    this.item.text = `${icon} ${shown.length > 1 ? `${shown.length} syncs, worst ` : ''}${worst.d.name}: ${describeActivity(worst.snap!)}`;
    const md = new vscode.MarkdownString(shown.map((x) => `**${x.d.name}**: ${describeActivity(x.snap!)}${x.snap!.header.lagSeconds !== null ? `, ${x.snap!.header.lagSeconds.toFixed(1)} s behind` : ''}`).join('\n\n'));
    md.appendMarkdown('\n\nClick to show the sync progress.');
    this.item.tooltip = md;
    const threshold = vscode.workspace.getConfiguration('pgLiveSync').get<number>('lagWarningSeconds', 60);
    for (const x of shown) {
      const alert = lagAlert(x.d.name, x.snap!.header.lagSeconds, threshold, this.lagging.has(x.d.name));
      if (alert.alerting) this.lagging.add(x.d.name);
      else this.lagging.delete(x.d.name);
      if (alert.notify) {
        void vscode.window.showWarningMessage(alert.notify, 'Show Sync Progress').then((a) => {
          if (a) void vscode.commands.executeCommand('pgLiveSync.showProgress', { kind: 'sync', name: x.d.name });
        });
      }
    }
    this.item.backgroundColor = severity(worst.snap!) === 5 ? new vscode.ThemeColor('statusBarItem.errorBackground')
      : shown.some((x) => this.lagging.has(x.d.name)) ? new vscode.ThemeColor('statusBarItem.warningBackground') : undefined;
    this.item.show();
  }
}
