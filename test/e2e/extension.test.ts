/**
 * End to end, as a new user: the packaged extension (vsix) in a real VS Code (code-server) driven
 * by headless Chromium, against throwaway PostgreSQL 15 clusters. Connections are added through
 * the UI with the password typed into the password prompt; SQL is generated, reviewed and run
 * from editors; a sync is started, watched to `ready`, fed a row, stopped and dropped; at the
 * end no slot is left on the source and no password is in any file VS Code wrote.
 *
 * The steps depend on each other: after a failing step the later ones are skipped (the suite has
 * failed already). Screenshots of every step: test-artifacts/e2e/ (see test/e2e/README.md).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, lstatSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it, type TestContext } from 'node:test';
import { PASSWORD, serverBinariesMissing, startCluster, type Cluster } from '../harness/cluster';
import { alive, finish, freshDatabases, tail, runCli, startCli, startPair, waitAllReady, type CliRun, type Pair } from '../harness/sync';
import { ARTIFACTS, REPO, SLOW_TIMEOUT, UI_TIMEOUT, ensureSetup, packageExtension, poll, startWorkbench, type Workbench } from './workbench';

const SYNC = 'e2e_sync';
const CLI_SYNC = 'cli_sync';
const TABLES = ['customers', 'audit_log', 'events', 'orders'];
const SLOT = `pg_live_sync_${SYNC}`;
/** The initial copy and the first streamed change of three small tables: seconds; bounded generously. */
const SYNC_TIMEOUT = 120_000;

const SCHEMA = `
  CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
  -- no primary key, no unique index: only REPLICA IDENTITY FULL can identify its rows
  CREATE TABLE audit_log (at timestamptz NOT NULL DEFAULT now(), message text);
  -- no primary key, but a unique index over NOT NULL columns: REPLICA IDENTITY USING INDEX
  CREATE TABLE events (code text NOT NULL, seq int NOT NULL, payload text, CONSTRAINT events_code_seq_key UNIQUE (code, seq));
  CREATE TABLE orders (id int PRIMARY KEY, customer int NOT NULL, amount numeric(12,2) NOT NULL, note text);
`;
/**
 * On the target only: orders' copy pauses 40 ms every 1,000 rows (8 s in all) (an ALWAYS trigger fires even
 * under session_replication_role = replica), so the panel can be seen mid-copy on any machine.
 */
const TARGET_SLOW_COPY = `
  CREATE FUNCTION slow_copy() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    IF NEW.id % 1000 = 0 THEN PERFORM pg_sleep(0.04); END IF;
    RETURN NEW;
  END $$;
  CREATE TRIGGER slow_copy BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION slow_copy();
  ALTER TABLE orders ENABLE ALWAYS TRIGGER slow_copy;
`;
const SOURCE_DATA = `
  INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 50) g;
  INSERT INTO audit_log (message) SELECT 'entry ' || g FROM generate_series(1, 20) g;
  INSERT INTO events SELECT 'ev', g, 'payload ' || g FROM generate_series(1, 30) g;
  INSERT INTO orders SELECT g, g % 50 + 1, (g % 1000) / 10.0, 'order ' || g FROM generate_series(1, 200000) g;
  ANALYZE orders;
  CREATE PUBLICATION shop_pub FOR TABLE customers, audit_log, events, orders;
`;

