import * as vscode from 'vscode';
import type { Endpoint } from '../engine/connection';
import { errorMessage } from '../engine/errors';
import { describeProbe, probeServer } from '../engine/probe';
import {
  ConnectionInputError, ConnectionSecrets, connectionUrl, sslModeChoices, connectionUser, describeConnection, sanitizeConfig, splitUri, validateConnectionName,
  type ConnectionConfig, type SslMode,
} from './connectionModel';

const SECTION = 'pgLiveSync';
const KEY = 'connections';

export interface StoredConnection extends ConnectionConfig {
  scope: 'workspace' | 'user';
}

/**
 * Connections: the non-secret part in the `pgLiveSync.connections` setting (user or workspace,
 * so a team can share it), the password only in SecretStorage under the connection's name and
 * the server and role it is for (see ConnectionSecrets).
 */
export class ConnectionStore implements vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<void>();
  readonly onDidChange = this.changed.event;
  private readonly subscriptions: vscode.Disposable[];
  private readonly secrets: ConnectionSecrets;

  constructor(secrets: vscode.SecretStorage, private readonly log: vscode.LogOutputChannel) {
    this.secrets = new ConnectionSecrets(secrets);
    this.subscriptions = [
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (e.affectsConfiguration(`${SECTION}.${KEY}`)) this.changed.fire();
      }),
      // Trust brings the folder's own connections in.
      vscode.workspace.onDidGrantWorkspaceTrust(() => this.changed.fire()),
    ];
  }

  dispose(): void {
    for (const s of this.subscriptions) s.dispose();
    this.changed.dispose();
  }

  /**
   * Workspace entries first; a user entry with the same name is hidden by the workspace one. An
   * untrusted folder's entries are left out: they could name any server.
   */
  list(): StoredConnection[] {
    const inspect = vscode.workspace.getConfiguration(SECTION).inspect<unknown[]>(KEY);
    const out: StoredConnection[] = [];
    const seen = new Set<string>();
    const workspace = vscode.workspace.isTrusted ? inspect?.workspaceValue : undefined;
    for (const [scope, values] of [['workspace', workspace], ['user', inspect?.globalValue]] as const) {
      for (const raw of values ?? []) {
        const c = sanitizeConfig(raw);
        if (!c || seen.has(c.name)) continue;
        seen.add(c.name);
        out.push({ ...c, scope });
      }
    }
    return out;
  }

  get(name: string): StoredConnection | undefined {
    return this.list().find((c) => c.name === name);
  }

  /** Every entry named `name`, in both scopes, the hidden one included. */
  private sameName(name: string): ConnectionConfig[] {
    const inspect = vscode.workspace.getConfiguration(SECTION).inspect<unknown[]>(KEY);
    return [...(inspect?.workspaceValue ?? []), ...(inspect?.globalValue ?? [])].map(sanitizeConfig).filter((c): c is ConnectionConfig => c?.name === name);
  }

  describe(c: ConnectionConfig): string {
    return describeConnection(c);
  }

  /** The endpoint the engine connects to; the password is joined here and goes no further than `pg`. */
  async endpoint(name: string, role: string = `"${name}" connection`): Promise<Endpoint> {
    // A folder's settings may name any server: nothing connects before the user trusts it.
    if (!vscode.workspace.isTrusted) throw new Error('this workspace is not trusted, so Postgres Live Sync connects nowhere; trust it with Workspaces: Manage Workspace Trust');
    const c = this.get(name);
    if (!c) throw new Error(`no connection named "${name}"; add it with Postgres Live Sync: Add Connection`);
    const password = await this.secrets.get(c, this.sameName(name));
    return { url: connectionUrl(c, password), role, configuredIn: `connection "${name}" (Edit Connection)` };
  }

  async save(c: ConnectionConfig, scope: 'workspace' | 'user', password: string | null | undefined, replacing?: string): Promise<void> {
    const target = scope === 'workspace' ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    const config = vscode.workspace.getConfiguration(SECTION);
    const inspect = config.inspect<unknown[]>(KEY);
    const current = ((scope === 'workspace' ? inspect?.workspaceValue : inspect?.globalValue) ?? []).filter((raw) => {
      const n = sanitizeConfig(raw)?.name;
      return n !== c.name && n !== replacing;
    });
    // Only known, non-secret keys reach the setting.
    const entry = sanitizeConfig(c);
    if (!entry) throw new Error('invalid connection');
    const old = replacing ? this.get(replacing) : undefined;
    const oldPassword = old ? await this.secrets.get(old, this.sameName(old.name)) : null;
    await config.update(KEY, [...current, entry], target);
    if (old) {
      await this.secrets.delete(old);
      // Kept through a rename or an edit of other fields, never carried to another server or role.
      if (password === undefined && oldPassword !== null && this.secrets.sameServer(old, entry)) password = oldPassword;
    }
    if (password !== undefined) await this.secrets.set(entry, password);
    this.log.info(`saved connection "${c.name}" (${describeConnection(c)}) in ${scope} settings${password ? '; its password is in secret storage' : ''}`);
  }

  async remove(name: string): Promise<void> {
    for (const c of this.sameName(name)) await this.secrets.delete(c);
    const config = vscode.workspace.getConfiguration(SECTION);
    const inspect = config.inspect<unknown[]>(KEY);
    for (const [values, target] of [[inspect?.workspaceValue, vscode.ConfigurationTarget.Workspace], [inspect?.globalValue, vscode.ConfigurationTarget.Global]] as const) {
      if (!values?.some((raw) => sanitizeConfig(raw)?.name === name)) continue;
      await config.update(KEY, values.filter((raw) => sanitizeConfig(raw)?.name !== name), target);
    }
    this.log.info(`removed connection "${name}" and its stored password`);
  }

  async hasPassword(name: string): Promise<boolean> {
    const c = this.get(name);
    return c !== undefined && (await this.secrets.get(c, this.sameName(name))) !== null;
  }

  /** Test Connection: version, wal_level, replication right, latency; one line either way. */
  async test(name: string): Promise<void> {
    const c = this.get(name);
    if (!c) return;
    try {
      const probe = await probeServer(await this.endpoint(name));
      const text = `Connected to ${name}: ${describeProbe(probe)}`;
      this.log.info(text);
      void vscode.window.showInformationMessage(text);
    } catch (err) {
      const text = `${name}: the connection failed: ${errorMessage(err)}`;
      this.log.warn(text);
      void vscode.window.showWarningMessage(text);
    }
  }

  /** Pick a connection by name; skipped when only one exists. */
  async pick(title: string, exclude: string[] = [], alwaysAsk = false): Promise<string | undefined> {
    const items = this.list().filter((c) => !exclude.includes(c.name));
    if (items.length === 0) {
      const add = 'Add Connection';
      if ((await vscode.window.showWarningMessage('No connections yet; add one first.', add)) === add) {
        await vscode.commands.executeCommand('pgLiveSync.addConnection');
      }
      return undefined;
    }
    if (items.length === 1 && !alwaysAsk) return items[0].name;
    const picked = await vscode.window.showQuickPick(
      items.map((c) => ({ label: c.name, description: describeConnection(c) })),
      { title, placeHolder: 'Connection', ignoreFocusOut: true },
    );
    return picked?.label;
  }

  /** Add or edit, step by step; the password goes to SecretStorage only. */
  async edit(existing?: StoredConnection): Promise<string | undefined> {
    const title = existing ? `Edit Connection ${existing.name}` : 'Add Connection';
    const taken = this.list().map((c) => c.name).filter((n) => n !== existing?.name);
    const name = await vscode.window.showInputBox({
      title: `${title} (1/4)`, prompt: 'Connection name', placeHolder: 'e.g. source', value: existing?.name, ignoreFocusOut: true,
      validateInput: (v) => validateConnectionName(v.trim(), taken),
    });
    if (name === undefined) return undefined;
    const how = await vscode.window.showQuickPick(
      [
        { label: 'Connection URI', detail: 'postgresql://user@host:5432/database?sslmode=require' },
        { label: 'Host, port, database, user', detail: 'one field at a time; left empty, a field falls back to PGHOST, PGPORT, PGDATABASE, PGUSER' },
      ],
      { title: `${title} (2/4)`, placeHolder: 'How to connect', ignoreFocusOut: true },
    );
    if (!how) return undefined;
    let config: ConnectionConfig = { name: name.trim() };
    let passwordFromUri: string | null = null;
    if (how.label === 'Connection URI') {
      const uri = await vscode.window.showInputBox({
        title: `${title} (2/4)`, prompt: 'libpq URI (a password in it is moved to secret storage)', placeHolder: 'postgresql://user@host:5432/database?sslmode=require',
        value: existing?.uri, ignoreFocusOut: true,
        validateInput: (v) => {
          try {
            splitUri(v);
            return null;
          } catch (err) {
            return err instanceof ConnectionInputError ? err.message : errorMessage(err);
          }
        },
      });
      if (uri === undefined) return undefined;
      const split = splitUri(uri);
      config.uri = split.uri;
      passwordFromUri = split.password;
    } else {
      const fields = await this.askFields(title, existing);
      if (!fields) return undefined;
      config = { ...config, ...fields };
    }
    let password: string | null | undefined = passwordFromUri ?? undefined;
    if (passwordFromUri === null) {
      const user = connectionUser(config);
      // A stored password is offered only for the server and role it was saved for.
      const keep = existing && this.secrets.sameServer(existing, config) && (await this.hasPassword(existing.name));
      const typed = await vscode.window.showInputBox({
        title: `${title} (3/4)`, password: true, ignoreFocusOut: true,
        prompt: `Password for ${user}@${describeConnection(config)}${keep ? ' (empty keeps the stored one)' : ' (empty: use PGPASSWORD or ~/.pgpass)'}`,
        placeHolder: 'Password',
      });
      if (typed === undefined) return undefined;
      password = typed === '' ? (keep ? undefined : null) : typed;
    }
    let scope: 'workspace' | 'user' = existing?.scope ?? 'user';
    if (!existing && vscode.workspace.workspaceFolders?.length) {
      const where = await vscode.window.showQuickPick(
        [
          { label: 'Workspace settings', detail: 'shared with everyone who opens this folder (no password is ever written there)', scope: 'workspace' as const },
          { label: 'User settings', detail: 'only for you, in every window', scope: 'user' as const },
        ],
        { title: `${title} (4/4)`, placeHolder: 'Save in', ignoreFocusOut: true },
      );
      if (!where) return undefined;
      scope = where.scope;
    }
    await this.save(config, scope, password, existing?.name);
    try {
      const probe = await probeServer(await this.endpoint(config.name));
      void vscode.window.showInformationMessage(`Connected to ${config.name}: ${describeProbe(probe)}`);
    } catch (err) {
      void vscode.window.showWarningMessage(`${config.name} saved, but the connection failed: ${errorMessage(err)}`);
    }
    return config.name;
  }

  private async askFields(title: string, existing?: ConnectionConfig): Promise<Partial<ConnectionConfig> | undefined> {
    const step = `${title} (2/4)`;
    const host = await vscode.window.showInputBox({ title: step, prompt: 'Host (empty: PGHOST or localhost)', value: existing?.host, ignoreFocusOut: true });
    if (host === undefined) return undefined;
    const port = await vscode.window.showInputBox({
      title: step, prompt: 'Port (empty: PGPORT or 5432)', value: existing?.port ? String(existing.port) : '', ignoreFocusOut: true,
      validateInput: (v) => (v === '' || (/^\d+$/.test(v) && Number(v) > 0 && Number(v) < 65536) ? null : 'A port is a number from 1 to 65535'),
    });
    if (port === undefined) return undefined;
    const database = await vscode.window.showInputBox({ title: step, prompt: 'Database (empty: PGDATABASE or the user name)', value: existing?.database, ignoreFocusOut: true });
    if (database === undefined) return undefined;
    const user = await vscode.window.showInputBox({ title: step, prompt: 'User (empty: PGUSER or your OS user)', value: existing?.user, ignoreFocusOut: true });
    if (user === undefined) return undefined;
    const ssl = await vscode.window.showQuickPick(
      sslModeChoices(existing?.sslmode),
      { title: step, placeHolder: 'sslmode', ignoreFocusOut: true },
    );
    if (!ssl) return undefined;
    const out: Partial<ConnectionConfig> = { sslmode: ssl.label as SslMode };
    if (host) out.host = host.trim();
    if (port) out.port = Number(port);
    if (database) out.database = database.trim();
    if (user) out.user = user.trim();
    if (ssl.label === 'verify-ca' || ssl.label === 'verify-full') {
      const files = await vscode.window.showOpenDialog({ title: 'CA certificate (sslrootcert)', canSelectMany: false, openLabel: 'Use this CA' });
      if (!files?.length) return undefined;
      out.sslrootcert = files[0].fsPath;
    }
    return out;
  }
}
