/**
 * The extension's engine process: `pg-live-sync serve-ipc` forked over an IPC channel, as
 * src/extension/engineProcess.ts does. Start, status and log messages, a clean stop, the target's
 * report of the run from outside, a table resync, a failed start, and dropping the sync.
 */
import assert from 'node:assert/strict';
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FromEngine, StatusJson, ToEngine } from '../../src/cli/ipc';
import { connect, type Endpoint } from '../../src/engine/connection';
import { dropSync, readSyncReport } from '../../src/engine/report';
import { resetTableForResync } from '../../src/engine/state';
import type { LogLevel, SyncOptions } from '../../src/engine/types';
import {
  CLI, freshDatabases, pg, runCli, sameContents, startPair, tableFingerprint, tableStates, tail, waitCaughtUp, waitFor, type Pair,
} from '../harness/sync';

const ROOT = path.resolve(__dirname, '../..');

/** Newest modification time of the files the CLI bundle is built from. */
function newestSource(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    newest = Math.max(newest, entry.isDirectory() ? newestSource(full) : statSync(full).mtimeMs);
  }
  return newest;
}

let pair: Pair;
const children = new Set<EngineChild>();
before(async () => {
  const stale = !existsSync(CLI) || statSync(CLI).mtimeMs < Math.max(newestSource(path.join(ROOT, 'src')), newestSource(path.join(ROOT, 'webview')));
  if (stale) execFileSync(process.execPath, ['esbuild.mjs'], { cwd: ROOT, stdio: 'inherit' });
  pair = await startPair();
});
after(async () => {
  for (const child of children) {
    if (child.proc.exitCode === null && child.proc.signalCode === null) {
      child.proc.kill('SIGKILL');
      await child.exited;
    }
  }
  pair?.stop();
});

interface EngineChild {
  proc: ChildProcess;
  messages: FromEngine[];
  /** Resolves with the exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  send(m: ToEngine): void;
  stderr(): string;
  /** The recent messages and stderr, for failure messages. */
  describe(): string;
}

/** Forks `serve-ipc` as the extension does and sends it `start`. */
function startEngine(options: SyncOptions): EngineChild {
  const proc = fork(CLI, ['serve-ipc'], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'], execArgv: [] });
  const messages: FromEngine[] = [];
  let stderr = '';
  proc.stderr!.setEncoding('utf8');
  proc.stderr!.on('data', (d: string) => (stderr = (stderr + d).slice(-20_000)));
  proc.on('message', (m: FromEngine) => messages.push(m));
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)));
  const child: EngineChild = {
    proc,
    messages,
    exited,
    send: (m) => { if (proc.connected) proc.send(m); },
    stderr: () => stderr,
    describe: () => `last messages: ${JSON.stringify(messages.filter((m) => m.type !== 'status').slice(-10))}\nstderr:\n${tail(stderr)}`,
  };
  children.add(child);
  child.send({ type: 'start', options });
  return child;
}

const running = (child: EngineChild) => child.proc.exitCode === null && child.proc.signalCode === null;

/** Waits for a message `match` accepts; fails at once, with the child's output, if it exits first. */
async function waitMessage<T extends FromEngine>(child: EngineChild, what: string, match: (m: FromEngine) => m is T, timeoutMs = 60_000): Promise<T> {
  const found = await waitFor(what, async () => child.messages.find(match) ?? (!running(child) ? ('exited' as const) : undefined), timeoutMs, 20);
  assert.notEqual(found, 'exited', `the engine exited (code ${child.proc.exitCode}) while waiting for ${what}\n${child.describe()}`);
  return found as T;
}

type StatusMessage = Extract<FromEngine, { type: 'status' }>;

/** Waits for a status message that `ok` accepts. */
async function waitStatus(child: EngineChild, what: string, ok: (s: StatusJson) => boolean): Promise<StatusJson> {
  return (await waitMessage(child, what, (m): m is StatusMessage => m.type === 'status' && ok(m.status))).status;
}

