import * as vscode from 'vscode';
import { errorMessage } from '../engine/errors';
import { oneLine } from '../engine/oneLine';
import { ConnectionStore } from './connections';
import { guidedCutover } from './cutover';
import { ProgressPanel } from './panel';
import { SqlCommands } from './sqlCommands';
import { SyncStatusBar } from './statusBar';
import { SyncManager } from './syncManager';
import { askAttach, askNewSync } from './syncPrompts';
import { ConnectionsTree, SyncsTree, type ConnectionsNode, type SyncsNode } from './tree';

let manager: SyncManager | null = null;

/**
 * Activated lazily by its views and commands (VS Code derives those events from the manifest).
 * The engine never runs in this process: each sync is a child process (see engineProcess.ts).
 */
export function activate(context: vscode.ExtensionContext): void {
  const log = oneLineLog(vscode.window.createOutputChannel('Postgres Live Sync', { log: true }));
  const connections = new ConnectionStore(context.secrets, log);
  const syncs = new SyncManager(context, connections, log);
  manager = syncs;
  const connectionsTree = new ConnectionsTree(connections, syncs);
  const sql = new SqlCommands(connections, log, () => connectionsTree.refresh());
  const panel = ProgressPanel.register(context, syncs, log);
  const statusBar = new SyncStatusBar(syncs);
  context.subscriptions.push(
    log, connections, syncs, statusBar,
    vscode.window.createTreeView('pgLiveSync.connections', { treeDataProvider: connectionsTree, showCollapseAll: true }),
    vscode.window.createTreeView('pgLiveSync.syncs', { treeDataProvider: new SyncsTree(syncs) }),
  );

  const conn = (n?: ConnectionsNode) => (n?.kind === 'connection' ? n.name : n && 'connection' in n ? n.connection : undefined);
  const syncName = async (n: SyncsNode | undefined, title: string, filter: Parameters<SyncManager['pickSync']>[1] = () => true) =>
    n?.kind === 'sync' ? n.name : await syncs.pickSync(title, filter);

  const commands: Record<string, (...args: never[]) => unknown> = {
    addConnection: () => connections.edit(),
    editConnection: async (n?: ConnectionsNode) => {
      const name = conn(n) ?? (await connections.pick('Edit Connection'));
      const c = name ? connections.get(name) : undefined;
      if (c) await connections.edit(c);
    },
    testConnection: async (n?: ConnectionsNode) => {
      const name = conn(n) ?? (await connections.pick('Test Connection'));
      if (name) await connections.test(name);
    },
    removeConnection: async (n?: ConnectionsNode) => {
      const name = conn(n) ?? (await connections.pick('Remove Connection', [], true));
      if (!name) return;
      const used = syncs.definitions().filter((d) => d.source === name || d.target === name).map((d) => d.name);
      const answer = await vscode.window.showWarningMessage(`Remove connection ${name}?`, {
        modal: true,
        detail: `Its settings entry and its stored password are deleted; the server is not touched.${used.length ? ` Syncs using it (${used.join(', ')}) cannot run until it is added again.` : ''}`,
      }, 'Remove');
      if (answer === 'Remove') await connections.remove(name);
    },
    refresh: (n?: ConnectionsNode) => connectionsTree.refresh(n),
    generateTuningSql: (n?: ConnectionsNode) => sql.generateTuning(conn(n)),
    generateReplicaIdentitySql: (n?: ConnectionsNode) => sql.generateReplicaIdentity(conn(n), n?.kind === 'publication' ? n.name : n?.kind === 'table' ? n.publication : undefined),
    generateConnectorRoleSql: (n?: ConnectionsNode) => sql.generateConnectorRole(conn(n)),
    createPublication: (n?: ConnectionsNode) => sql.createPublication(conn(n)),
    addTableToPublication: (n?: ConnectionsNode) => sql.addTable(conn(n), n?.kind === 'publication' ? n.name : n?.kind === 'table' ? n.publication : undefined),
    removeTableFromPublication: (n?: ConnectionsNode) =>
      sql.removeTable(conn(n), n?.kind === 'publication' ? n.name : n?.kind === 'table' ? n.publication : undefined, n?.kind === 'table' ? n.info : undefined),
    runSql: (n?: ConnectionsNode) => sql.runEditorSql(n?.kind === 'connection' ? n.name : undefined),
    startSync: async (n?: ConnectionsNode) => {
      const def = await askNewSync(connections, syncs.names(), n?.kind === 'publication' ? { source: n.connection, publication: n.name } : undefined);
      if (def) await syncs.create(def);
    },
    stopSync: async (n?: SyncsNode) => {
      const name = await syncName(n, 'Stop Sync', (d) => syncs.isRunning(d.name));
      if (name) await syncs.stop(name);
    },
    pauseSync: async (n?: SyncsNode) => {
      const name = await syncName(n, 'Pause Sync', (d) => syncs.isRunning(d.name));
      if (name) await syncs.pause(name);
    },
    resumeSync: async (n?: SyncsNode) => {
      // An attached sync from a folder's settings is resumed to confirm its servers and watch it.
      const name = await syncName(n, 'Resume Sync', (d) => (!d.attach || !syncs.isApproved(d.name)) && !syncs.isRunning(d.name));
      if (name) await syncs.resume(name);
    },
    dropSync: async (n?: SyncsNode) => {
      const name = await syncName(n, 'Drop Sync');
      if (name) await syncs.drop(name);
    },
    syncSequences: async (n?: SyncsNode) => {
      const name = await syncName(n, 'Sync Sequences', (d) => !d.attach || d.source !== undefined);
      if (name) await syncs.syncSequences(name);
    },
    listSyncSlots: async (n?: ConnectionsNode) => {
      const name = conn(n) ?? (await connections.pick('List Sync Slots'));
      if (name) await syncs.listSlots(name);
    },
    verifySync: async (n?: SyncsNode) => {
      const name = await syncName(n, 'Verify Sync', (d) => !d.attach || d.source !== undefined);
      if (name) await syncs.verify(name);
    },
    guidedCutover: async (n?: SyncsNode) => {
      const name = await syncName(n, 'Guided Cutover', (d) => !d.attach || d.source !== undefined);
      if (name) await guidedCutover(syncs, name);
    },
    attachSync: async () => {
      const def = await askAttach(connections);
      if (def) await syncs.attach(def);
    },
    resyncTable: async (n?: SyncsNode) => {
      if (n?.kind !== 'syncTable') return;
      const answer = await vscode.window.showWarningMessage(`Resync ${n.key} in sync ${n.sync}?`, { modal: true, detail: 'The table is emptied on the target and copied afresh; the other tables go on.' }, 'Resync');
      if (answer === 'Resync') await syncs.resyncTable(n.sync, n.key);
    },
    showLogs: () => log.show(true),
    showProgress: async (n?: SyncsNode) => {
      const name = n?.kind === 'sync' ? n.name : n?.kind === 'syncTable' ? n.sync : await syncs.pickSync('Show Sync Progress', () => true);
      if (name) panel.show(name);
    },
  };
  for (const [id, fn] of Object.entries(commands)) {
    context.subscriptions.push(vscode.commands.registerCommand(`pgLiveSync.${id}`, async (...args: never[]) => {
      try {
        await fn(...args);
      } catch (err) {
        // One line with the fix, as the CLI prints it; the log keeps the context.
        const text = errorMessage(err);
        log.error(`${id}: ${text}`);
        void vscode.window.showErrorMessage(text);
      }
    }));
  }
  void syncs.offerResume();
  void showWalkthroughOnce(context);
}

