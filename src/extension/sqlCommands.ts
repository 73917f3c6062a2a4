import * as vscode from 'vscode';
import type pg from 'pg';
import { connect, qualified, quoteIdent, tableKey } from '../engine/connection';
import { errorMessage } from '../engine/errors';
import { listPublications, publicationTables, userTables } from '../engine/probe';
import { addTablesPlan, connectorRoleSql, note, readServerFacts, replicaIdentitySql, tableIdentities, tuningSql } from '../engine/sqlgen';
import type { ConnectionStore } from './connections';
import { runConfirmation, splitStatements, statementSummary } from './sqlSplit';
import { counted, formatCount } from '../engine/units';

/** Generated SQL is opened for review, never run behind the user's back. */
export class SqlCommands {
  constructor(private readonly connections: ConnectionStore, private readonly log: vscode.LogOutputChannel, private readonly afterChange: () => void) {}

  private async withClient<T>(name: string, fn: (client: pg.Client) => Promise<T>, userSql = false): Promise<T> {
    const client = await connect(await this.connections.endpoint(name), { applicationName: 'pg_live_sync_sql', userSql });
    try {
      return await fn(client);
    } finally {
      await client.end();
    }
  }

  private async openSql(text: string): Promise<void> {
    const doc = await vscode.workspace.openTextDocument({ language: 'sql', content: text });
    await vscode.window.showTextDocument(doc, { preview: false });
  }

  private where(name: string): string {
    const c = this.connections.get(name);
    return c ? `${name} (${this.connections.describe(c)})` : name;
  }

  async generateTuning(connection?: string): Promise<void> {
    const name = connection ?? (await this.connections.pick('Generate Tuning SQL: connection'));
    if (!name) return;
    const text = await this.withClient(name, async (c) => tuningSql(await readServerFacts(c), this.where(name)));
    await this.openSql(text);
  }

  async generateReplicaIdentity(connection?: string, publication?: string): Promise<void> {
    const name = connection ?? (await this.connections.pick('Generate Replica Identity SQL: connection'));
    if (!name) return;
    let scope = publication;
    let everyTable = false;
    if (scope === undefined) {
      const pubs = await this.withClient(name, listPublications);
      const pick = await vscode.window.showQuickPick(
        [
          { label: 'All published tables', detail: 'every table in any publication', scope: 'all' as const },
          { label: 'Every table in the database', detail: 'published or not', scope: 'every' as const },
          ...pubs.map((p) => ({ label: p.name, description: `${p.tableCount} tables`, scope: 'pub' as const })),
        ],
        { title: 'Generate Replica Identity SQL: tables', ignoreFocusOut: true },
      );
      if (!pick) return;
      everyTable = pick.scope === 'every';
      if (pick.scope === 'pub') scope = pick.label;
      else if (pick.scope === 'all') scope = undefined;
      if (pick.scope === 'all') {
        const text = await this.withClient(name, async (c) => {
          const names = (await listPublications(c)).map((p) => p.name);
          const seen = new Map<string, Awaited<ReturnType<typeof tableIdentities>>[number]>();
          for (const p of names) for (const t of await tableIdentities(c, p)) seen.set(tableKey(t.schema, t.table), t);
          return replicaIdentitySql([...seen.values()], `every published table on ${this.where(name)}`);
        });
        await this.openSql(text);
        return;
      }
    }
    const text = await this.withClient(name, async (c) =>
      replicaIdentitySql(await tableIdentities(c, everyTable ? undefined : scope), everyTable ? `every table on ${this.where(name)}` : `publication "${scope}" on ${this.where(name)}`),
    );
    await this.openSql(text);
  }

  async generateConnectorRole(connection?: string): Promise<void> {
    const name = connection ?? (await this.connections.pick('Generate Connector Role SQL: connection'));
    if (!name) return;
    const role = await vscode.window.showInputBox({
      title: 'Generate Connector Role SQL: role name', value: 'live_sync', ignoreFocusOut: true,
      validateInput: (v) => (v.trim() ? null : 'A role needs a name'),
    });
    if (!role) return;
    const text = await this.withClient(name, async (c) => {
      const published = new Set<string>();
      for (const p of await listPublications(c)) for (const t of await publicationTables(c, p.name)) published.add(t.schema);
      const schemas = published.size > 0 ? [...published].sort() : ['public'];
      return connectorRoleSql(c, role.trim(), schemas, (await readServerFacts(c)).rds);
    });
    await this.openSql(text);
  }