const allReady = (count: number) => (s: StatusJson) => s.tables.length === count && s.tables.every((t) => t.state === 'r');

/** Sends stop; the `exit` message and the process's exit code, within 15 s. */
async function stopEngine(child: EngineChild): Promise<{ error: string | null; code: number | null }> {
  child.send({ type: 'stop' });
  const deadline = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 15_000).unref());
  const code = await Promise.race([child.exited, deadline]);
  assert.notEqual(code, 'timeout', `the engine did not exit within 15 s of stop\n${child.describe()}`);
  const exit = child.messages.find((m): m is Extract<FromEngine, { type: 'exit' }> => m.type === 'exit');
  assert.ok(exit, `an exit message before the process ended\n${child.describe()}`);
  assert.equal(child.messages.at(-1), exit, 'exit is the last message');
  return { error: exit.error, code: code as number | null };
}

function options(sourceUrl: string, targetUrl: string, subscription: string, publications = ['pub']): SyncOptions {
  return {
    source: sourceUrl,
    target: targetUrl,
    publications,
    subscription,
    tableMaps: [],
    tableSyncWorkers: 2,
    copyData: true,
    configuredIn: { source: 'connection "src" (Edit Connection)', target: 'connection "dst" (Edit Connection)' },
  };
}

async function report(pair: Pair, sourceUrl: string, targetUrl: string, subscription: string) {
  const target = await connect({ url: targetUrl, role: 'target' });
  const source = await connect({ url: sourceUrl, role: 'source' });
  try {
    return await readSyncReport(target, subscription, source);
  } finally {
    await Promise.all([target.end(), source.end()]);
  }
}

const SCHEMA = `
  CREATE TABLE items (id int PRIMARY KEY, name text, price numeric(10,2));
  CREATE TABLE notes (id bigserial PRIMARY KEY, body text);`;

