import * as vscode from 'vscode';

/**
 * The extension host side. The engine (src/engine) is shared with the CLI; the views, commands
 * and the progress panel arrive with the extension and panel issues.
 */
export function activate(context: vscode.ExtensionContext): void {
  const log = vscode.window.createOutputChannel('Postgres Live Sync', { log: true });
  context.subscriptions.push(log);
}

export function deactivate(): void {}
