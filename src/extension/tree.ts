import * as vscode from 'vscode';
import { formatBytes, formatCount } from '../engine/units';
import { connect, tableKey } from '../engine/connection';
import { errorMessage } from '../engine/errors';
import { listPublications, publicationTables, type PublishedTableInfo } from '../engine/probe';
import type { ConnectionStore } from './connections';
import type { SyncManager } from './syncManager';
import { describeActivity, tableWord } from './syncModel';
import type { PanelTable } from '../../webview/protocol';

export type ConnectionsNode =
  | { kind: 'connection'; name: string }
  | { kind: 'publication'; connection: string; name: string; tableCount: number; allTables: boolean }
  | { kind: 'table'; connection: string; publication: string; info: PublishedTableInfo }
  | { kind: 'message'; text: string; error: boolean };

const IDENTITY_ICONS: Record<PublishedTableInfo['identity'], string> = { 'primary key': 'key', index: 'list-ordered', full: 'list-flat', none: 'warning' };

/** connection > publications > tables, each level read from the server only when expanded. */
export class ConnectionsTree implements vscode.TreeDataProvider<ConnectionsNode> {
  private readonly changed = new vscode.EventEmitter<ConnectionsNode | undefined>();
  readonly onDidChangeTreeData = this.changed.event;
  /** Table nodes by connection, so a sync's state change repaints only those rows. */
  private readonly tableNodes = new Map<string, ConnectionsNode[]>();
  private readonly painted = new WeakMap<ConnectionsNode, string>();

  constructor(private readonly connections: ConnectionStore, private readonly syncs: SyncManager) {
    connections.onDidChange(() => this.refresh());
    syncs.onDidChange(() => this.repaintStates());
  }

  refresh(node?: ConnectionsNode): void {
    if (!node) this.tableNodes.clear();
    this.changed.fire(node);
  }

  getTreeItem(node: ConnectionsNode): vscode.TreeItem {
    switch (node.kind) {
      case 'connection': {
        const c = this.connections.get(node.name);
        const item = new vscode.TreeItem(node.name, vscode.TreeItemCollapsibleState.Collapsed);
        item.id = `connection:${node.name}`;
        item.description = c ? this.connections.describe(c) : '';
        item.tooltip = new vscode.MarkdownString(`**${node.name}**\n\n${item.description}\n\nsaved in ${c?.scope ?? '?'} settings`);
        item.iconPath = new vscode.ThemeIcon('database');
        item.contextValue = 'connection';
        return item;
      }
      case 'publication': {
        const item = new vscode.TreeItem(node.name, vscode.TreeItemCollapsibleState.Collapsed);
        item.id = `publication:${node.connection}:${node.name}`;
        item.description = `${node.tableCount} table${node.tableCount === 1 ? '' : 's'}${node.allTables ? ' (FOR ALL TABLES)' : ''}`;
        item.iconPath = new vscode.ThemeIcon('broadcast');
        item.contextValue = 'publication';
        return item;
      }
      case 'table': {
        const { info } = node;
        const item = new vscode.TreeItem(`${info.schema}.${info.table}`, vscode.TreeItemCollapsibleState.None);
        item.id = `table:${node.connection}:${node.publication}:${tableKey(info.schema, info.table)}`;
        const identity = info.identity === 'index' ? `index ${info.identityIndex}` : info.identity;
        const sync = this.syncState(node);
        this.painted.set(node, sync?.text ?? '');
        item.description = sync ? `${identity} · ${sync.text}` : identity;
        const md = new vscode.MarkdownString();
        md.appendMarkdown(`**${info.schema}.${info.table}**\n\nReplica identity: ${identityHelp(info)}`);
        if (sync) md.appendMarkdown(`\n\nSync **${sync.sync}**: ${sync.text}${sync.error ? `\n\n$(error) ${sync.error}` : ''}`);
        md.supportThemeIcons = true;
        item.tooltip = md;
        item.iconPath = sync?.error
          ? new vscode.ThemeIcon('error', new vscode.ThemeColor('problemsErrorIcon.foreground'))
          : sync
            ? new vscode.ThemeIcon(sync.state === 'r' ? 'pass' : 'sync', new vscode.ThemeColor(sync.state === 'r' ? 'testing.iconPassed' : 'charts.blue'))
            : new vscode.ThemeIcon(IDENTITY_ICONS[info.identity], info.identity === 'none' ? new vscode.ThemeColor('problemsWarningIcon.foreground') : undefined);
        item.contextValue = `table-${info.identity.replace(' ', '-')}`;
        return item;
      }
      case 'message': {
        const item = new vscode.TreeItem(node.text, vscode.TreeItemCollapsibleState.None);
        item.iconPath = new vscode.ThemeIcon(node.error ? 'error' : 'info');
        item.tooltip = node.text;
        return item;
      }
    }
  }

