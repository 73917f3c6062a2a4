/**
 * Stage 2 helper: keeps a copy's snapshot importable after the run that uses it dies, as pgcopydb's
 * `snapshot` process does. An exported snapshot lives only as long as the transaction that exported
 * it; the slot's own export dies with its replication connection. The holder is a detached
 * `pg-live-sync hold-snapshot` process (so a kill -9 of the run, or of its process group, leaves it
 * running) that imports the snapshot in a REPEATABLE READ transaction of its own, exports it again
 * and sits idle in that transaction. The source URL, password included, reaches it on stdin: argv
 * and the environment are visible to other users of the machine.
 *
 * It ends when its parent releases it (the copy finished), when its session is terminated (a newer
 * run adopted the snapshot through a holder of its own, or `drop`), or once its parent is gone
 * (stdin closed) and HOLDER_GRACE_MS has passed without any of that.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type pg from 'pg';
import { connect, type Endpoint } from './connection';
import { errorMessage, SyncError } from './errors';

/**
 * How long a holder whose run died waits for the next run to adopt it. Long enough for a
 * supervisor (systemd, the extension, a person) to restart the run; short enough that an
 * abandoned snapshot does not hold back vacuum on the source for long.
 */
export const HOLDER_GRACE_MS = 5 * 60_000;

/** The application_name of the holder's session: drop and adopters terminate only sessions named so. */
export const HOLDER_APPLICATION_NAME = 'pg_live_sync_snapshot';

/** The holder's last statement, which pg_stat_activity shows while it sits in its transaction. */
const EXPORT_SQL = 'SELECT pg_export_snapshot() AS snapshot, pg_backend_pid() AS pid';

export interface HeldSnapshot {
  /** The snapshot as the holder exported it again: import this one. */
  snapshot: string;
  /** The holder's backend on the source. */
  backendPid: number;
  osPid: number | null;
  /** The copy is over: the holder ends its transaction and exits now. */
  release(): void;
}

/** The script that runs the CLI: the bundle this code is part of, or the running entry point. */
function cliScript(): string {
  const bundled = path.join(__dirname, 'cli.js');
  return existsSync(bundled) ? bundled : process.argv[1];
}

/**
 * Starts a holder for `snapshot` (which must be importable now: its exporter still open) and
 * resolves once it holds its own export. Throws with the holder's reason when it cannot import it.
 */
export async function holdSnapshot(source: Endpoint, snapshot: string, graceMs = HOLDER_GRACE_MS): Promise<HeldSnapshot> {
  // libpq's PG* variables stay (a password may come from PGPASSWORD); the URLs the CLI may have read from the environment do not.
  const env = { ...process.env };
  delete env.SOURCE;
  delete env.TARGET;
  const child = spawn(process.execPath, [cliScript(), 'hold-snapshot'], { detached: true, stdio: ['pipe', 'pipe', 'ignore'], env });
  const stdin = child.stdin!;
  const stdout = child.stdout!;
  stdin.on('error', () => undefined);
  stdin.write(JSON.stringify({ source: source.url, snapshot, graceMs }) + '\n');
  const reply = await new Promise<{ snapshot?: string; pid?: number; error?: string }>((resolve) => {
    let text = '';
    const done = (r: { snapshot?: string; pid?: number; error?: string }) => {
      stdout.removeAllListeners('data');
      resolve(r);
    };
    stdout.on('data', (d) => {
      text += d;
      const nl = text.indexOf('\n');
      if (nl === -1) return;
      try {
        done(JSON.parse(text.slice(0, nl)));
      } catch {
        done({ error: 'the snapshot holder answered something unexpected' });
      }
    });
    child.on('error', (err) => done({ error: errorMessage(err) }));
    child.on('exit', (code) => done({ error: `the snapshot holder exited (${code})` }));
  });
  if (!reply.snapshot || reply.pid === undefined) {
    stdin.destroy();
    throw new SyncError(reply.error ?? 'the snapshot holder did not start', 'snapshot_holder');
  }
  // The run must be free to exit while the holder lives on; the pipe stays open until then.
  child.unref();
  stdout.destroy();
  (stdin as unknown as { unref?: () => void }).unref?.();
  return {
    snapshot: reply.snapshot,
    backendPid: reply.pid,
    osPid: child.pid ?? null,
    release() {
      if (stdin.destroyed) return;
      stdin.end('release\n');
    },
  };
}

/**
 * Ends holders by the source sessions the state records (a holder exits when its session ends);
 * only holders' sessions, so a pid taken by another session since is left alone: one named as
 * ours, or one still sitting in the transaction that exported the snapshot (a holder started by a
 * version that let a URL's application_name rename it).
 */
export async function endHolders(source: pg.Client, backendPids: number[]): Promise<void> {
  if (backendPids.length === 0) return;
  await source.query(
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE pid = ANY($1::int[]) AND (application_name = $2 OR (state = 'idle in transaction' AND query = $3))`,
    [backendPids, HOLDER_APPLICATION_NAME, EXPORT_SQL],
  );
}

/** The `hold-snapshot` process itself: reads its orders from `input`, answers one JSON line on `output`. */
export async function runSnapshotHolder(input: Readable, output: Writable): Promise<number> {
  input.setEncoding('utf8');
  let buffered = '';
  let inputEnded = false;
  let released = false;
  let wake: () => void = () => undefined;
  input.on('data', (d: string) => {
    buffered += d;
    // The first line is the orders; a later `release` line ends the holder.
    if (buffered.split('\n').slice(1).includes('release')) released = true;
    wake();
  });
  input.on('end', () => {
    inputEnded = true;
    wake();
  });
  input.on('error', () => {
    inputEnded = true;
    wake();
  });
  while (!buffered.includes('\n') && !inputEnded) await new Promise<void>((r) => (wake = r));
  if (!buffered.includes('\n')) return 2;
  let orders: { source: string; snapshot: string; graceMs: number };
  try {
    orders = JSON.parse(buffered.slice(0, buffered.indexOf('\n')));
  } catch {
    output.write(JSON.stringify({ error: 'hold-snapshot reads one JSON line on stdin' }) + '\n');
    return 2;
  }
  let client: pg.Client;
  try {
    client = await connect({ url: orders.source, role: 'source' }, { applicationName: HOLDER_APPLICATION_NAME });
  } catch (err) {
    output.write(JSON.stringify({ error: errorMessage(err) }) + '\n');
    return 1;
  }
  let sessionLost = false;
  client.on('error', () => {
    sessionLost = true;
    wake();
  });
  client.on('end', () => {
    sessionLost = true;
    wake();
  });
  try {
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    await client.query(`SET TRANSACTION SNAPSHOT '${orders.snapshot.replace(/'/g, "''")}'`);
    const r = await client.query(EXPORT_SQL);
    output.write(JSON.stringify({ snapshot: r.rows[0].snapshot, pid: r.rows[0].pid }) + '\n');
  } catch (err) {
    output.write(JSON.stringify({ error: errorMessage(err) }) + '\n');
    await client.end().catch(() => undefined);
    return 1;
  }
  let graceTimer: NodeJS.Timeout | null = null;
  let graceOver = false;
  for (;;) {
    if (released || sessionLost || graceOver) break;
    if (inputEnded && !graceTimer) {
      graceTimer = setTimeout(() => {
        graceOver = true;
        wake();
      }, orders.graceMs);
    }
    await new Promise<void>((r) => (wake = r));
  }
  if (graceTimer) clearTimeout(graceTimer);
  await client.query('ROLLBACK').catch(() => undefined);
  await client.end().catch(() => undefined);
  return 0;
}
