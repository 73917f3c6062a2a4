import * as vscode from 'vscode';
import { connect } from '../engine/connection';
import { errorMessage } from '../engine/errors';
import { listPublications } from '../engine/probe';
import { validateSubscriptionName } from '../engine/slot';
import { stateSchemaExists } from '../engine/state';
import { parseTableMap } from '../engine/tablemap';
import type { TableMap } from '../engine/types';
import type { ConnectionStore } from './connections';
import type { SyncDefinition } from './syncModel';

/** Start Sync's questions: source, target, publications, name, table map, workers, copy-data. */
export async function askNewSync(connections: ConnectionStore, taken: string[], preset?: { source?: string; publication?: string }): Promise<SyncDefinition | undefined> {
  const title = 'Start Sync';
  const source = preset?.source ?? (await connections.pick(`${title} (1/7): source connection`, [], true));
  if (!source) return undefined;
  const target = await connections.pick(`${title} (2/7): target connection`, [source], true);
  if (!target) return undefined;
  const client = await connect(await connections.endpoint(source));
  let pubs: { name: string; tableCount: number }[];
  try {
    pubs = await listPublications(client);
  } finally {
    await client.end();
  }
  if (pubs.length === 0) {
    void vscode.window.showWarningMessage(`${source} has no publication; create one first (Postgres Live Sync: Create Publication).`);
    return undefined;
  }
  const picked = await vscode.window.showQuickPick(
    pubs.map((p) => ({ label: p.name, description: `${p.tableCount} tables`, picked: pubs.length === 1 || p.name === preset?.publication })),
    { title: `${title} (3/7): publications`, canPickMany: true, placeHolder: 'Publications to sync', ignoreFocusOut: true },
  );
  if (!picked || picked.length === 0) return undefined;
  const suggested = `${source}_to_${target}`.toLowerCase().replace(/[^a-z0-9_]/g, '_').slice(0, 40);
  const name = await vscode.window.showInputBox({
    title: `${title} (4/7): sync name (the subscription)`, value: suggested, ignoreFocusOut: true,
    prompt: 'Names the replication slot (pg_live_sync_<name>) and the state on the target',
    validateInput: (v) => {
      try {
        validateSubscriptionName(v);
      } catch (err) {
        return errorMessage(err);
      }
      return taken.includes(v) ? `A sync named ${v} exists already` : null;
    },
  });
  if (name === undefined) return undefined;
  const mapText = await vscode.window.showInputBox({
    title: `${title} (5/7): table map (optional)`, ignoreFocusOut: true,
    prompt: 'JSON maps, one per line or an array, e.g. {"source":{"schema":"public"},"target":{"schema":"mirror"}}; a table map may add "columns":{"old":"new","secret":null}; empty: same names',
    validateInput: (v) => {
      try {
        parseMaps(v);
        return null;
      } catch (err) {
        return errorMessage(err);
      }
    },
  });
  if (mapText === undefined) return undefined;
  const workers = await vscode.window.showInputBox({
    title: `${title} (6/7): table sync workers`, value: '4', ignoreFocusOut: true, prompt: 'Tables copied in parallel (1 to 64)',
    validateInput: (v) => (/^\d+$/.test(v) && Number(v) >= 1 && Number(v) <= 64 ? null : 'A whole number from 1 to 64'),
  });
  if (workers === undefined) return undefined;
  const copy = await vscode.window.showQuickPick(
    [
      { label: 'Copy existing rows, then stream changes', copyData: true, createTables: false },
      { label: 'Create missing target tables, copy existing rows, then stream changes', copyData: true, createTables: true, detail: 'types, columns, keys and partitions from the source; other indexes are logged as SQL to choose' },
      { label: 'Stream changes only', copyData: false, createTables: false, detail: 'the target already holds the rows' },
    ],
    { title: `${title} (7/7): initial copy`, ignoreFocusOut: true },
  );
  if (!copy) return undefined;
  return {
    name, source, target, publications: picked.map((p) => p.label), tableMaps: parseMaps(mapText),
    tableSyncWorkers: Number(workers), copyData: copy.copyData, createTables: copy.createTables, applyDdl: [], attach: false, streaming: 'parallel',
  };
}

/** Attach's questions: the target, one of the syncs in its state, and (optionally) the source. */
export async function askAttach(connections: ConnectionStore): Promise<SyncDefinition | undefined> {
  const target = await connections.pick('Attach to Sync (1/3): target connection', [], true);
  if (!target) return undefined;
  const client = await connect(await connections.endpoint(target));
  let subs: { subname: string; source: string; publications: string[] }[] = [];
  try {
    // Refuses state another role could have put code into, as every reader of it does.
    if (await stateSchemaExists(client)) subs = (await client.query('SELECT subname, source, publications FROM _pg_live_sync.subscription ORDER BY 1')).rows;
  } finally {
    await client.end();
  }
  if (subs.length === 0) {
    void vscode.window.showWarningMessage(`${target} holds no sync state (_pg_live_sync); start a sync first.`);
    return undefined;
  }
  const sub = await vscode.window.showQuickPick(
    subs.map((s) => ({ label: s.subname, description: `from ${s.source}`, detail: `publications ${s.publications.join(', ')}`, publications: s.publications })),
    { title: 'Attach to Sync (2/3): sync', ignoreFocusOut: true },
  );
  if (!sub) return undefined;
  const none = 'No source connection';
  const sourcePick = await vscode.window.showQuickPick(
    [
      ...connections.list().filter((c) => c.name !== target).map((c) => ({ label: c.name, description: connections.describe(c) })),
      { label: none, description: 'no lag in bytes or retained WAL' },
    ],
    { title: 'Attach to Sync (3/3): source connection (read-only, for lag and retained WAL)', ignoreFocusOut: true },
  );
  if (!sourcePick) return undefined;
  return {
    name: sub.label, source: sourcePick.label === none ? '' : sourcePick.label, target,
    publications: sub.publications, tableMaps: [], tableSyncWorkers: 4, copyData: true, createTables: false, applyDdl: [], attach: true, streaming: 'parallel',
  };
}

/** Table maps as typed: a JSON array, or one JSON object per line, as `--table-map` takes them. */
function parseMaps(text: string): TableMap[] {
  const t = text.trim();
  if (!t) return [];
  if (t.startsWith('[')) {
    const arr = JSON.parse(t) as unknown[];
    if (!Array.isArray(arr)) throw new Error('a table map list is a JSON array');
    return arr.map((m) => parseTableMap(JSON.stringify(m)));
  }
  return t.split('\n').filter((l) => l.trim()).map((l) => parseTableMap(l));
}
