import type * as vscode from 'vscode';
import type { PanelAction, PanelHeader, PanelSample, PanelTable } from '../../webview/protocol';

/** Everything the progress panel knows about a sync; one per sync name. */
export interface PanelSnapshot {
  header: PanelHeader;
  tables: PanelTable[];
  /** Oldest first, at most the last few minutes. */
  samples: PanelSample[];
}

/**
 * What the progress panel reads and drives. The sync manager implements it; the panel never
 * touches the engine, a child process or a database itself.
 */
export interface PanelSource {
  /** Fires with a sync's name whenever its snapshot changed (at most a few times a second). */
  readonly onDidChange: vscode.Event<string>;
  /** Names of the syncs this window knows (local and attached). */
  names(): string[];
  snapshot(name: string): PanelSnapshot | null;
  /** Pause, resume, stop, drop (asks for confirmation itself), open logs, copy status. */
  act(name: string, action: PanelAction): Promise<void>;
  /** Copies one table afresh (schema.table key); local syncs only. */
  resyncTable(name: string, key: string): Promise<void>;
}