  async createPublication(connection?: string): Promise<void> {
    const name = connection ?? (await this.connections.pick('Create Publication: connection'));
    if (!name) return;
    const tables = await this.withClient(name, userTables);
    const picked = await vscode.window.showQuickPick(
      tables.map((t) => ({ label: `${t.schema}.${t.table}`, t })),
      { title: 'Create Publication: tables', canPickMany: true, ignoreFocusOut: true, placeHolder: 'Tables to publish' },
    );
    if (!picked || picked.length === 0) return;
    const pub = await vscode.window.showInputBox({ title: 'Create Publication: name', value: 'live_sync', ignoreFocusOut: true, validateInput: (v) => (v.trim() ? null : 'A publication needs a name') });
    if (!pub) return;
    const sql = `CREATE PUBLICATION ${quoteIdent(pub.trim())} FOR TABLE ${picked.map((p) => qualified(p.t.schema, p.t.table)).join(', ')}`;
    await this.runConfirmed(name, [sql], `Create publication ${pub.trim()} with ${counted(picked.length, 'table')}`);
  }

  async addTable(connection?: string, publication?: string): Promise<void> {
    const name = connection ?? (await this.connections.pick('Add Table to Publication: connection'));
    if (!name) return;
    const pub = publication ?? (await this.pickPublication(name, 'Add Table to Publication'));
    if (!pub) return;
    const [all, inPub] = await this.withClient(name, async (c) => [await tableIdentities(c), await publicationTables(c, pub)] as const);
    const present = new Set(inPub.map((t) => tableKey(t.schema, t.table)));
    const picked = await vscode.window.showQuickPick(
      all.filter((t) => !present.has(tableKey(t.schema, t.table))).map((t) => ({ label: `${t.schema}.${t.table}`, description: t.identity === 'none' ? 'no replica identity' : t.identity, t })),
      { title: `Add Table to Publication ${pub}`, canPickMany: true, ignoreFocusOut: true },
    );
    if (!picked || picked.length === 0) return;
    const plan = addTablesPlan(pub, picked.map((p) => p.t));
    let statements = [plan.add];
    if (plan.warning) {
      const withIdentity = 'Add with Replica Identity';
      const answer = await vscode.window.showWarningMessage(plan.warning, { modal: true, detail: plan.identityFixes.join('\n') }, withIdentity, 'Add Only');
      if (!answer) return;
      if (answer === withIdentity) statements = [...plan.identityFixes, plan.add];
    }
    await this.runConfirmed(name, statements, `Add ${counted(picked.length, 'table')} to ${pub}`);
  }

  async removeTable(connection?: string, publication?: string, table?: { schema: string; table: string }): Promise<void> {
    const name = connection ?? (await this.connections.pick('Remove Table from Publication: connection'));
    if (!name) return;
    const pub = publication ?? (await this.pickPublication(name, 'Remove Table from Publication'));
    if (!pub) return;
    let targets = table ? [table] : undefined;
    if (!targets) {
      const inPub = await this.withClient(name, (c) => publicationTables(c, pub));
      const picked = await vscode.window.showQuickPick(inPub.map((t) => ({ label: `${t.schema}.${t.table}`, t })), { title: `Remove Table from Publication ${pub}`, canPickMany: true, ignoreFocusOut: true });
      if (!picked || picked.length === 0) return;
      targets = picked.map((p) => p.t);
    }
    await this.runConfirmed(name, [`ALTER PUBLICATION ${quoteIdent(pub)} DROP TABLE ${targets.map((t) => qualified(t.schema, t.table)).join(', ')}`],
      `Remove ${counted(targets.length, 'table')} from ${pub} (running syncs stop applying them; target data stays)`);
  }

