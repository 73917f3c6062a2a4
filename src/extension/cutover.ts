/**
 * Guided cutover: the steps users otherwise script by hand, in order, each one asked for and
 * each one leaving the source untouched until the last: writes stopped (by the user), the target
 * caught up to the source's position at that moment, sequences set, verify, then drop.
 * Stopping anywhere before the drop leaves the sync as it was (sequences only ever move forward).
 */
import * as vscode from 'vscode';
import { formatLsn } from '../engine/lsn';
import type { SyncManager } from './syncManager';

const CATCH_UP_POLL_MS = 500;
const CATCH_UP_TIMEOUT_MS = 10 * 60_000;

export async function guidedCutover(syncs: SyncManager, name: string): Promise<void> {
  const title = (step: number, what: string) => `Cutover of sync ${name} (${step}/5): ${what}`;
  const stopped = (why: string) => void vscode.window.showInformationMessage(`Cutover of sync ${name} stopped ${why}; nothing was dropped, the sync goes on.`);

  if (!syncs.isRunning(name) && syncs.snapshot(name)?.header.activity !== 'streaming') {
    throw new Error(`sync ${name} is not streaming; resume it, then start the cutover again`);
  }
  const writes = await vscode.window.showWarningMessage(
    title(1, 'stop writes to the source'),
    { modal: true, detail: 'Stop every writer of the published tables on the source (the application, jobs, migrations), then continue. The next steps wait for the target to catch up, set its sequences, verify it and finally offer to drop the sync.' },
    'Writes Are Stopped',
  );
  if (writes !== 'Writes Are Stopped') return stopped('before it began');

  const position = await syncs.slotProgress(name);
  const at = await position.sourceLsn();
  const caughtUp = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: title(2, `waiting for the target to apply everything up to ${formatLsn(at)}`), cancellable: true },
    async (_progress, token) => {
      const deadline = Date.now() + CATCH_UP_TIMEOUT_MS;
      while (!token.isCancellationRequested && Date.now() < deadline) {
        if (await position.caughtUp(at)) return true;
        await new Promise((r) => setTimeout(r, CATCH_UP_POLL_MS));
      }
      return false;
    },
  );
  if (!caughtUp) return stopped(`while waiting for the target to reach ${formatLsn(at)} (check the sync's lag, then start again)`);

  if ((await syncs.syncSequences(name)) === 'declined') return stopped('at the sequences');

  if (!(await syncs.verify(name))) return stopped('at verify: the target differs from the source (the report is open)');

  const drop = await vscode.window.showWarningMessage(
    title(5, 'ready: the target holds everything the source had'),
    { modal: true, detail: `Caught up to ${formatLsn(at)}, sequences set, every table verified. Point the application at the target; then drop the sync to free its replication slot on the source. Dropping cannot be undone; keeping it lets you check more first.` },
    'Drop Sync…',
    'Keep Sync',
  );
  if (drop === 'Drop Sync…') await syncs.drop(name);
  else stopped('before the drop, as asked');
}