// The first run on a machine installs code-server (3 minutes on a quiet 2-core machine, 10 or more on a busy one).
describe('e2e: Postgres Live Sync in VS Code (code-server + Chromium)', { timeout: 45 * 60_000 }, () => {
  let pair: Pair | undefined;
  let walReplica: Cluster | undefined;
  let db = '';
  let folder = '';
  let wb: Workbench | undefined;
  let failedStep: string | undefined;
  let cliRun: CliRun | undefined;

  const w = () => {
    if (!wb) throw new Error('the workbench did not start');
    return wb;
  };
  const src = () => pair!.source;
  const tgt = () => pair!.target;
  const uri = (c: Cluster, database: string) => `postgresql://postgres@127.0.0.1:${c.port}/${database}?sslmode=disable`;

  /** One scenario step: screenshot afterwards (marked FAILED on failure); later steps skip after a failure. */
  const step = (name: string, body: (t: TestContext) => Promise<void>, timeout = 3 * 60_000) =>
    it(name, { timeout }, async (t) => {
      if (failedStep) {
        t.skip(`step "${failedStep}" failed`);
        return;
      }
      // Set until the step succeeds: a step that times out never reaches the catch below.
      failedStep = name;
      try {
        await body(t);
        if (wb) await wb.screenshot(name);
        failedStep = undefined;
      } catch (err) {
        if (wb) t.diagnostic(`screenshot: ${await wb.screenshot(`${name}-FAILED`)}`);
        throw err;
      }
    });

  // Setup is the first step, not a before(): a failing before() cancels every test and the summary
  // reads `# fail 0 # cancelled 25`; a failing step reads as a failure, and the rest skip.
  step('set up: code-server, Chromium, clusters, the packaged extension', async () => {
    const missing = serverBinariesMissing();
    if (missing) throw new Error(missing);
    ensureSetup();
    const vsix = packageExtension();
    const clusters = Promise.all([startPair(), startCluster({ name: 'walreplica', walLevel: 'replica' })]);
    [pair, walReplica] = await clusters;
    ({ db } = await freshDatabases(pair, 'shop', SCHEMA));
    await pair.source.query(db, SOURCE_DATA);
    await pair.target.query(db, TARGET_SLOW_COPY);
    folder = mkdtempSync(path.join(os.tmpdir(), 'pgls-e2e-workspace-'));
    const diagnostics = path.join(ARTIFACTS, 'diagnostics.jsonl');
    rmSync(diagnostics, { force: true });
    wb = await startWorkbench({ vsix, folder, env: { PG_LIVE_SYNC_DIAGNOSTICS_FILE: diagnostics } });
  }, 25 * 60_000);

  after(async () => {
    // Everything goes, whatever failed; a sync left running is killed with code-server's process group.
    if (cliRun && alive(cliRun)) cliRun.proc.kill('SIGKILL');
    await wb?.close().catch((err) => console.error('closing the workbench:', err));
    pair?.stop();
    walReplica?.stop();
    if (folder) rmSync(folder, { recursive: true, force: true });
  });

  step('open the view: welcome offers Add Connection', async () => {
    await w().openViewContainer();
    const welcome = w().page.locator('.pane-body .welcome-view-content', { hasText: /No PostgreSQL connections yet/ });
    await welcome.waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
    await welcome.getByRole('button', { name: 'Add Connection' }).waitFor({ state: 'visible' });
  });

  step('add the source connection (welcome button, URI, password prompt, workspace settings)', async () => {
    const page = w().page;
    await page.locator('.pane-body .welcome-view-content').getByRole('button', { name: 'Add Connection' }).click();
    await w().answerInput('source', /Connection name/);
    await w().pick('Connection URI', /How to connect/);
    await w().answerInput(uri(src(), db), /libpq URI/);
    await w().answerInput(PASSWORD, /Password/);
    await w().pick('Workspace settings', /Save in/);
    const note = await w().waitForNotification(/Connected to source/);
    assert.match(note, /wal_level logical/);
    const item = w().treeItem('Connections', /^source\b/);
    await item.waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
    assert.equal((await w().itemText(item)).description, `127.0.0.1:${src().port}/${db}`);
  });

  step('the getting-started walkthrough opened on first activation', async () => {
    const page = w().page;
    await page.getByText('Get started with Postgres Live Sync').first().waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
    for (const title of ['Add the source and the target', 'Start the sync']) {
      await page.locator('.getting-started-step', { hasText: title }).first().waitFor({ state: 'attached', timeout: UI_TIMEOUT });
    }
  });

  step('add the target connection (command palette, user settings)', async () => {
    await w().runCommand('Add Connection');
    await w().answerInput('target', /Connection name/);
    await w().pick('Connection URI', /How to connect/);
    await w().answerInput(uri(tgt(), db), /libpq URI/);
    await w().answerInput(PASSWORD, /Password/);
    await w().pick('User settings', /Save in/);
    await w().waitForNotification(/Connected to target/);
    await w().treeItem('Connections', /^target\b/).waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
  });

  step('expand source > publication > tables: identities as they stand', async () => {
    await w().expand(w().treeItem('Connections', /^source\b/));
    const pub = w().treeItem('Connections', /^shop_pub\b/);
    await pub.waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
    assert.match((await w().itemText(pub)).description, /^4 tables/);
    await w().expand(pub);
    await waitDescription('Connections', 'public.customers', /^primary key$/);
    await waitDescription('Connections', 'public.audit_log', /^none$/);
    await waitDescription('Connections', 'public.events', /^none$/);
  });

  step('Generate Tuning SQL on a server with wal_level replica', async () => {
    await addConnection('walreplica', uri(walReplica!, 'postgres'), 'User settings');
    await w().clearNotifications();
    await w().runCommand('Generate Tuning SQL');
    await w().pick('walreplica', /connection/i);
    const text = await w().waitForEditorText(/ALTER SYSTEM SET wal_level = 'logical'/);
    assert.match(text, /restart/i, 'the tuning SQL says wal_level needs a restart');
  });

  step('Generate Replica Identity SQL for the publication (tree context menu)', async () => {
    await w().contextMenu(w().treeItem('Connections', /^shop_pub\b/), /Generate Replica Identity SQL/);
    const text = await w().waitForEditorText(/REPLICA IDENTITY USING INDEX/);
    assert.match(text, /ALTER TABLE "?public"?\."?audit_log"? REPLICA IDENTITY FULL;/);
    assert.match(text, /ALTER TABLE "?public"?\."?events"? REPLICA IDENTITY USING INDEX "?events_code_seq_key"?;/);
    assert.doesNotMatch(text, /ALTER TABLE "?public"?\."?customers"?/, 'a table with a primary key needs no change');
  });

  step('Run SQL on Connection: the source, confirmed with Run', async () => {
    await w().clearNotifications();
    await w().runCommand('Run SQL on Connection');
    await w().pick('source', /connection/i);
    const question = await w().clickDialogButton('Run');
    assert.match(question, /Run 2 statements on source/);
    await w().waitForNotification(/Ran 2 statements on source/);
    // One `-- ok: <statement>` line per statement.
    const results = await w().waitForEditorText(/^-- ok: .*REPLICA IDENTITY USING INDEX/m);
    assert.equal(results.match(/^-- ok: ALTER TABLE .*REPLICA IDENTITY (FULL|USING INDEX)/gm)?.length, 2, results);
    assert.doesNotMatch(results, /ERROR/, results);
    const r = await src().query(db, `SELECT relname, relreplident FROM pg_class WHERE relname IN ('audit_log', 'events') ORDER BY 1`);
    assert.deepEqual(r.rows.map((x) => `${x.relname}:${x.relreplident}`), ['audit_log:f', 'events:i']);
  });

  step('the tree shows the new replica identities', async (t) => {
    // Run SQL refreshes the Connections tree itself (ui contract); Refresh is the user's fallback.
    const refreshedAlone = await waitDescription('Connections', 'public.audit_log', /^full$/, 10_000).then(() => true, () => false);
    if (!refreshedAlone) {
      t.diagnostic('the Connections tree did not refresh by itself after Run SQL; clicking Refresh');
      await w().viewAction('Connections', 'Refresh');
      await w().expand(w().treeItem('Connections', /^source\b/));
      await w().expand(w().treeItem('Connections', /^shop_pub\b/));
    }
    await waitDescription('Connections', 'public.audit_log', /^full$/);
    await waitDescription('Connections', 'public.events', /^index events_code_seq_key$/);
    await waitDescription('Connections', 'public.customers', /^primary key$/);
    assert.ok(refreshedAlone, 'after Run SQL the Connections tree should refresh by itself (it needed Refresh)');
  });

  step('Start Sync: source > target, shop_pub, e2e_sync, copy then stream', async () => {
    await w().clearNotifications();
    await w().runCommand('Start Sync');
    await w().pick('source', /source connection/i);
    await w().pick('target', /target connection/i);
    await w().pickMany(['shop_pub'], /publications/i);
    await w().answerInput(SYNC, /sync name/i);
    await w().answerInput('', /table map/i);
    await w().answerInput('4', /table sync workers/i);
    await w().pick('Copy existing rows, then stream changes', /initial copy/i);
    await w().treeItem('Syncs', new RegExp(`^${SYNC}\\b`)).waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
  });

  step('the progress panel shows the copy as it happens', async () => {
    await w().runCommand('Show Sync Progress');
    const panel = panelFrame();
    const orders = panel.locator(`[data-table-key='"public"."orders"']`);
    await poll('orders copying with rows counted in the panel', async () => {
      const state = await orders.locator('[data-col="state"]').getAttribute('data-state-code', { timeout: 1_000 }).catch(() => null);
      const rows = Number(await orders.locator('[data-col="rows"]').getAttribute('data-rows-copied', { timeout: 1_000 }).catch(() => '0'));
      return state === 'd' && rows > 0;
    }, SYNC_TIMEOUT, 100);
    assert.equal(await panel.locator('#sync-activity').getAttribute('data-activity'), 'copying');
    const approx = Number(await orders.locator('[data-col="rows"]').getAttribute('data-approximate-rows'));
    assert.ok(approx >= 190_000 && approx <= 210_000, `the panel shows the planner's estimate for orders (${approx})`);
    await saveReadmeScreenshot('panel-copying');
  }, SYNC_TIMEOUT + 60_000);

  step('every table reaches ready (Syncs view and Connections tree)', async () => {
    for (const table of TABLES.map((t) => `public.${t}`)) {
      await waitDescription('Syncs', table, /^ready$/, SYNC_TIMEOUT);
    }
    const sync = w().treeItem('Syncs', new RegExp(`^${SYNC}\\b`));
    await poll('the sync to be streaming', async () => /^streaming/.test((await w().itemText(sync)).description), SLOW_TIMEOUT, 200,
      async () => `sync item: ${JSON.stringify(await w().itemText(sync))}`);
    await waitDescription('Connections', 'public.customers', /^primary key · ready\b/, SLOW_TIMEOUT);
    for (const t of TABLES) {
      const [a, b] = await Promise.all([src().query(db, `SELECT count(*)::int AS n FROM ${t}`), tgt().query(db, `SELECT count(*)::int AS n FROM ${t}`)]);
      assert.equal(b.rows[0].n, a.rows[0].n, `${t}: target rows after the copy`);
    }
  }, SYNC_TIMEOUT + 2 * 60_000);

  step('a row inserted on the source arrives on the target', async () => {
    await src().query(db, `INSERT INTO customers VALUES (1001, 'inserted during the e2e test')`);
    await src().query(db, `UPDATE audit_log SET message = 'updated (FULL identity)' WHERE message = 'entry 7'`);
    await poll('the inserted row on the target', async () =>
      (await tgt().query(db, `SELECT 1 FROM customers WHERE id = 1001 AND name = 'inserted during the e2e test'`)).rowCount === 1, SYNC_TIMEOUT, 200);
    await poll('the FULL-identity update on the target', async () =>
      (await tgt().query(db, `SELECT 1 FROM audit_log WHERE message = 'updated (FULL identity)'`)).rowCount === 1, SYNC_TIMEOUT, 200);
    // While it runs: no process code-server started carries the password in its arguments or environment.
    assert.deepEqual(processesShowingPassword(), [], 'processes with the password in their command line or environment');
  }, SYNC_TIMEOUT + 60_000);

  step('the panel matches the target state table: states, counts, lag', async () => {
    await w().runCommand('Show Sync Progress');
    const panel = panelFrame();
    await poll('the panel to show streaming with no lag', async () =>
      (await panel.locator('#sync-activity').getAttribute('data-activity', { timeout: 1_000 }).catch(() => null)) === 'streaming' &&
      (await panel.locator('#lag-bytes').getAttribute('data-lag-bytes', { timeout: 1_000 }).catch(() => null)) === '0', SLOW_TIMEOUT, 200);
    const state = await tgt().query(db, `SELECT '"' || schemaname || '"."' || tablename || '"' AS key, state, rows_copied::bigint AS rows FROM _pg_live_sync.subscription_rel WHERE subname = $1 ORDER BY 1`, [SYNC]);
    assert.equal(state.rowCount, TABLES.length);
    for (const row of state.rows) {
      const r = panel.locator(`[data-table-key='${row.key}']`);
      assert.equal(await r.locator('[data-col="state"]').getAttribute('data-state-code'), row.state, `${row.key}: state`);
      assert.equal(await r.locator('[data-col="state"]').textContent().then((t) => t?.trim()), row.state === 'r' ? 'ready' : row.state, `${row.key}: state word`);
      assert.equal(Number(await r.locator('[data-col="rows"]').getAttribute('data-rows-copied')), Number(row.rows), `${row.key}: rows copied`);
    }
    // The panel shows the engine's state of a moment ago (status each second, at most four
    // updates a second): it must reach the target's committed position, and not pass the source's.
    let shown: string | null = null;
    await poll(`the panel's applied LSN to reach the target's applied_lsn`, async () => {
      shown = await panel.locator('#applied-lsn').getAttribute('data-lsn', { timeout: 1_000 }).catch(() => null);
      if (!shown) return false;
      const cmp = await tgt().query(db, `SELECT $1::pg_lsn >= applied_lsn AS reached FROM _pg_live_sync.subscription WHERE subname = $2`, [shown, SYNC]);
      return cmp.rows[0].reached === true;
    }, SLOW_TIMEOUT, 200, async () => `panel shows ${shown}`);
    const notPast = await src().query('postgres', `SELECT $1::pg_lsn <= pg_current_wal_lsn() AS ok`, [shown]);
    assert.equal(notPast.rows[0].ok, true, `the panel's applied LSN ${shown} is not past the source's WAL`);
    await saveReadmeScreenshot('panel-streaming');
  });

  step('Guided Cutover while streaming: writes stopped, caught up, sequences, verify, then the sync kept; List Sync Slots', async () => {
    await w().runCommand('Guided Cutover');
    assert.match(await w().clickDialogButton('Writes Are Stopped'), new RegExp(`Cutover of sync ${SYNC} \\(1/5\\): stop writes`));
    // The report of verify opens in an editor once every table has been compared.
    await w().waitForEditorText(new RegExp(`verify: ${TABLES.length} tables, 0 chunks differing`), SLOW_TIMEOUT);
    assert.match(await w().clickDialogButton('Keep Sync'), /\(5\/5\): ready/);
    await w().waitForNotification(new RegExp(`Cutover of sync ${SYNC} stopped before the drop`));
    const slots = await src().query('postgres', `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, [SLOT]);
    assert.deepEqual(slots.rows, [{ active: true }], 'the sync goes on');
    // The slots on the source, with the sync that owns each.
    await w().runCommand('List Sync Slots');
    await w().pick('source', /List Sync Slots/);
    await w().waitForEditorText(new RegExp(`-- ${SLOT} +yes .*subscription ${SYNC} on target`));
    await w().runCommand('Show Sync Progress');
  });

  step('pause and resume from the panel', async () => {
    const panel = panelFrame();
    await panel.locator('#action-pause').click();
    await poll('the panel to say paused', async () => (await panel.locator('#sync-activity').getAttribute('data-activity', { timeout: 1_000 }).catch(() => null)) === 'paused', SLOW_TIMEOUT, 200);
    await poll('the slot to be released while paused', async () =>
      (await src().query('postgres', `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, [SLOT])).rows[0]?.active === false, SLOW_TIMEOUT, 200);
    await src().query(db, `INSERT INTO customers VALUES (1002, 'inserted while paused')`);
    assert.equal((await tgt().query(db, `SELECT 1 FROM customers WHERE id = 1002`)).rowCount, 0, 'nothing is applied while paused');
    await panel.locator('#action-resume').click();
    await poll('the row inserted while paused to arrive after resume', async () =>
      (await tgt().query(db, `SELECT 1 FROM customers WHERE id = 1002`)).rowCount === 1, SYNC_TIMEOUT, 200);
    await poll('the panel to say streaming again', async () => (await panel.locator('#sync-activity').getAttribute('data-activity', { timeout: 1_000 }).catch(() => null)) === 'streaming', SLOW_TIMEOUT, 200);
  }, SYNC_TIMEOUT + 60_000);

  step('resync one table from the panel', async () => {
    // Drift on the target that only a fresh copy repairs.
    await tgt().query(db, `DELETE FROM customers WHERE id <= 10`);
    const panel = panelFrame();
    await panel.locator(`[data-table-key='"public"."customers"'] [data-action="resync"]`).click();
    const question = await w().clickDialogButton('Resync');
    assert.match(question, /"public"\."customers"/);
    await poll('customers copied afresh (the drifted rows are back)', async () =>
      (await tgt().query(db, `SELECT count(*)::int AS n FROM customers WHERE id <= 10`)).rows[0].n === 10, SYNC_TIMEOUT, 200);
    await poll('customers ready again in the state table and the panel', async () => {
      const st = await tgt().query(db, `SELECT state FROM _pg_live_sync.subscription_rel WHERE subname = $1 AND tablename = 'customers'`, [SYNC]);
      const shown = await panel.locator(`[data-table-key='"public"."customers"'] [data-col="state"]`).getAttribute('data-state-code', { timeout: 1_000 }).catch(() => null);
      return st.rows[0]?.state === 'r' && shown === 'r';
    }, SYNC_TIMEOUT, 200);
    const [a, b] = await Promise.all([src().query(db, `SELECT count(*)::int AS n FROM customers`), tgt().query(db, `SELECT count(*)::int AS n FROM customers`)]);
    assert.equal(b.rows[0].n, a.rows[0].n, 'customers on the target after the resync');
    const slots = await src().query('postgres', `SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'pgls\_%'`);
    assert.deepEqual(slots.rows, [], 'the resync dropped its table-sync slot');
  }, SYNC_TIMEOUT + 60_000);

  step('reloading the window stops the sync gracefully, restores the panel and offers to resume', async () => {
    await w().clearNotifications();
    await w().runCommand('Developer: Reload Window', '', { reloads: true });
    // The old extension host stops the engine (a commit, then the slot is released) ...
    await poll('the slot to be released by the closing window', async () =>
      (await src().query('postgres', `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, [SLOT])).rows[0]?.active === false, SLOW_TIMEOUT, 100);
    const sub = await tgt().query(db, `SELECT last_error FROM _pg_live_sync.subscription WHERE subname = $1`, [SYNC]);
    assert.equal(sub.rows[0].last_error, null, 'a graceful stop leaves no error on the target');
    // ... the new window brings the panel back (serializer) and offers to resume.
    await w().page.locator('.monaco-workbench').waitFor({ state: 'visible', timeout: SLOW_TIMEOUT });
    await poll('the panel restored after the reload', async () =>
      ((await panelFrame().locator('#sync-name').textContent({ timeout: 1_000 }).catch(() => null)) ?? '').trim() === SYNC, SLOW_TIMEOUT, 200);
    await w().waitForNotification(/was running when this window closed/);
    await src().query(db, `INSERT INTO customers VALUES (1003, 'inserted while VS Code was closed')`);
    await w().page.locator('.notification-toast', { hasText: /was running when this window closed/ }).getByRole('button', { name: 'Resume' }).click();
    await poll('the row inserted while closed to arrive after Resume', async () =>
      (await tgt().query(db, `SELECT 1 FROM customers WHERE id = 1003`)).rowCount === 1, SYNC_TIMEOUT, 200);
    await poll('the restored panel to say streaming', async () =>
      (await panelFrame().locator('#sync-activity').getAttribute('data-activity', { timeout: 1_000 }).catch(() => null)) === 'streaming', SLOW_TIMEOUT, 200);
  }, SYNC_TIMEOUT + 2 * 60_000);

  step('Stop Sync', async () => {
    await w().clearNotifications();
    await w().runCommand('Stop Sync');
    await poll('the slot to be released (the engine stopped)', async () => {
      const r = await src().query('postgres', `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, [SLOT]);
      return r.rowCount === 1 && r.rows[0].active === false;
    }, SLOW_TIMEOUT, 200);
    const sync = w().treeItem('Syncs', new RegExp(`^${SYNC}\\b`));
    await poll('the Syncs view to show the sync stopped', async () => /stopped/.test((await w().itemText(sync)).description), SLOW_TIMEOUT, 200,
      async () => `sync item: ${JSON.stringify(await w().itemText(sync))}`);
  });

  // A p99 is read only over 8 s of samples or more (at the 10 ms resolution, 800): the run resumed
  // after the reload lasts about 3 s (300 samples, so its "p99" is its 3rd-worst sample) while the
  // new window loads on the same 2 cores, where the host was seen idle with its timers 50-60 ms late
  // (OS scheduling, not JavaScript: a CPU profile showed it idle). Shorter reports must not freeze.
  step('the extension host stayed responsive during the sync (event-loop delay p99 < 50 ms, no stall of 300 ms)', async (t) => {
    const file = path.join(ARTIFACTS, 'diagnostics.jsonl');
    const lines = await poll('event-loop figures in the diagnostics file', async () => {
      if (!existsSync(file)) return false;
      const all = readFileSync(file, 'utf8').trim().split('\n').filter(Boolean).map((x) => JSON.parse(x) as { at: string; stallMs?: number; eventLoopDelayMs?: { p99: number; max: number; samples: number } });
      return all.some((x) => x.eventLoopDelayMs) ? all : false;
    }, SLOW_TIMEOUT, 200);
    const stalls = lines.filter((l) => l.stallMs !== undefined).map((l) => `${l.at} ${l.stallMs} ms`);
    if (stalls.length > 0) t.diagnostic(`stalls of 40 ms or more (match them with test-artifacts/e2e/logs): ${stalls.join(', ')}`);
    for (const l of lines) {
      if (!l.eventLoopDelayMs) continue;
      const { p99, max, samples } = l.eventLoopDelayMs;
      t.diagnostic(`${l.at}: p99 ${p99} ms, max ${max} ms, ${samples} samples`);
      if (samples >= 800) assert.ok(p99 < 50, `extension host event-loop delay p99 ${p99} ms over ${samples} samples (max ${max} ms)`);
      assert.ok(max < 300, `extension host event loop stalled ${max} ms`);
    }
    assert.ok(lines.some((l) => (l.eventLoopDelayMs?.samples ?? 0) >= 800), 'a report of 8 s or more of syncing (the copy)');
  });

  step('Drop Sync (confirmed with Drop): no slot left on the source', async () => {
    await w().runCommand('Drop Sync');
    const question = await w().clickDialogButton('Drop');
    assert.match(question, new RegExp(`Drop sync ${SYNC}\\?`));
    await w().waitForNotification(new RegExp(`Dropped sync ${SYNC}`));
    const slots = await src().query('postgres', `SELECT slot_name FROM pg_replication_slots`);
    assert.deepEqual(slots.rows.map((r) => r.slot_name), [], `slots left on the source (${SLOT} must be gone)`);
    await w().treeItem('Syncs', new RegExp(`^${SYNC}\\b`)).waitFor({ state: 'detached', timeout: SLOW_TIMEOUT });
  });

  step('attach read-only to a sync the CLI runs: Syncs view and panel from the target state', async () => {
    const cliDb = `${db}_cli`;
    await tgt().createDatabase(cliDb);
    await tgt().query(cliDb, SCHEMA);
    const url = (c: Cluster, database: string) => `postgresql://postgres:${encodeURIComponent(PASSWORD)}@127.0.0.1:${c.port}/${database}`;
    cliRun = startCli(['run', '--source', url(src(), db), '--target', url(tgt(), cliDb), '--publication', 'shop_pub', '--subscription', CLI_SYNC]);
    await waitAllReady(tgt(), cliDb, CLI_SYNC, TABLES.length, SYNC_TIMEOUT);
    await addConnection('cli target', uri(tgt(), cliDb), 'User settings');
    await w().runCommand('Attach to Sync (Read-Only)');
    await w().pick('cli target', /target connection/i);
    await w().pick(CLI_SYNC, /sync/i);
    await w().pick('source', /source connection/i);
    const item = w().treeItem('Syncs', new RegExp(`^${CLI_SYNC}\\b`));
    await poll('the attached sync streaming in the Syncs view', async () =>
      (await item.isVisible()) && /streaming.*\(attached\)/.test((await w().itemText(item)).description), SLOW_TIMEOUT, 200,
      async () => `item: ${JSON.stringify(await w().itemText(item).catch(() => null))}`);
    await w().runCommand('Show Sync Progress');
    const panel = panelFrame();
    await poll('the attached panel', async () => (await panel.locator('#sync-mode').getAttribute('data-mode', { timeout: 1_000 }).catch(() => null)) === 'attached', SLOW_TIMEOUT, 200);
    assert.match((await panel.locator('#action-pause').getAttribute('class')) ?? '', /is-hidden/, 'an attached sync cannot be paused from here');
    await src().query(db, `INSERT INTO customers VALUES (1004, 'streamed by the CLI')`);
    await poll('the CLI to apply the row', async () => (await tgt().query(cliDb, `SELECT 1 FROM customers WHERE id = 1004`)).rowCount === 1, SYNC_TIMEOUT, 200);
    const state = await tgt().query(cliDb, `SELECT '"' || schemaname || '"."' || tablename || '"' AS key, state, rows_copied::bigint AS rows FROM _pg_live_sync.subscription_rel WHERE subname = $1`, [CLI_SYNC]);
    for (const row of state.rows) {
      const r = panel.locator(`[data-table-key='${row.key}']`);
      await poll(`${row.key} in the attached panel`, async () =>
        (await r.locator('[data-col="state"]').getAttribute('data-state-code', { timeout: 1_000 }).catch(() => null)) === row.state &&
        Number(await r.locator('[data-col="rows"]').getAttribute('data-rows-copied', { timeout: 1_000 }).catch(() => -1)) === Number(row.rows), SLOW_TIMEOUT, 200);
    }
    await poll('the attached panel to show lag 0 once the CLI applied everything', async () =>
      (await panel.locator('#lag-bytes').getAttribute('data-lag-bytes', { timeout: 1_000 }).catch(() => null)) === '0', SLOW_TIMEOUT, 200);
    // Watching reads the target every two seconds over one kept session, not a new one each time.
    const monitorPids = async () => (await tgt().query('postgres',
      `SELECT coalesce(array_agg(pid ORDER BY pid), '{}') AS pids FROM pg_stat_activity WHERE application_name = 'pg_live_sync_monitor' AND datname = $1`, [cliDb])).rows[0].pids as number[];
    const sessions = await monitorPids();
    assert.equal(sessions.length, 1, `one monitor session on the target database: ${sessions}`);
    const readAt = async () => Number(await panel.locator('#updated-at').getAttribute('data-updated-at', { timeout: 1_000 }).catch(() => 0));
    const firstRead = await readAt();
    await poll('two more reads of the target state', async () => (await readAt()) >= firstRead + 3_000, SLOW_TIMEOUT, 200);
    assert.deepEqual(await monitorPids(), sessions, 'the same monitor session after more reads');
    assert.equal(await finish(cliRun), 0, `the CLI stops cleanly on SIGINT:\n${tail(cliRun.output())}`);
    await poll('the attached panel to see the CLI stop', async () =>
      (await panel.locator('#sync-activity').getAttribute('data-activity', { timeout: 1_000 }).catch(() => null)) === 'stopped', SLOW_TIMEOUT, 200);
    const dropped = await runCli(['drop', '--source', url(src(), db), '--target', url(tgt(), cliDb), '--subscription', CLI_SYNC]);
    assert.equal(dropped.code, 0, dropped.stderr);
  }, SYNC_TIMEOUT + 3 * 60_000);

  step('Create Publication, Add Table to Publication (a table without replica identity: warned, offered its identity), Remove Table from Publication', async () => {
    const pubTables = async () => (await src().query(db, `SELECT tablename FROM pg_publication_tables WHERE pubname = 'extra_pub' ORDER BY 1`)).rows.map((r) => r.tablename);
    await w().clearNotifications();
    await w().runCommand('Create Publication');
    await w().pick('source', /connection/i);
    await w().pickMany(['public.audit_log', 'public.customers'], /tables/i);
    await w().answerInput('extra_pub', /name/i);
    assert.match(await w().clickDialogButton('Run'), /Create publication extra_pub with 2 tables on source/);
    await w().waitForNotification(/Ran 1 statement on source/);
    assert.deepEqual(await pubTables(), ['audit_log', 'customers']);
    await w().clearNotifications();
    // bare_log has no key: adding it warns that the source would refuse its UPDATEs, and offers its identity.
    await src().query(db, `CREATE TABLE bare_log (at timestamptz DEFAULT now(), line text); INSERT INTO bare_log (line) VALUES ('one')`);
    await w().runCommand('Add Table to Publication');
    await w().pick('source', /connection/i);
    await w().pick('extra_pub', /publication/i);
    await w().pickMany(['public.events', 'public.bare_log'], /Add Table to Publication extra_pub/);
    assert.match(await w().clickDialogButton('Add with Replica Identity'), /"public"\."bare_log" has no replica identity: once published, the source refuses every UPDATE and DELETE/);
    assert.match(await w().clickDialogButton('Run'), /REPLICA IDENTITY FULL/);
    // The results editor opens before this notification; a palette opened earlier would lose focus to it.
    await w().waitForNotification(/Ran 2 statements on source/);
    assert.ok((await pubTables()).includes('events'), 'events added to extra_pub');
    await src().query(db, `UPDATE bare_log SET line = 'updated'`);
    await w().clearNotifications();
    await w().runCommand('Remove Table from Publication');
    await w().pick('source', /connection/i);
    await w().pick('extra_pub', /publication/i);
    await w().pickMany(['public.customers'], /Remove Table from Publication extra_pub/);
    await w().clickDialogButton('Run');
    await w().waitForNotification(/Ran 1 statement on source/);
    assert.deepEqual(await pubTables(), ['audit_log', 'bare_log', 'events']);
    // The tree follows: source > extra_pub lists what the server says.
    await w().expand(w().treeItem('Connections', /^source\b/));
    await poll('extra_pub in the tree with 3 tables', async () => {
      const item = w().treeItem('Connections', /^extra_pub\b/);
      return (await item.isVisible()) && /^3 tables/.test((await w().itemText(item)).description);
    }, SLOW_TIMEOUT, 200);
  });

  step('Edit Connection to fields (the stored password kept), then Remove Connection', async () => {
    await w().clearNotifications();
    await w().runCommand('Edit Connection');
    await w().pick('walreplica', /Edit Connection/);
    await w().answerInput('walreplica', /Connection name/);
    await w().pick('Host, port, database, user', /How to connect/);
    await w().answerInput('127.0.0.1', /Host/);
    await w().answerInput(String(walReplica!.port), /Port/);
    await w().answerInput('postgres', /Database/);
    await w().answerInput('postgres', /User/);
    await w().pick('disable', /sslmode/);
    // Empty keeps the password already in secret storage: the test after saving proves it was kept.
    await w().answerInput('', /empty keeps the stored one/);
    const note = await w().waitForNotification(/Connected to walreplica/);
    assert.match(note, /wal_level replica/);
    const settings = JSON.parse(readFileSync(path.join(w().dirs.userData, 'User', 'settings.json'), 'utf8'));
    const entry = settings['pgLiveSync.connections'].find((c: { name: string }) => c.name === 'walreplica');
    assert.deepEqual(entry, { name: 'walreplica', host: '127.0.0.1', port: walReplica!.port, database: 'postgres', user: 'postgres', sslmode: 'disable' });
    await w().runCommand('Remove Connection');
    await w().pick('walreplica', /Remove Connection/);
    assert.match(await w().clickDialogButton('Remove'), /Remove connection walreplica\?/);
    await w().treeItem('Connections', /^walreplica\b/).waitFor({ state: 'detached', timeout: SLOW_TIMEOUT });
    await poll('walreplica gone from the user settings', async () =>
      !JSON.parse(readFileSync(path.join(w().dirs.userData, 'User', 'settings.json'), 'utf8'))['pgLiveSync.connections'].some((c: { name: string }) => c.name === 'walreplica'), UI_TIMEOUT, 200);
  });

  step('no password in settings or anywhere VS Code keeps files', async () => {
    const userSettings = path.join(w().dirs.userData, 'User', 'settings.json');
    const workspaceSettings = path.join(folder, '.vscode', 'settings.json');
    const user = readFileSync(userSettings, 'utf8');
    const workspace = readFileSync(workspaceSettings, 'utf8');
    assert.match(workspace, /"name":\s*"source"/, 'the source connection is in the workspace settings');
    assert.match(user, /"name":\s*"target"/, 'the target connection is in the user settings');
    assert.ok(!user.includes(PASSWORD), `the password is in ${userSettings}`);
    assert.ok(!workspace.includes(PASSWORD), `the password is in ${workspaceSettings}`);
    // code-server keeps SecretStorage in the browser's storage, so no file of its own may hold it.
    const hits = filesContaining([w().dirs.home, w().dirs.userData, w().dirs.extensions, folder], PASSWORD);
    assert.deepEqual(hits, [], 'files holding the password');
  });

  /** The progress panel's content frame (our webview, not another extension's). */
  function panelFrame() {
    return w().page.frameLocator('iframe.webview.ready[src*="extensionId=pg-live-sync.postgres-live-sync"]:visible').frameLocator('#active-frame');
  }

  /** Step screenshot, also kept under media/screenshots for the README when E2E_UPDATE_SCREENSHOTS=1. */
  async function saveReadmeScreenshot(name: string): Promise<void> {
    await w().page.mouse.move(1, 1); // no hover tooltip in the picture
    const shot = await w().screenshot(name);
    if (process.env.E2E_UPDATE_SCREENSHOTS === '1') copyFileSync(shot, path.join(REPO, 'media', 'screenshots', `${name}.png`));
  }

  /** Waits for the tree item labelled `label` in `view` to have a description matching `match`. */
  async function waitDescription(view: string, label: string, match: RegExp, timeoutMs = SLOW_TIMEOUT): Promise<void> {
    const item = w().treeItem(view, new RegExp(`^${label.replace(/\./g, '\\.')}\\b`)).first();
    let last = '';
    await poll(`${view}: ${label} described ${match}`, async () => {
      if (!(await item.isVisible())) return false;
      last = (await w().itemText(item)).description;
      return match.test(last);
    }, timeoutMs, 200, async () => `last description: ${JSON.stringify(last)}`);
  }

  async function addConnection(name: string, connectionUri: string, scope: 'Workspace settings' | 'User settings'): Promise<void> {
    await w().runCommand('Add Connection');
    await w().answerInput(name, /Connection name/);
    await w().pick('Connection URI', /How to connect/);
    await w().answerInput(connectionUri, /libpq URI/);
    await w().answerInput(PASSWORD, /Password/);
    await w().pick(scope, /Save in/);
    await w().waitForNotification(new RegExp(`Connected to ${name}`));
  }

  /** code-server's process group: any process whose command line or environment holds the password. */
  function processesShowingPassword(): string[] {
    const hits: string[] = [];
    const pgid = execFileSync('ps', ['-o', 'pgid=', '-p', String(w().serverPid)], { encoding: 'utf8' }).trim();
    const pids = execFileSync('ps', ['-e', '-o', 'pid=,pgid='], { encoding: 'utf8' })
      .split('\n').map((l) => l.trim().split(/\s+/)).filter(([, g]) => g === pgid).map(([p]) => p);
    assert.ok(pids.length > 2, `code-server's process group (${pgid}) has its processes`);
    for (const pid of pids) {
      for (const f of ['cmdline', 'environ']) {
        try {
          if (readFileSync(`/proc/${pid}/${f}`).includes(PASSWORD)) hits.push(`${pid} ${f} (${readlinkSync(`/proc/${pid}/exe`)})`);
        } catch {
          // exited meanwhile
        }
      }
    }
    return hits;
  }
});

/** Every regular file under `roots` whose bytes contain `needle`. */
function filesContaining(roots: string[], needle: string): string[] {
  const hits: string[] = [];
  const walk = (p: string) => {
    const st = lstatSync(p, { throwIfNoEntry: false });
    if (!st) return;
    if (st.isDirectory()) {
      for (const e of readdirSync(p)) walk(path.join(p, e));
    } else if (st.isFile() && readFileSync(p).includes(needle)) {
      hits.push(p);
    }
  };
  for (const r of roots) if (existsSync(r)) walk(r);
  return hits;
}