const LOG_METHODS = new Set<string | symbol>(['trace', 'debug', 'info', 'warn', 'error', 'appendLine']);

/**
 * The log, every message one line: they carry names from settings (a folder's included) and from
 * servers, and a line break in one would forge log lines of its own.
 */
function oneLineLog(channel: vscode.LogOutputChannel): vscode.LogOutputChannel {
  return new Proxy(channel, {
    get(target, key) {
      const value = Reflect.get(target, key, target) as unknown;
      if (typeof value !== 'function') return value;
      if (!LOG_METHODS.has(key)) return value.bind(target);
      return (message: unknown, ...rest: unknown[]) => value.call(target, typeof message === 'string' ? oneLine(message) : message, ...rest);
    },
  });
}

/** The first activation on a machine opens the getting-started walkthrough; later ones do not. */
async function showWalkthroughOnce(context: vscode.ExtensionContext): Promise<void> {
  const key = 'pgLiveSync.walkthroughShown';
  if (context.globalState.get<boolean>(key)) return;
  await context.globalState.update(key, true);
  await vscode.commands.executeCommand('workbench.action.openWalkthrough', `${context.extension.id}#pgLiveSync.gettingStarted`, false);
}

export async function deactivate(): Promise<void> {
  await manager?.shutdown();
  manager = null;
}