describe('serve-ipc', () => {
  it('runs a sync over IPC: status to ready, logs, streaming; stop ends cleanly; report, resync and drop', async () => {
    const sub = 'ipc_main';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'ipc', SCHEMA);
    await pair.source.query(db, `
      INSERT INTO items SELECT g, 'item ' || g, g * 0.5 FROM generate_series(1, 3000) g;
      INSERT INTO notes (body) SELECT repeat('n', g % 40) FROM generate_series(1, 500) g;
      CREATE PUBLICATION pub FOR TABLE items, notes;`);

    // First run: copy both tables, then stream.
    const first = startEngine(options(sourceUrl, targetUrl, sub));
    const ready = await waitStatus(first, 'both tables ready', allReady(2));
    assert.equal(ready.subscription, sub);
    assert.deepEqual(ready.tables.map((t) => [t.table, t.rowsCopied]).sort(), [['items', 3000], ['notes', 500]]);
    assert.ok(ready.tables.every((t) => t.lsn !== null && /^[0-9A-F]+\/[0-9A-F]+$/.test(t.lsn)), JSON.stringify(ready.tables));
    const log = await waitMessage(first, 'a log message', (m): m is Extract<FromEngine, { type: 'log' }> => m.type === 'log');
    assert.ok((['debug', 'info', 'warn', 'error'] as LogLevel[]).includes(log.level) && log.message.length > 0);
    assert.ok(await sameContents(pair, db, 'items'), 'items after the copy');
    assert.ok(await sameContents(pair, db, 'notes'), 'notes after the copy');

    await pair.source.query(db, `INSERT INTO items VALUES (5001, 'streamed', 1.25); UPDATE items SET name = 'changed' WHERE id = 7;`);
    await waitFor('the streamed row on the target', async () => (await pair.target.query(db, `SELECT 1 FROM items WHERE id = 5001 AND name = 'streamed'`)).rowCount === 1);
    await waitCaughtUp(pair, db, sub);
    assert.ok(await sameContents(pair, db, 'items'), 'items after streaming');
    const streaming = await waitStatus(first, 'a streaming status with an applied LSN', (s) => s.phase === 'streaming' && s.appliedLsn !== null && s.changesApplied >= 2);
    assert.ok(streaming.transactionsApplied >= 1);

    const live = await report(pair, sourceUrl, targetUrl, sub);
    assert.ok(live, 'a report while running');
    assert.equal(live.running, true, 'the report sees the run holding the subscription');
    assert.equal(live.slotMissing, false);
    assert.equal(live.subscription.slotName, `pg_live_sync_${sub}`);
    assert.equal(live.slot?.active, true, 'the run streams from its slot');
    assert.equal(live.slot?.database, db);
    assert.equal(typeof live.lagBytes, 'number');
    assert.deepEqual(live.tables.map((t) => [t.table, t.state]), [['items', 'r'], ['notes', 'r']]);

    const stopped = await stopEngine(first);
    assert.deepEqual(stopped, { error: null, code: 0 }, first.describe());
    assert.ok(first.messages.some((m) => m.type === 'log' && /stopping/.test(m.message)), 'the stop is logged');

    const after1 = await report(pair, sourceUrl, targetUrl, sub);
    assert.ok(after1);
    assert.equal(after1.running, false, 'no run holds the subscription after the process ended');
    assert.notEqual(after1.subscription.consistentLsn, null);
    assert.notEqual(after1.subscription.appliedLsn, null);
    assert.equal(after1.subscription.lastError, null);
    assert.equal(after1.lagBytes !== null && after1.lagBytes >= 0, true);

    // Resync items: back to init while stopped; rows change on the source meanwhile.
    const target = await connect({ url: targetUrl, role: 'target' });
    try {
      assert.equal(await resetTableForResync(target, sub, { schema: 'public', table: 'items' }), true);
      assert.equal(await resetTableForResync(target, sub, { schema: 'public', table: 'no_such_table' }), false);
    } finally {
      await target.end();
    }
    assert.deepEqual(await tableStates(pair.target, db, sub), { 'public.items': 'i', 'public.notes': 'r' });
    // The target's copy diverges meanwhile: the resync must replace it, not add to it.
    await pair.target.query(db, `INSERT INTO items VALUES (-1, 'stale on the target', 0)`);
    await pair.source.query(db, `
      INSERT INTO items SELECT g, 'meanwhile ' || g, 2 FROM generate_series(6001, 6500) g;
      DELETE FROM items WHERE id BETWEEN 100 AND 199;
      INSERT INTO notes (body) VALUES ('while stopped');`);

    const second = startEngine(options(sourceUrl, targetUrl, sub));
    // More rows while the second run copies and catches up.
    await pair.source.query(db, `INSERT INTO items SELECT g, 'during ' || g, 3 FROM generate_series(7001, 7200) g; UPDATE items SET price = 9 WHERE id = 5001;`);
    const recopied = await waitStatus(second, 'items ready again', allReady(2));
    const items = recopied.tables.find((t) => t.table === 'items')!;
    assert.ok(items.rowsCopied >= 3000, `items copied afresh: ${items.rowsCopied} rows`);
    await pair.source.query(db, `INSERT INTO items VALUES (8001, 'after the resync', 4)`);
    await waitCaughtUp(pair, db, sub);
    const [src, dst] = await Promise.all([tableFingerprint(pair.source, db, 'items'), tableFingerprint(pair.target, db, 'items')]);
    assert.deepEqual(dst, src, 'items on the target are exactly the source rows, each once');
    assert.equal(src.rows, 3000 + 1 + 500 - 100 + 200 + 1);
    const dupes = await pair.target.query(db, `SELECT count(*)::int AS n FROM (SELECT id FROM items GROUP BY id HAVING count(*) > 1) d`);
    assert.equal(dupes.rows[0].n, 0);
    assert.ok(await sameContents(pair, db, 'notes'), 'notes kept streaming');
    assert.deepEqual(await tableStates(pair.target, db, sub), { 'public.items': 'r', 'public.notes': 'r' });
    assert.deepEqual(await stopEngine(second), { error: null, code: 0 }, second.describe());

    // Drop: the slot goes from the source and the state from the target; the target data stays.
    const logged: string[] = [];
    const ep = (url: string, role: string): Endpoint => ({ url, role });
    await dropSync(ep(sourceUrl, 'source'), ep(targetUrl, 'target'), sub, (_level, message) => logged.push(message));
    const slots = await pair.source.query(db, `SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE $1`, [`pg_live_sync_${sub}%`]);
    assert.deepEqual(slots.rows, []);
    assert.equal(await report(pair, sourceUrl, targetUrl, sub), null, 'no state left for the subscription');
    assert.deepEqual(await tableStates(pair.target, db, sub), {});
    assert.ok(logged.some((l) => l.includes(`dropped replication slot "pg_live_sync_${sub}"`)), logged.join('\n'));
    assert.equal((await tableFingerprint(pair.target, db, 'items')).rows, src.rows, 'the target data stays');
  });

  it('lag in bytes under a real backlog is the WAL the source wrote past what the target applied', { timeout: 180_000 }, async () => {
    const sub = 'ipc_lag';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'ipclag', SCHEMA);
    await pair.source.query(db, `CREATE PUBLICATION pub FOR TABLE items, notes;`);
    const child = startEngine(options(sourceUrl, targetUrl, sub));
    const blocker = new pg.Client({ connectionString: pair.target.url(db) });
    await blocker.connect();
    try {
      await waitStatus(child, 'both tables ready', allReady(2));
      // The target stalls on a lock while the source writes about 32 MiB in 64 transactions.
      await blocker.query('BEGIN; LOCK TABLE notes IN ACCESS EXCLUSIVE MODE');
      const start = (await pair.source.query(db, `SELECT pg_current_wal_lsn()::text AS lsn`)).rows[0].lsn as string;
      for (let i = 0; i < 64; i++) await pair.source.query(db, `INSERT INTO notes (body) SELECT repeat(md5(g::text), 16) FROM generate_series(1, 1000) g`);
      const written = Number((await pair.source.query(db, `SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)::bigint AS n`, [start])).rows[0].n);
      assert.ok(written > 30 * 2 ** 20, `wrote ${written} bytes of WAL`);
      // Before the fix the engine took the WAL end from the records it had received: a few MiB at most.
      const behind = await waitStatus(child, 'lag in bytes near the WAL written', (st) => st.lagBytes !== null && st.lagBytes >= written * 0.9);
      assert.ok(behind.lagBytes! <= written * 1.5, `lag ${behind.lagBytes} for ${written} bytes written`);
      await blocker.query('ROLLBACK');
      await waitCaughtUp(pair, db, sub, 120_000);
      await waitStatus(child, 'lag back under 1 MiB once applied', (st) => st.lagBytes !== null && st.lagBytes < 2 ** 20);
    } finally {
      await blocker.end().catch(() => undefined);
      await stopEngine(child);
    }
  });

  it('a start with a wrong target password: one exit error line without the password, exit code 1', async () => {
    const { db, sourceUrl } = await freshDatabases(pair, 'ipcpw', SCHEMA);
    await pair.source.query(db, `CREATE PUBLICATION pub FOR TABLE items`);
    const wrong = 'N0t:the-pw@/ü';
    const child = startEngine(options(sourceUrl, pair.target.url(db, 'postgres', wrong), 'ipc_badpw'));
    const code = await child.exited;
    const exit = child.messages.find((m): m is Extract<FromEngine, { type: 'exit' }> => m.type === 'exit');
    assert.ok(exit, `an exit message\n${child.describe()}`);
    assert.equal(code, 1, child.describe());
    assert.ok(exit.error, 'exit carries the error');
    assert.doesNotMatch(exit.error, /\n/);
    assert.match(exit.error, /password authentication failed/);
    assert.match(exit.error, /connection "dst" \(Edit Connection\)/);
    for (const secret of [wrong, encodeURIComponent(wrong)]) {
      assert.ok(!exit.error.includes(secret), `exit error leaks the password: ${exit.error}`);
      assert.ok(!child.stderr().includes(secret), 'stderr leaks the password');
      assert.ok(!JSON.stringify(child.messages).includes(secret), 'a message leaks the password');
    }
  });

  it('stops the run when the extension goes away (the IPC channel closes)', async () => {
    const sub = 'ipc_gone';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'ipcgone', SCHEMA);
    await pair.source.query(db, `INSERT INTO items VALUES (1, 'a', 1); CREATE PUBLICATION pub FOR TABLE items`);
    const child = startEngine(options(sourceUrl, targetUrl, sub));
    await waitStatus(child, 'items ready', allReady(1));
    child.proc.disconnect();
    const deadline = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 15_000).unref());
    assert.equal(await Promise.race([child.exited, deadline]), 0, child.describe());
    const r = await report(pair, sourceUrl, targetUrl, sub);
    assert.equal(r?.running, false);
  });

  it('refuses to run without an IPC channel (usage error, exit 2)', async () => {
    const r = await runCli(['serve-ipc'], {}, 20_000);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /serve-ipc is started by the VS Code extension/);
  });

  it('changes that find no row on the target are counted per table: status messages, the target\'s state, status and status --json (which suggest verify)', async () => {
    const sub = 'ipc_missing';
    const { db, sourceUrl, targetUrl } = await freshDatabases(pair, 'ipcmiss', SCHEMA);
    await pair.source.query(db, `INSERT INTO items SELECT g, 'item ' || g, g FROM generate_series(1, 20) g; CREATE PUBLICATION pub FOR TABLE items`);
    const child = startEngine(options(sourceUrl, targetUrl, sub));
    await waitStatus(child, 'items ready', allReady(1));
    // Rows emptied on the target behind the sync's back.
    await pair.target.query(db, `DELETE FROM items WHERE id <= 5`);
    await pair.source.query(db, `BEGIN; UPDATE items SET name = 'gone' WHERE id <= 3; DELETE FROM items WHERE id IN (4, 5); UPDATE items SET name = 'here' WHERE id = 10; COMMIT`);
    await pair.source.query(db, `UPDATE items SET name = 'gone again' WHERE id = 1`);
    const items = (s: StatusJson) => s.tables.find((t) => t.table === 'items');
    const counted = await waitStatus(child, '4 updates and 2 deletes without a row counted', (s) => items(s)?.missingUpdates === 4 && items(s)?.missingDeletes === 2);
    assert.equal(items(counted)?.lastError, null);
    const state = await pair.target.query(db, `SELECT missing_updates::int AS u, missing_deletes::int AS d FROM _pg_live_sync.subscription_rel WHERE subname = $1`, [sub]);
    assert.deepEqual(state.rows, [{ u: 4, d: 2 }]);
    assert.equal((await pair.target.query(db, `SELECT name FROM items WHERE id = 10`)).rows[0].name, 'here', 'the other change of the transaction applied');
    assert.deepEqual(await stopEngine(child), { error: null, code: 0 });

    const json = await runCli(['status', '--subscription', sub, '--target', targetUrl, '--json']);
    assert.equal(json.code, 0, json.stderr);
    const parsed = JSON.parse(json.stdout);
    assert.equal(parsed.tables[0].missingUpdates, 4);
    assert.equal(parsed.tables[0].missingDeletes, 2);
    assert.ok(parsed.warnings.some((w: string) => /4 updates and 2 deletes of "public"\."items" found no row on the target.*pg-live-sync verify --subscription ipc_missing --table '"public"\."items"'/.test(w)), json.stdout);
    const text = await runCli(['status', '--subscription', sub, '--target', targetUrl]);
    assert.match(text.stdout, /^warning {6}4 updates and 2 deletes of "public"\."items" found no row on the target.*pg-live-sync verify/m, text.stdout);
    assert.match(text.stdout, /NO ROW \(UPD\/DEL\)/);
    assert.match(text.stdout, /"public"\."items" .* 4 \/ 2/, text.stdout);
  });
});