  async getChildren(node?: ConnectionsNode): Promise<ConnectionsNode[]> {
    if (!node) return this.connections.list().map((c) => ({ kind: 'connection', name: c.name }));
    if (node.kind === 'message' || node.kind === 'table') return [];
    try {
      const client = await connect(await this.connections.endpoint(node.kind === 'connection' ? node.name : node.connection), { applicationName: 'pg_live_sync_tree' });
      try {
        if (node.kind === 'connection') {
          const pubs = await listPublications(client);
          if (pubs.length === 0) return [{ kind: 'message', text: 'No publications (Create Publication)', error: false }];
          return pubs.map((p) => ({ kind: 'publication', connection: node.name, name: p.name, tableCount: p.tableCount, allTables: p.allTables }));
        }
        const tables = await publicationTables(client, node.name);
        const nodes: ConnectionsNode[] = tables.map((info) => ({ kind: 'table', connection: node.connection, publication: node.name, info }));
        const key = node.connection;
        this.tableNodes.set(key, [...(this.tableNodes.get(key) ?? []).filter((n) => n.kind === 'table' && n.publication !== node.name), ...nodes]);
        return nodes.length > 0 ? nodes : [{ kind: 'message', text: 'No tables (Add Table to Publication)', error: false }];
      } finally {
        await client.end();
      }
    } catch (err) {
      return [{ kind: 'message', text: errorMessage(err), error: true }];
    }
  }

  /** The state of this source table in the first sync that publishes it, if any. */
  private syncState(node: ConnectionsNode & { kind: 'table' }): { sync: string; state: PanelTable['state']; text: string; error: string | null } | null {
    const key = tableKey(node.info.schema, node.info.table);
    for (const def of this.syncs.definitions()) {
      if (def.source !== node.connection) continue;
      const snap = this.syncs.snapshot(def.name);
      const t = snap?.tables.find((x) => x.key === key && !x.removed);
      if (!snap || !t) continue;
      const running = snap.header.activity === 'copying' || snap.header.activity === 'streaming';
      const lag = running && t.state === 'r' && snap.header.lagBytes !== null ? `, lag ${formatBytes(snap.header.lagBytes)}` : '';
      return { sync: def.name, state: t.state, text: `${tableWord(t)}${lag}`, error: t.lastError };
    }
    return null;
  }

  private repaintStates(): void {
    for (const nodes of this.tableNodes.values()) {
      for (const n of nodes) {
        if (n.kind !== 'table') continue;
        const now = this.syncState(n)?.text ?? '';
        if (this.painted.get(n) !== now) this.changed.fire(n);
      }
    }
  }
}

function identityHelp(info: PublishedTableInfo): string {
  switch (info.identity) {
    case 'primary key':
      return 'primary key: updates and deletes find rows by it';
    case 'index':
      return `unique index ${info.identityIndex}`;
    case 'full':
      return 'FULL: the whole old row is logged and matched (costly; add a key if you can)';
    case 'none':
      return 'none: UPDATE and DELETE on this table fail on the source while it is published. Run Generate Replica Identity SQL';
  }
}

export type SyncsNode = { kind: 'sync'; name: string } | { kind: 'syncTable'; sync: string; key: string };