  private async pickPublication(name: string, title: string): Promise<string | undefined> {
    const pubs = await this.withClient(name, listPublications);
    if (pubs.length === 0) {
      void vscode.window.showWarningMessage(`${name} has no publication; create one first.`);
      return undefined;
    }
    const p = await vscode.window.showQuickPick(pubs.map((x) => ({ label: x.name, description: `${x.tableCount} tables` })), { title: `${title}: publication`, ignoreFocusOut: true });
    return p?.label;
  }

  /** Run SQL on Connection: the active editor's selection, or all of it. */
  async runEditorSql(connection?: string): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    if (!editor) {
      void vscode.window.showWarningMessage('Open the SQL to run in an editor first (Generate ... SQL opens one).');
      return;
    }
    const text = editor.selection.isEmpty ? editor.document.getText() : editor.document.getText(editor.selection);
    const statements = splitStatements(text);
    if (statements.length === 0) {
      void vscode.window.showInformationMessage('Nothing to run: the editor holds only comments.');
      return;
    }
    const name = connection ?? (await this.connections.pick('Run SQL on Connection: connection', [], true));
    if (!name) return;
    await this.runConfirmed(name, statements, null);
  }

  /**
   * Asks first, naming the server; runs each statement on its own (ALTER SYSTEM cannot run in a
   * transaction block); stops at the first error; reports each statement and any pending restart.
   */
  private async runConfirmed(name: string, statements: string[], what: string | null): Promise<void> {
    const where = this.where(name);
    const { message, detail } = runConfirmation(statements, where, what);
    const answer = await vscode.window.showWarningMessage(message, { modal: true, detail }, 'Run');
    if (answer !== 'Run') return;
    // The results open as SQL: every name and message in them stays inside its comment.
    const lines = [note(`SQL results on ${where}, ${new Date().toISOString()}`)];
    let ok = 0;
    let failed: string | null = null;
    await this.withClient(name, async (c) => {
      for (const [i, s] of statements.entries()) {
        try {
          const r = await c.query(s);
          const res = Array.isArray(r) ? r[r.length - 1] : r;
          // DDL reports no row count; a count is only news for statements that touch rows.
          const count = res.rowCount === null || !/^(SELECT|INSERT|UPDATE|DELETE|MERGE|COPY)$/.test(res.command ?? '') ? '' : ` (${res.rowCount} row${res.rowCount === 1 ? '' : 's'})`;
          const setting = /^\s*ALTER\s+SYSTEM\s+(?:SET|RESET)\s+("?)([\w.]+)\1/i.exec(statementSummary(s, 10_000));
          let restart = '';
          if (setting) {
            const p = await c.query('SELECT context FROM pg_settings WHERE name = $1', [setting[2].toLowerCase()]);
            restart = p.rows[0]?.context === 'postmaster' ? ' -- NEEDS A SERVER RESTART to take effect' : ' -- takes effect on reload (SELECT pg_reload_conf())';
          }
          lines.push(note(`ok${count}: ${statementSummary(s)}${restart}`));
          if (res.rows?.length && res.command === 'SELECT') for (const row of res.rows.slice(0, 20)) lines.push(note(`    ${JSON.stringify(row)}`));
          ok++;
        } catch (err) {
          failed = errorMessage(err);
          lines.push(note(`ERROR: ${failed}: ${statementSummary(s)}`));
          if (i < statements.length - 1) lines.push(note(`not run: ${counted(statements.length - i - 1, 'statement')} after this one`));
          break;
        }
      }
      const pending = await c.query(`SELECT name FROM pg_settings WHERE pending_restart ORDER BY 1`).catch(() => ({ rows: [] as { name: string }[] }));
      if (pending.rows.length > 0) lines.push(note(`RESTART NEEDED: ${pending.rows.map((r) => r.name).join(', ')} change(s) take effect after the server restarts`));
    }, true);
    for (const l of lines) this.log.info(l.replace(/^-- /, `sql on ${name}: `));
    await this.openSql(lines.join('\n') + '\n');
    if (failed) void vscode.window.showErrorMessage(`${formatCount(ok)} of ${counted(statements.length, 'statement')} ran on ${name}; then: ${failed}`);
    else void vscode.window.showInformationMessage(`Ran ${counted(ok, 'statement')} on ${name}.`);
    this.afterChange();
  }
}
