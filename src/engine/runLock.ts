/**
 * The subscription's run lock: an advisory lock on the target, held by the run's main session for
 * the life of the run, so a second run of the subscription is refused rather than interleaved.
 *
 * A network path that dies can leave that session behind on the target (half-open: the server
 * never heard the run go) still holding the lock, until keepalives end it. A run must then not
 * wait, nor end a live run's session: it ends the holder only when it can tell the holder is
 * stale, because the session is its own from before a reconnect, or because the run that took
 * the lock (recorded in `_pg_live_sync.run_lock`) was a process on this host that is gone.
 */
import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type pg from 'pg';
import { SyncError } from './errors';
import { tryLockSubscription } from './state';
import type { Logger } from './types';

/** One backend, for good: a pid alone may be another session's later on. */
export interface LockSession {
  pid: number;
  /** backend_start in UTC to the microsecond (STARTED below), compared as text. */
  started: string;
}

/** The run that took the lock last, as `run_lock` records it. */
export interface LockOwner extends LockSession {
  host: string;
  osPid: number;
  runId: string;
}

/** The session holding the lock now, as pg_stat_activity shows it. */
export interface LockHolder extends LockSession {
  app: string | null;
  addr: string | null;
}

/** This process: a pid reused after a restart (a container's pid 1) is told apart by it. */
export const RUN_ID: string = randomUUID();

/** backend_start as LockSession.started, whatever the session's TimeZone or DateStyle. */
const STARTED = (column: string) => `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')`;
const SAME_STARTED = `backend_start = ($2::timestamp AT TIME ZONE 'UTC')`;

const HOLDER_SQL = `SELECT a.pid, ${STARTED('a.backend_start')} AS started, a.application_name AS app, a.client_addr::text AS addr
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid::bigint = (hashtext('pg_live_sync.sub')::bigint & 4294967295)
   AND l.objid::bigint = (hashtext($1)::bigint & 4294967295)`;

/** How long a terminated holder may take to let go of the lock. */
const RELEASE_WAIT_MS = 10_000;

/**
 * Takes the lock on `client` and records this run as its owner; ends a stale holder first (see
 * above). Returns this session, or throws `running` naming the live holder and how to end it.
 */
export async function acquireRunLock(client: pg.Client, subname: string, abandoned: readonly LockSession[], log: Logger): Promise<LockSession> {
  for (let attempt = 0; ; attempt++) {
    if (await tryLockSubscription(client, subname)) return recordOwner(client, subname);
    const holder = ((await client.query(HOLDER_SQL, [subname])).rows[0] as LockHolder | undefined) ?? null;
    // Let go of between the two queries: try again.
    if (!holder && attempt < 3) continue;
    const owner = holder ? await loadOwner(client, subname) : null;
    const why = holder && attempt < 3 ? staleHolder(holder, owner, abandoned) : null;
    if (!holder || !why) throw alreadyRunning(subname, holder, owner);
    log('warn', `ending session ${holder.pid} on the target, which holds subscription "${subname}"'s lock: ${why}`);
    const ended = await client
      .query(`SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE pid = $1 AND ${SAME_STARTED}`, [holder.pid, holder.started])
      .then((r) => r.rows[0]?.ok === true, () => false);
    if (!ended) throw alreadyRunning(subname, holder, owner);
    await untilGone(client, holder);
  }
}

/**
 * Why `holder` is stale, or null when it may be a live run's: this run's own session from before
 * a reconnect, or the recorded owner's session when that owner was a process on this host that
 * no longer runs (or whose pid this process has now).
 */
export function staleHolder(
  holder: LockSession, owner: LockOwner | null, abandoned: readonly LockSession[],
  here = { host: os.hostname(), pid: process.pid, runId: RUN_ID }, alive: (pid: number) => boolean = processAlive,
): string | null {
  if (abandoned.some((s) => sameSession(s, holder))) return 'it is this run\'s own session from before its connection was lost';
  if (!owner || !sameSession(owner, holder) || owner.host !== here.host) return null;
  if (owner.osPid === here.pid) return owner.runId === here.runId ? null : `its run, process ${owner.osPid} on this host, is gone (this process has its pid now)`;
  return alive(owner.osPid) ? null : `its run, process ${owner.osPid} on this host, is gone`;
}

function sameSession(a: LockSession, b: LockSession): boolean {
  return a.pid === b.pid && a.started === b.started;
}

/** Whether a process runs under `pid` on this host; a zombie (killed, not yet reaped) does not. */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    return !/^\d+ \(.*\) Z/s.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return true;
  }
}

async function recordOwner(client: pg.Client, subname: string): Promise<LockSession> {
  const r = await client.query(
    `INSERT INTO _pg_live_sync.run_lock (subname, backend_pid, backend_start, host, os_pid, run_id)
     SELECT $1, pid, backend_start, $2, $3, $4 FROM pg_stat_activity WHERE pid = pg_backend_pid()
     ON CONFLICT (subname) DO UPDATE SET backend_pid = EXCLUDED.backend_pid, backend_start = EXCLUDED.backend_start, host = EXCLUDED.host,
       os_pid = EXCLUDED.os_pid, run_id = EXCLUDED.run_id, locked_at = now()
     RETURNING backend_pid AS pid, ${STARTED('backend_start')} AS started`,
    [subname, os.hostname(), process.pid, RUN_ID],
  );
  return r.rows[0] as LockSession;
}

async function loadOwner(client: pg.Client, subname: string): Promise<LockOwner | null> {
  const r = await client.query(
    `SELECT backend_pid AS pid, ${STARTED('backend_start')} AS started, host, os_pid AS "osPid", run_id AS "runId" FROM _pg_live_sync.run_lock WHERE subname = $1`,
    [subname],
  ).catch(() => null);
  return (r?.rows[0] as LockOwner | undefined) ?? null;
}

async function untilGone(client: pg.Client, s: LockSession): Promise<void> {
  const deadline = Date.now() + RELEASE_WAIT_MS;
  while (Date.now() < deadline) {
    const r = await client.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND ${SAME_STARTED}`, [s.pid, s.started]);
    if (r.rowCount === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function alreadyRunning(subname: string, holder: LockHolder | null, owner: LockOwner | null): SyncError {
  const run = owner && holder && owner.pid === holder.pid && owner.started === holder.started ? `, run by process ${owner.osPid} on ${owner.host}` : '';
  const who = holder ? `: session ${holder.pid}, ${holder.app || 'no application_name'}${holder.addr ? ` from ${holder.addr}` : ''}${run}` : '';
  const gone = holder ? `, or if that run is gone (its machine or network failed), end its session on the target: SELECT pg_terminate_backend(${holder.pid})` : '';
  return new SyncError(`subscription "${subname}" is already running against this target (another pg-live-sync run holds its lock${who}); stop that run first${gone}`, 'running');
}