/** Named syncs (run here or attached) and their tables' states. */
export class SyncsTree implements vscode.TreeDataProvider<SyncsNode> {
  private readonly changed = new vscode.EventEmitter<SyncsNode | undefined>();
  readonly onDidChangeTreeData = this.changed.event;
  private pending: NodeJS.Timeout | null = null;

  constructor(private readonly syncs: SyncManager) {
    // Status arrives every second per sync; repaint at most twice a second.
    syncs.onDidChange(() => {
      this.pending ??= setTimeout(() => {
        this.pending = null;
        this.changed.fire(undefined);
      }, 500);
    });
    vscode.workspace.onDidChangeConfiguration((e) => e.affectsConfiguration('pgLiveSync.syncs') && this.changed.fire(undefined));
  }

  getTreeItem(node: SyncsNode): vscode.TreeItem {
    if (node.kind === 'sync') {
      const def = this.syncs.definition(node.name);
      const snap = this.syncs.snapshot(node.name);
      const running = this.syncs.isRunning(node.name);
      const item = new vscode.TreeItem(node.name, vscode.TreeItemCollapsibleState.Expanded);
      item.id = `sync:${node.name}`;
      const problems = this.syncs.problems(node.name);
      // A folder's sync is not polled until its servers are confirmed: say why it shows nothing.
      const unconfirmed = !running && !this.syncs.isApproved(node.name);
      const activity = problems.length > 0 ? `invalid settings: ${problems[0]}`
        : unconfirmed ? "from this folder's settings, not connected: Resume Sync to confirm its servers"
        : snap ? describeActivity(snap) : running ? 'starting' : this.syncs.isPaused(node.name) ? 'paused' : 'no state on the target yet';
      item.description = def?.attach ? `${activity} (attached)` : activity;
      item.tooltip = new vscode.MarkdownString(`**${node.name}**: ${def?.source || '?'} > ${def?.target}\n\npublications ${def?.publications.join(', ')}${[...problems, snap?.header.lastError ?? ''].filter(Boolean).map((p) => `\n\n${p}`).join('')}`);
      item.iconPath = new vscode.ThemeIcon(snap?.header.activity === 'error' || problems.length > 0 ? 'error' : running ? 'sync~spin' : unconfirmed ? 'shield' : def?.attach ? 'eye' : 'debug-pause');
      item.contextValue = unconfirmed ? 'sync-stopped' : def?.attach ? 'sync-attached' : running ? 'sync-running' : 'sync-stopped';
      item.command = { command: 'pgLiveSync.showProgress', title: 'Show Sync Progress', arguments: [node] };
      return item;
    }
    const t = this.syncs.snapshot(node.sync)?.tables.find((x) => x.key === node.key);
    const item = new vscode.TreeItem(t ? `${t.schema}.${t.table}` : node.key, vscode.TreeItemCollapsibleState.None);
    item.id = `syncTable:${node.sync}:${node.key}`;
    if (t) {
      const word = tableWord(t);
      const copying = t.state === 'd' ? ` ${formatCount(t.rowsCopied)}/~${formatCount(t.approximateRows)} rows` : '';
      item.description = `${word}${copying}`;
      item.tooltip = `${t.schema}.${t.table} > ${t.targetSchema}.${t.targetTable}: ${word}${t.lastError ? `\n${t.lastError}` : ''}`;
      item.iconPath = t.lastError ? new vscode.ThemeIcon('error') : new vscode.ThemeIcon(t.state === 'r' ? 'pass' : t.removed ? 'circle-slash' : 'sync');
    }
    item.contextValue = this.syncs.definition(node.sync)?.attach ? 'syncTable-attached' : 'syncTable';
    return item;
  }

  getChildren(node?: SyncsNode): SyncsNode[] {
    if (!node) return this.syncs.definitions().map((d) => ({ kind: 'sync', name: d.name }));
    if (node.kind === 'sync') return (this.syncs.snapshot(node.name)?.tables ?? []).map((t) => ({ kind: 'syncTable', sync: node.name, key: t.key }));
    return [];
  }
}
