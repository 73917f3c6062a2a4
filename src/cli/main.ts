#!/usr/bin/env node
/**
 * pg-live-sync: the engine headless. Every failure is one line on stderr naming the problem and
 * the fix; exit 1 for failures, 2 for usage errors.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type pg from 'pg';
import { checkEndpoint, connect, describeEndpoint, qualified, tableKey } from '../engine/connection';
import { connectorRoleSql, readServerFacts, replicaIdentitySql, tableIdentities, targetRoleSql, tuningSql } from '../engine/sqlgen';
import { SyncEngine } from '../engine/engine';
import { CheckError, errorMessage, SyncError } from '../engine/errors';
import { formatLsn } from '../engine/lsn';
import { slotInfo, validateSubscriptionName } from '../engine/slot';
import { secondsToInvalidation, walWriteRate } from '../engine/walHeadroom';
import { describeHeadroom, listSyncSlots, slotsReport, slotWarnings } from '../engine/guardrails';
import { checkSource, checkTarget, unmatchedTableMaps } from '../engine/precheck';
import { sameDatabaseProblem } from '../engine/identity';
import { dropSync, notFound, readSyncReport } from '../engine/report';
import { describeSequence, sequenceSql, syncSequencesOfSync } from '../engine/sequences';
import { DDL_KINDS, type DdlKind } from '../engine/drift';
import { ensureStateSchema, requestResync, resyncPending } from '../engine/state';
import { COPY_CHUNK_BYTES } from '../engine/copy';
import { runSnapshotHolder } from '../engine/snapshotHolder';
import { parseTableMap, parseTableName } from '../engine/tablemap';
import { applyCreatePlan, createPlanSql, planCreateTables } from '../engine/schema';
import { listPublishedTables, publicationsMissing } from '../engine/catalog';
import { statusToJson, type FromEngine, type ToEngine } from './ipc';
import { TABLE_STATE_WORDS, type LogLevel, type SyncStatus, type TableProgress } from '../engine/types';
import { counted, formatBytes, formatColumns, formatCount, parseSize } from '../engine/units';
import { oneLine } from '../engine/oneLine';
import { DEFAULT_CHUNK_ROWS, VERIFY_CATCH_UP_SECONDS, verifyLines, verifySync } from '../engine/verify';

interface CommandHelp {
  /** The synopsis, continuation lines indented under the first. */
  synopsis: string;
  about: string;
  flags: [string, string][];
}

const SOURCE_FLAG: [string, string] = ['--source URL', 'the source, a libpq URL (default: the SOURCE environment variable)'];
const TARGET_FLAG: [string, string] = ['--target URL', 'the target, a libpq URL (default: the TARGET environment variable)'];
const PUBLICATION_FLAG: [string, string] = ['--publication NAME', 'a publication on the source to sync; repeatable'];
const TABLE_MAP_FLAG: [string, string] = ['--table-map JSON', 'a table or schema written under another name on the target, a table\'s columns renamed ("columns":{"a":"b"}) or left out ("columns":{"secret":null}); repeatable'];

/** Each command's synopsis and flags: `--help` prints them all, `<command> --help` one. */
const COMMANDS: Record<string, CommandHelp> = {
  run: {
    synopsis: `pg-live-sync run    --source URL --target URL --publication NAME [--publication NAME]...
                    --subscription NAME [--table-map JSON]... [--table-sync-workers N]
                    [--copy-data true|false] [--copy-chunk-size SIZE] [--apply-ddl add-column] [--create-tables]
                    [--streaming parallel|on|off] [--spool-dir DIR]`,
    about: 'Checks everything, creates the slot, copies the tables, then streams changes until SIGINT or SIGTERM; run it again to resume.',
    flags: [
      SOURCE_FLAG, TARGET_FLAG, PUBLICATION_FLAG,
      ['--subscription NAME', "the sync's name (its slot is pg_live_sync_<NAME>)"],
      TABLE_MAP_FLAG,
      ['--table-sync-workers N', 'tables copied at once, 1 to 64 (default 4)'],
      ['--copy-chunk-size SIZE', 'tables larger than this are copied in page ranges by all workers at once, resumable chunk by chunk, e.g. 64MiB, at least 1MiB; 0 never splits (default 256MiB)'],
      ['--copy-data true|false', 'false: skip the initial copy, sync only later changes (default true)'],
      ['--apply-ddl add-column', 'add a column added on the source to the target as it streams by (default: that table stops with the ALTER to run)'],
      ['--create-tables', 'first create the target tables that are missing, as create-tables does (default: a missing table is an error)'],
      ['--streaming parallel|on|off', 'on: the source sends transactions bigger than its logical_decoding_work_mem while they run, kept on local disk until their commit (PostgreSQL 14+); parallel: also applied as they arrive, in a target transaction that commits at their commit (default parallel); off: the source keeps them until their commit'],
      ['--spool-dir DIR', 'where source transactions still in progress wait for their commit, on local disk: a folder of your own, mode 0700 (default $PG_LIVE_SYNC_SPOOL_DIR, else ~/.cache/pg-live-sync/spool)'],
    ],
  },
  'create-tables': {
    synopsis: `pg-live-sync create-tables --source URL --target URL --publication NAME [--publication NAME]...
                    [--table-map JSON]... [--dry-run]`,
    about: "Creates the published tables the target lacks, from the source's catalog: schemas, enum, domain and composite types, columns with NOT NULL, defaults, identity and generated columns, primary keys, partitions. Prints the other indexes and constraints as SQL to choose from; never creates an extension.",
    flags: [
      SOURCE_FLAG, TARGET_FLAG, PUBLICATION_FLAG, TABLE_MAP_FLAG,
      ['--dry-run', 'print the DDL (a script for psql) instead of running it'],
    ],
  },
  status: {
    synopsis: 'pg-live-sync status --subscription NAME --target URL [--source URL] [--json] [--warn-retained-wal SIZE]',
    about: "Prints the sync's applied position and each table's state from the target (with --source, the slot too).",
    flags: [
      ['--subscription NAME', "the sync's name"],
      TARGET_FLAG,
      ['--source URL', "also read the slot's WAL status and retained WAL from the source (default: SOURCE)"],
      ['--json', 'print JSON for scripts'],
      ['--warn-retained-wal SIZE', 'warn when the slot holds more WAL than this, e.g. 512MiB or 2GiB (default 1GiB)'],
    ],
  },
  drop: {
    synopsis: 'pg-live-sync drop   --subscription NAME --source URL --target URL [--spool-dir DIR]',
    about: "Removes the sync's slot from the source, its state from the target and what stopped runs left in its local spool; the target's data stays.",
    flags: [['--subscription NAME', "the sync's name"], SOURCE_FLAG, TARGET_FLAG, ['--spool-dir DIR', "the sync's runs' --spool-dir (default as run's)"]],
  },
  resync: {
    synopsis: 'pg-live-sync resync --subscription NAME --target URL --table SCHEMA.TABLE',
    about: 'Copies one table afresh: a running sync takes it up within seconds while the other tables stream, otherwise the next run does.',
    flags: [
      ['--subscription NAME', "the sync's name"],
      TARGET_FLAG,
      ['--table SCHEMA.TABLE', 'the source table, as in SQL: double-quote a part with capitals, dots or other characters'],
    ],
  },
  check: {
    synopsis: `pg-live-sync check  --source URL --target URL --publication NAME [--publication NAME]...
                    [--table-map JSON]... [--subscription NAME] [--create-tables]`,
    about: 'Prints every problem run would refuse or warn about, each with its fix; exit 0 when there is no error.',
    flags: [SOURCE_FLAG, TARGET_FLAG, PUBLICATION_FLAG, TABLE_MAP_FLAG, ['--subscription NAME', 'also check that slot of that sync'],
      ['--create-tables', 'check as run --create-tables would run: missing target tables are to be created, not errors']],
  },
  slots: {
    synopsis: 'pg-live-sync slots  --source URL [--target URL]... [--json]',
    about: "Lists every pg_live_sync_* and pgls_* slot on the source with the target (of those given) whose state owns it; slots none of them owns get the SQL that drops them.",
    flags: [SOURCE_FLAG, ['--target URL', 'a target that syncs from this source; repeatable (default: TARGET)'], ['--json', 'print JSON for scripts']],
  },
  'sync-sequences': {
    synopsis: 'pg-live-sync sync-sequences --subscription NAME --source URL --target URL [--dry-run]',
    about: "At cutover: sets each synced table's sequences on the target past the source's last value and the target column's max (never backwards; running it again changes nothing).",
    flags: [
      ['--subscription NAME', "the sync whose tables (and table map) to use"], SOURCE_FLAG, TARGET_FLAG,
      ['--dry-run', 'print the setval() statements instead of running them'],
    ],
  },
  verify: {
    synopsis: `pg-live-sync verify --subscription NAME --source URL --target URL [--table SCHEMA.TABLE]...
                    [--chunk-rows N] [--fix] [--json]`,
    about: 'Compares each ready table, source against target, by row count and checksum in key ranges, while the sync runs or not; prints each range that differs, exit 1 if any. --fix re-copies just those ranges; it needs the sync stopped and caught up.',
    flags: [
      ['--subscription NAME', "the sync's name"],
      SOURCE_FLAG, TARGET_FLAG,
      ['--table SCHEMA.TABLE', 'only this source table (quote a name with a dot: "my.schema"."t"); repeatable (default: every table)'],
      ['--chunk-rows N', `rows per compared key range, 100 to 10,000,000 (default ${formatCount(DEFAULT_CHUNK_ROWS)}); tables without a key are compared whole`],
      ['--fix', 're-copy the ranges that differ from the source; refused while the sync runs or has changes left to apply'],
      ['--json', 'print JSON for scripts'],
    ],
  },
  sql: {
    synopsis: `pg-live-sync sql tuning           --source URL
pg-live-sync sql replica-identity --source URL [--publication NAME]
pg-live-sync sql role             --source URL [--target URL] --role NAME [--schema NAME]...`,
    about: 'Prints SQL to review and run on the source: settings to change, replica identities to set, a connector role (and its counterpart on the target, not a superuser).',
    flags: [
      SOURCE_FLAG,
      ['--target URL', 'role: read the target\'s database name and version for its half (default: TARGET; without one, PostgreSQL 15+ and the source\'s database name)'],
      ['--publication NAME', "replica-identity: only that publication's tables (default: every table)"],
      ['--role NAME', 'role: the name of the role to create'],
      ['--schema NAME', 'role: a schema it may read; repeatable (default public)'],
    ],
  },
};

const USAGE = `usage:
${Object.values(COMMANDS).map((c) => c.synopsis.replace(/^/gm, '  ')).join('\n')}
--source and --target default to the SOURCE and TARGET environment variables.
pg-live-sync COMMAND --help prints a command's flags; pg-live-sync --version the version.`;

function commandHelp(c: CommandHelp): string {
  const width = Math.max(...c.flags.map(([flag]) => flag.length));
  return [`usage: ${c.synopsis.replace(/\n/g, '\n       ')}`, '', c.about, '', ...c.flags.map(([flag, text]) => `  ${flag.padEnd(width)}  ${text}`), ''].join('\n');
}

class UsageError extends Error {}

/** Set by the build (esbuild `define`) from package.json; `dev` when run from source. */
declare const PG_LIVE_SYNC_VERSION: string | undefined;
const VERSION = typeof PG_LIVE_SYNC_VERSION === 'string' ? PG_LIVE_SYNC_VERSION : 'dev';

function log(level: LogLevel, message: string): void {
  if (level === 'debug' && !process.env.PG_LIVE_SYNC_DEBUG) return;
  // Messages carry names from the servers: one message stays one line.
  process.stderr.write(`${new Date().toISOString()} ${level.padEnd(5)} ${oneLine(message)}\n`);
}

function required(value: string | undefined, flag: string, env?: string): string {
  // A connection string that does not parse is a usage error before anything connects.
  if (value && (flag === 'source' || flag === 'target')) checkEndpoint({ url: value, role: flag });
  if (value) return value;
  throw new UsageError(`missing --${flag}${env ? ` (or the ${env} environment variable)` : ''}`);
}

function parse(args: string[], options: NonNullable<ParseArgsConfig['options']>) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: false }).values as Record<string, string | string[] | boolean | undefined>;
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
}

/**
 * A whole number as people type one: decimal digits only, so "1e1", "0x10", "1.5" and " 3" (which
 * Number() would take as 10, 16, 1.5 and 3) are refused rather than run as something else.
 */
function wholeNumber(text: string, flag: string, min: number, max: number): number {
  const n = /^[0-9]{1,15}$/.test(text) ? Number(text) : NaN;
  if (!(n >= min && n <= max)) throw new UsageError(`--${flag} must be a whole number from ${min} to ${max}, in decimal digits only, not "${text}"`);
  return n;
}

/** Values of a string flag, none of them empty: an empty name would be passed on as a name ("" in SQL). */
function named<T extends string | string[] | undefined>(value: T, flag: string, what: string): T {
  for (const x of typeof value === 'string' ? [value] : (value ?? [])) {
    if (x.trim() === '') throw new UsageError(`--${flag} needs ${what}, not an empty string`);
  }
  return value;
}

/** Smallest --copy-chunk-size but 0: each chunk costs a target transaction, a state row and a scan, so 8 KiB chunks (one page) only burn time. */
const MIN_COPY_CHUNK_BYTES = 1024 * 1024;

function copyChunkBytes(text: string): number {
  const bytes = parseBytes(text, 'copy-chunk-size', '256MiB or 0');
  // The chunked-copy tests split tables of a few hundred kB: PG_LIVE_SYNC_TEST_SMALL_CHUNKS lets them (tests only).
  const min = process.env.PG_LIVE_SYNC_TEST_SMALL_CHUNKS ? 1 : MIN_COPY_CHUNK_BYTES;
  if (bytes !== 0 && bytes < min) throw new UsageError(`--copy-chunk-size must be 0 (copy each table in one stream) or at least 1MiB, not "${text}"`);
  return bytes;
}

async function run(args: string[]): Promise<number> {
  const v = parse(args, {
    source: { type: 'string' },
    target: { type: 'string' },
    publication: { type: 'string', multiple: true },
    subscription: { type: 'string' },
    'table-map': { type: 'string', multiple: true },
    'table-sync-workers': { type: 'string' },
    'copy-chunk-size': { type: 'string' },
    'copy-data': { type: 'string' },
    'apply-ddl': { type: 'string', multiple: true },
    'create-tables': { type: 'boolean' },
    'spool-dir': { type: 'string' },
    streaming: { type: 'string' },
  });
  const publications = named((v.publication as string[] | undefined) ?? [], 'publication', 'a publication name');
  if (publications.length === 0) throw new UsageError('missing --publication');
  const workers = wholeNumber((v['table-sync-workers'] as string | undefined) ?? '4', 'table-sync-workers', 1, 64);
  const copyDataText = (v['copy-data'] as string | undefined) ?? 'true';
  if (copyDataText !== 'true' && copyDataText !== 'false') throw new UsageError(`--copy-data takes true or false, not "${copyDataText}"`);
  const streamingText = (v.streaming as string | undefined) ?? 'parallel';
  if (streamingText !== 'parallel' && streamingText !== 'on' && streamingText !== 'off') throw new UsageError(`--streaming takes parallel, on or off, not "${streamingText}"`);
  const subscription = required(v.subscription as string | undefined, 'subscription');
  validateSubscriptionName(subscription);
  const applyDdl = ((v['apply-ddl'] as string[] | undefined) ?? []).flatMap((x) => x.split(','));
  for (const kind of applyDdl) if (!(DDL_KINDS as readonly string[]).includes(kind)) throw new UsageError(`--apply-ddl takes ${DDL_KINDS.join(', ')}, not "${kind}"`);
  const chunkBytes = copyChunkBytes((v['copy-chunk-size'] as string | undefined) ?? `${COPY_CHUNK_BYTES}B`);
  const spoolDir = named(v['spool-dir'] as string | undefined, 'spool-dir', 'a folder (leave the flag out for the default)');

  const engine = new SyncEngine(
    {
      source: required((v.source as string | undefined) ?? process.env.SOURCE, 'source', 'SOURCE'),
      target: required((v.target as string | undefined) ?? process.env.TARGET, 'target', 'TARGET'),
      publications,
      subscription,
      tableMaps: ((v['table-map'] as string[] | undefined) ?? []).map(parseTableMap),
      tableSyncWorkers: workers,
      copyData: copyDataText === 'true',
      copyChunkBytes: chunkBytes,
      applyDdl: applyDdl as DdlKind[],
      createTables: v['create-tables'] === true,
      spoolDir,
      streaming: streamingText !== 'off',
      applyWhileOpen: streamingText === 'parallel',
    },
    { log, onStatus: progressReporter() },
  );
  const stop = stopper(engine, (why) => {
    process.stderr.write(`pg-live-sync: error: ${forcedStopMessage(why)}\n`);
    process.exit(1);
  });
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      log('info', `${sig} received`);
      stop(sig, true);
    });
  }
  await engine.run();
  return 0;
}

/** How long a stop may take to commit and close before the process exits anyway. */
const STOP_GRACE_MS = 13_000;
/** status samples the source's WAL position this far apart for the time left before invalidation. */
const WAL_RATE_SAMPLE_MS = 1_000;

/**
 * The first stop request asks the engine to commit what it has applied and return; a second
 * signal, or the grace period running out, calls `force` (which exits non-zero: the stop was not
 * clean, though nothing is lost, as the target is consistent at every commit).
 */
function stopper(engine: SyncEngine, force: (why: string) => void): (what: string, isSignal: boolean) => void {
  let asked = false;
  return (what, isSignal) => {
    if (asked) {
      if (isSignal) force(`second ${what}`);
      return;
    }
    asked = true;
    engine.stop();
    setTimeout(() => force(`the stop did not finish within ${STOP_GRACE_MS / 1000} s`), STOP_GRACE_MS).unref();
  };
}

function forcedStopMessage(why: string): string {
  return `stopped by force (${why}) before the last changes were committed; the target keeps everything committed so far and the next run resumes from there`;
}

/**
 * The extension's background run: options arrive over the IPC channel, logs and status go back
 * on it. The parent going away (VS Code closing) stops the run the same way SIGTERM does.
 */
async function serveIpc(): Promise<number> {
  const send = process.send?.bind(process);
  if (!send) throw new UsageError('serve-ipc is started by the VS Code extension over an IPC channel');
  const post = (m: FromEngine) => { if (process.connected) send(m); };
  const options = await new Promise<ToEngine & { type: 'start' }>((resolve, reject) => {
    process.once('message', (m: ToEngine) => (m.type === 'start' ? resolve(m) : reject(new UsageError('serve-ipc expects start first'))));
    process.once('disconnect', () => reject(new UsageError('the extension went away before start')));
  });
  const engine = new SyncEngine(options.options, {
    log: (level, message) => {
      log(level, message);
      post({ type: 'log', level, message });
    },
    onStatus: (s) => post({ type: 'status', status: statusToJson(s) }),
  });
  // process.exit would drop a message still queued on the channel: wait for the last one.
  let finished: Promise<void> | null = null;
  const finish = (error: string | null) =>
    (finished ??= new Promise<void>((resolve) => (process.connected ? send({ type: 'exit', error } satisfies FromEngine, () => resolve()) : resolve())));
  const stop = stopper(engine, (why) => {
    const error = forcedStopMessage(why);
    log('error', error);
    void finish(error).then(() => process.exit(1));
  });
  process.on('message', (m: ToEngine) => { if (m.type === 'stop') stop('stop', false); });
  // The parent going away must not leave this process behind, even if the stop hangs.
  process.on('disconnect', () => stop('disconnect', false));
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => stop(sig, true));
  try {
    await engine.run();
    await finish(null);
    return 0;
  } catch (err) {
    await finish(errorMessage(err));
    return 1;
  }
}

/** Prints per-table state changes as they happen and a summary line every few seconds. */
function progressReporter(): (s: SyncStatus) => void {
  const lastState = new Map<string, string>();
  let lastSummary = 0;
  return (s) => {
    for (const t of s.tables) {
      const k = tableKey(t.schema, t.table);
      if (lastState.get(k) !== t.state) {
        lastState.set(k, t.state);
        log('info', `table ${k} -> ${qualified(t.targetSchema, t.targetTable)}: ${TABLE_STATE_WORDS[t.state]} (${t.state}), ${formatCount(t.rowsCopied)} rows, ${formatBytes(t.bytesCopied)}`);
      }
    }
    const now = Date.now();
    const every = s.phase === 'copying' ? 2_000 : 10_000;
    if (now - lastSummary < every || s.phase === 'stopped' || s.phase === 'starting') return;
    lastSummary = now;
    if (s.phase === 'copying') {
      const copying = s.tables.filter((t) => t.state === 'd');
      const done = s.tables.filter((t) => t.state !== 'i' && t.state !== 'd').length;
      log('info', `copy: ${done}/${s.tables.length} tables done; ${copying.map((t) => `${tableKey(t.schema, t.table)} ${formatCount(t.rowsCopied)}/~${formatCount(t.approximateRows)} rows`).join(', ')}`);
    } else if (s.phase === 'streaming') {
      log('info', `streaming: applied ${s.appliedLsn === null ? '-' : formatLsn(s.appliedLsn)}, lag ${formatBytes(s.lagBytes)} / ${s.lagSeconds.toFixed(1)} s, ${formatCount(s.transactionsApplied)} transactions, ${formatCount(s.changesApplied)} changes`);
    }
  };
}

async function status(args: string[]): Promise<number> {
  const v = parse(args, {
    subscription: { type: 'string' },
    target: { type: 'string' },
    source: { type: 'string' },
    json: { type: 'boolean' },
    'warn-retained-wal': { type: 'string' },
  });
  const subscription = required(v.subscription as string | undefined, 'subscription');
  validateSubscriptionName(subscription);
  const walWarnBytes = parseBytes((v['warn-retained-wal'] as string | undefined) ?? '1GiB');
  const targetUrl = required((v.target as string | undefined) ?? process.env.TARGET, 'target', 'TARGET');
  const sourceUrl = (v.source as string | undefined) ?? process.env.SOURCE;
  const target = await connect({ url: targetUrl, role: 'target' });
  try {
    const source = sourceUrl ? await connect({ url: sourceUrl, role: 'source' }) : null;
    const { report, walRate } = await (async () => {
      const at = Date.now();
      const report = await readSyncReport(target, subscription, source);
      // Time left before invalidation needs the source's write rate: a second look, a second later.
      if (!source || !report?.slot || report.slot.safeWalBytes === null) return { report, walRate: null };
      await new Promise((r) => setTimeout(r, WAL_RATE_SAMPLE_MS));
      const again = await slotInfo(source, report.subscription.slotName);
      return { report, walRate: again ? walWriteRate({ at, slot: report.slot }, { at: Date.now(), slot: again }) : null };
    })().finally(() => source?.end());
    if (!report) throw notFound(subscription);
    const { subscription: sub, tables, slot, lagBytes, lagSeconds } = report;
    const warnings = [...slotWarnings(slot, walWarnBytes, walRate), ...missingRowWarnings(tables, sub.subname)];
    if (v.json) {
      process.stdout.write(JSON.stringify({
        subscription: sub.subname,
        slotName: sub.slotName,
        publications: sub.publications,
        source: sub.source,
        consistentLsn: sub.consistentLsn === null ? null : formatLsn(sub.consistentLsn),
        appliedLsn: sub.appliedLsn === null ? null : formatLsn(sub.appliedLsn),
        appliedCommitTime: sub.appliedCommitTime,
        lagBytes,
        lagSeconds,
        lastError: sub.lastError,
        slot: slot && {
          ...slot, confirmedFlush: slot.confirmedFlush === null ? null : formatLsn(slot.confirmedFlush), sourceWalLsn: formatLsn(slot.sourceWalLsn),
          walBytesPerSecond: walRate, secondsToInvalidation: secondsToInvalidation(slot, walRate),
        },
        warnings,
        tables: tables.map((t) => ({ ...t, lsn: t.lsn === null ? null : formatLsn(t.lsn) })),
      }, null, 2) + '\n');
      return 0;
    }
    const out: string[] = [];
    out.push(oneLine(`subscription ${sub.subname} (slot ${sub.slotName}, publications ${sub.publications.join(', ')}, source ${sub.source})`));
    out.push(`applied LSN  ${sub.appliedLsn === null ? '-' : formatLsn(sub.appliedLsn)}${sub.appliedCommitTime ? ` (source commit ${sub.appliedCommitTime.toISOString()})` : ''}`);
    if (lagBytes !== null) out.push(`lag          ${formatBytes(lagBytes)} of source WAL, ${lagSeconds === null ? 'time behind unknown (stopped, with too much WAL to look through)' : `${lagSeconds.toFixed(1)} s behind`}`);
    if (slot) out.push(`slot         ${slot.active ? 'active' : 'inactive'}, wal_status ${slot.walStatus}, ${describeHeadroom(slot, walRate)}`);
    else if (sourceUrl) out.push(`slot         missing on the source: the sync cannot resume; run pg-live-sync drop and run again`);
    for (const w of warnings) out.push(`warning      ${w}`);
    if (sub.lastError) out.push(`last error   ${oneLine(sub.lastError)}`);
    out.push(tableRows(tables));
    process.stdout.write(out.join('\n') + '\n');
    return 0;
  } finally {
    await target.end();
  }
}

/** Every slot of ours on the source, with the target (of those given) that owns it; orphans get their drop SQL. */
async function slots(args: string[]): Promise<number> {
  const v = parse(args, { source: { type: 'string' }, target: { type: 'string', multiple: true }, json: { type: 'boolean' } });
  const source = await connect({ url: required((v.source as string | undefined) ?? process.env.SOURCE, 'source', 'SOURCE'), role: 'source' });
  const targetUrls = (v.target as string[] | undefined) ?? (process.env.TARGET ? [process.env.TARGET] : []);
  const targets: { client: pg.Client; where: string }[] = [];
  try {
    for (const url of targetUrls) targets.push({ client: await connect({ url, role: 'target' }), where: describeEndpoint(url) });
    const found = await listSyncSlots(source, targets);
    if (v.json) {
      process.stdout.write(JSON.stringify(found, null, 2) + '\n');
      return 0;
    }
    const { listing, orphans } = slotsReport(found, targets.length === 0 ? 'any target (none given: pass every --target that syncs from this source)' : `the ${counted(targets.length, 'target')} given`);
    process.stdout.write([...listing, ...orphans].join('\n') + '\n');
    return 0;
  } finally {
    await Promise.all(targets.map((t) => t.client.end()));
    await source.end();
  }
}

/** A size as PostgreSQL writes one (kB, MB: powers of 1024) or in IEC units (KiB, MiB). */
function parseBytes(text: string, flag = 'warn-retained-wal', examples = '512MiB or 2GiB'): number {
  const bytes = text.trim() === text ? parseSize(text) : null;
  if (bytes === null) throw new UsageError(`--${flag} takes a size such as ${examples}, not "${text}"`);
  return bytes;
}

/** Tables whose source changes found no row on the target: it was changed outside the sync. */
function missingRowWarnings(tables: TableProgress[], subscription: string): string[] {
  return tables.filter((t) => t.missingUpdates + t.missingDeletes > 0).map((t) => {
    const key = tableKey(t.schema, t.table);
    return `${counted(t.missingUpdates, 'update')} and ${counted(t.missingDeletes, 'delete')} of ${key} found no row on the target: it was changed outside the sync; compare it with the source: pg-live-sync verify --subscription ${subscription} --table '${key.replace(/'/g, "'\\''")}'; with the sync stopped, --fix repairs what differs`;
  });
}

function tableRows(tables: TableProgress[]): string {
  const rows = [['TABLE', 'TARGET', 'STATE', 'ROWS COPIED', 'BYTES COPIED', 'CHUNKS', 'NO ROW (UPD/DEL)', 'LAST ERROR']];
  for (const t of tables) {
    const state = t.removed ? `${t.state} removed from publication` : `${t.state} ${TABLE_STATE_WORDS[t.state]}${t.lastError ? ' (error)' : ''}`;
    const chunks = t.chunks ? `${formatCount(t.chunks.done)} / ${formatCount(t.chunks.total)}` : '';
    const missing = t.missingUpdates + t.missingDeletes > 0 ? `${formatCount(t.missingUpdates)} / ${formatCount(t.missingDeletes)}` : '';
    rows.push([tableKey(t.schema, t.table), qualified(t.targetSchema, t.targetTable), state, formatCount(t.rowsCopied), formatBytes(t.bytesCopied), chunks, missing, t.lastError ?? '']);
  }
  return formatColumns(rows).join('\n');
}

async function drop(args: string[]): Promise<number> {
  const v = parse(args, { subscription: { type: 'string' }, source: { type: 'string' }, target: { type: 'string' }, 'spool-dir': { type: 'string' } });
  const subscription = required(v.subscription as string | undefined, 'subscription');
  validateSubscriptionName(subscription);
  const spoolDir = named(v['spool-dir'] as string | undefined, 'spool-dir', 'the folder the runs used (leave the flag out for the default)');
  await dropSync(
    { url: required((v.source as string | undefined) ?? process.env.SOURCE, 'source', 'SOURCE'), role: 'source' },
    { url: required((v.target as string | undefined) ?? process.env.TARGET, 'target', 'TARGET'), role: 'target' },
    subscription,
    log,
    { spoolDir },
  );
  return 0;
}

/** How long `resync` waits for a running sync to take the request up before saying it is queued. */
const RESYNC_WAIT_MS = 30_000;

/**
 * Sends one table back to be copied afresh. The request is written into the target's state, where
 * the running sync picks it up within seconds (or the next run at its start), so it never races
 * a run: the run lets go of the table between two source transactions and copies it on its own.
 */
async function resync(args: string[]): Promise<number> {
  const v = parse(args, { subscription: { type: 'string' }, target: { type: 'string' }, table: { type: 'string' } });
  const subscription = required(v.subscription as string | undefined, 'subscription');
  validateSubscriptionName(subscription);
  const table = parseTableName(required(v.table as string | undefined, 'table'));
  const name = qualified(table.schema, table.table);
  const target = await connect({ url: required((v.target as string | undefined) ?? process.env.TARGET, 'target', 'TARGET'), role: 'target' });
  try {
    const report = await readSyncReport(target, subscription, null);
    if (!report) throw notFound(subscription);
    const row = report.tables.find((t) => t.schema === table.schema && t.table === table.table);
    if (!row) {
      const known = report.tables.filter((t) => !t.removed).map((t) => qualified(t.schema, t.table));
      const list = known.length > 10 ? `${known.slice(0, 10).join(', ')}, ... (${known.length} in all)` : known.join(', ') || 'none';
      throw new SyncError(`subscription "${subscription}" has no table ${name} (its tables: ${list}); give --table as SCHEMA.TABLE of the source, double-quoting parts with capitals or dots`, 'not_found');
    }
    if (row.removed) throw new SyncError(`table ${name} left the publications of subscription "${subscription}" and is no longer synced; add it back to a publication and the sync copies it afresh`, 'not_found');
    await ensureStateSchema(target);
    await requestResync(target, subscription, table);
    let running = report.running;
    const deadline = Date.now() + RESYNC_WAIT_MS;
    while (running && Date.now() < deadline && (await resyncPending(target, subscription, table))) {
      await new Promise((r) => setTimeout(r, 200));
      running = (await readSyncReport(target, subscription, null))?.running ?? false;
    }
    if (!(await resyncPending(target, subscription, table))) {
      process.stdout.write(`${oneLine(name)}: the running sync is copying it afresh through its own slot; the other tables go on streaming (watch pg-live-sync status)\n`);
    } else if (running) {
      process.stdout.write(`${oneLine(name)}: marked for resync; the running sync copies it afresh once its current copy of the table is done\n`);
    } else {
      process.stdout.write(`${oneLine(name)}: marked for resync; the next pg-live-sync run of ${subscription} copies it afresh\n`);
    }
    return 0;
  } finally {
    await target.end();
  }
}

/** Every finding, one line each with its fix; exit 1 when any is an error. */
async function check(args: string[]): Promise<number> {
  const v = parse(args, {
    source: { type: 'string' },
    target: { type: 'string' },
    publication: { type: 'string', multiple: true },
    'table-map': { type: 'string', multiple: true },
    subscription: { type: 'string' },
    'create-tables': { type: 'boolean' },
  });
  const publications = named((v.publication as string[] | undefined) ?? [], 'publication', 'a publication name');
  if (publications.length === 0) throw new UsageError('missing --publication');
  const subscription = (v.subscription as string | undefined) ?? null;
  if (subscription !== null) validateSubscriptionName(subscription);
  const tableMaps = ((v['table-map'] as string[] | undefined) ?? []).map(parseTableMap);
  const sourceEp = { url: required((v.source as string | undefined) ?? process.env.SOURCE, 'source', 'SOURCE'), role: 'source' as const };
  const targetEp = { url: required((v.target as string | undefined) ?? process.env.TARGET, 'target', 'TARGET'), role: 'target' as const };
  const source = await connect(sourceEp);
  try {
    const target = await connect(targetEp);
    try {
      const same = await sameDatabaseProblem(source, target, { source: describeEndpoint(sourceEp.url), target: describeEndpoint(targetEp.url) });
      if (same) {
        // Everything else would be checked against the source itself: only this line matters.
        process.stdout.write(`error: ${same}\ncheck: 1 error, 0 warnings\n`);
        return 1;
      }
      const src = await checkSource(source, sourceEp, publications, subscription);
      const tgt = await checkTarget(target, targetEp, src.published, tableMaps, { source, freshStart: true, createTables: v['create-tables'] === true });
      const findings = [...src.findings, ...(await unmatchedTableMaps(source, tableMaps, src.published, publications)), ...tgt.findings];
      for (const f of findings) process.stdout.write(`${f.severity}: ${oneLine(f.message)}\n`);
      const errors = findings.filter((f) => f.severity === 'error').length;
      process.stdout.write(`check: ${counted(src.published.length, 'table')}, ${counted(errors, 'error')}, ${counted(findings.length - errors, 'warning')}${errors === 0 ? '; ready to run' : ''}\n`);
      return errors === 0 ? 0 : 1;
    } finally {
      await target.end();
    }
  } finally {
    await source.end();
  }
}

/** Creates the missing target tables (or prints the DDL), then the optional SQL on stdout. */
async function createTables(args: string[]): Promise<number> {
  const v = parse(args, {
    source: { type: 'string' },
    target: { type: 'string' },
    publication: { type: 'string', multiple: true },
    'table-map': { type: 'string', multiple: true },
    'dry-run': { type: 'boolean' },
  });
  const publications = named((v.publication as string[] | undefined) ?? [], 'publication', 'a publication name');
  if (publications.length === 0) throw new UsageError('missing --publication');
  const tableMaps = ((v['table-map'] as string[] | undefined) ?? []).map(parseTableMap);
  const dryRun = v['dry-run'] === true;
  const sourceEp = { url: required((v.source as string | undefined) ?? process.env.SOURCE, 'source', 'SOURCE'), role: 'source' as const };
  const target = await connect({ url: required((v.target as string | undefined) ?? process.env.TARGET, 'target', 'TARGET'), role: 'target' });
  try {
    const source = await connect(sourceEp);
    const plan = await (async () => {
      const missing = await publicationsMissing(source, publications);
      if (missing.length > 0) throw new SyncError(`publication ${missing.map((p) => `"${p}"`).join(', ')} does not exist on the source ${describeEndpoint(sourceEp.url)}; fix --publication`, 'check');
      return planCreateTables(source, target, await listPublishedTables(source, publications), tableMaps);
    })().finally(() => source.end());
    if (plan.errors.length > 0) throw new CheckError(plan.errors.map((f) => f.message));
    if (dryRun) {
      process.stdout.write(createPlanSql(plan));
    } else {
      await applyCreatePlan(target, plan);
      for (const t of plan.tables) log('info', `created ${qualified(t.target.schema, t.target.table)} for ${tableKey(t.source.schema, t.source.table)}`);
      for (const n of plan.notes) log('warn', n);
      process.stdout.write(createPlanSql({ ...plan, tables: [], notes: [], statements: [] }));
    }
    log('info', `create-tables: ${counted(plan.tables.length, 'table')} ${dryRun ? 'to create' : 'created'}, ${formatCount(plan.optional.length)} other ${plan.optional.length === 1 ? 'index or constraint' : 'indexes and constraints'} not created${plan.optional.length > 0 ? ' (on stdout, commented out)' : ''}`);
    return 0;
  } finally {
    await target.end();
  }
}

/** One line per target sequence: what it was set to and why; exit 0. */
async function syncSequencesCommand(args: string[]): Promise<number> {
  const v = parse(args, { subscription: { type: 'string' }, source: { type: 'string' }, target: { type: 'string' }, 'dry-run': { type: 'boolean' } });
  const subscription = required(v.subscription as string | undefined, 'subscription');
  validateSubscriptionName(subscription);
  const dryRun = v['dry-run'] === true;
  const target = await connect({ url: required((v.target as string | undefined) ?? process.env.TARGET, 'target', 'TARGET'), role: 'target' });
  try {
    const source = await connect({ url: required((v.source as string | undefined) ?? process.env.SOURCE, 'source', 'SOURCE'), role: 'source' });
    const results = await syncSequencesOfSync(source, target, subscription, dryRun).finally(() => source.end());
    if (dryRun) {
      const text = sequenceSql(results);
      process.stdout.write(text ? `${text}\n` : '');
    }
    for (const r of results) log('info', describeSequence(r, dryRun));
    const changed = results.filter((r) => r.skipped === null).length;
    log('info', `sync-sequences: ${counted(results.length, 'sequence')}, ${formatCount(changed)} ${dryRun ? 'to set' : 'set'}, ${formatCount(results.length - changed)} unchanged`);
    return 0;
  } finally {
    await target.end();
  }
}

/** Each chunk that differs on a line of its own; exit 1 unless every table was compared and matches. */
async function verify(args: string[]): Promise<number> {
  const v = parse(args, {
    subscription: { type: 'string' },
    source: { type: 'string' },
    target: { type: 'string' },
    table: { type: 'string', multiple: true },
    'chunk-rows': { type: 'string' },
    fix: { type: 'boolean' },
    json: { type: 'boolean' },
  });
  const subscription = required(v.subscription as string | undefined, 'subscription');
  validateSubscriptionName(subscription);
  const chunkRows = wholeNumber((v['chunk-rows'] as string | undefined) ?? String(DEFAULT_CHUNK_ROWS), 'chunk-rows', 100, 10_000_000);
  const report = await verifySync({
    source: { url: required((v.source as string | undefined) ?? process.env.SOURCE, 'source', 'SOURCE'), role: 'source' },
    target: { url: required((v.target as string | undefined) ?? process.env.TARGET, 'target', 'TARGET'), role: 'target' },
    subscription,
    tables: ((v.table as string[] | undefined) ?? []).map((t) => parseTableName(t)),
    chunkRows,
    fix: v.fix === true,
    catchUpTimeoutMs: VERIFY_CATCH_UP_SECONDS * 1000,
    log,
  });
  const { lines, ok } = verifyLines(report, v.fix === true);
  if (v.json) {
    process.stdout.write(JSON.stringify({ ...report, ok }, null, 2) + '\n');
    return ok ? 0 : 1;
  }
  process.stdout.write(lines.map(oneLine).join('\n') + '\n');
  return ok ? 0 : 1;
}

/** Prints SQL to review and run: tuning, replica identities, a connector role. */
async function sql(args: string[]): Promise<number> {
  const [kind, ...rest] = args;
  const v = parse(rest, { source: { type: 'string' }, target: { type: 'string' }, publication: { type: 'string' }, role: { type: 'string' }, schema: { type: 'string', multiple: true } });
  if (kind !== 'tuning' && kind !== 'replica-identity' && kind !== 'role') throw new UsageError(`sql takes tuning, replica-identity or role, not "${kind ?? ''}"`);
  const publication = named(v.publication as string | undefined, 'publication', 'a publication name (leave the flag out for every table)');
  named(v.schema as string[] | undefined, 'schema', 'a schema name');
  const url = required((v.source as string | undefined) ?? process.env.SOURCE, 'source', 'SOURCE');
  const client = await connect({ url, role: 'source' });
  try {
    const where = describeEndpoint(url);
    let text: string;
    if (kind === 'tuning') text = tuningSql(await readServerFacts(client), where);
    else if (kind === 'replica-identity') {
      if (publication !== undefined && (await publicationsMissing(client, [publication])).length > 0) {
        throw new SyncError(`publication "${publication}" does not exist on the source ${where}; fix --publication, or leave it out for every table`, 'check');
      }
      text = replicaIdentitySql(await tableIdentities(client, publication), publication ? `publication "${publication}" on ${where}` : `every table on ${where}`);
    } else if (kind === 'role') {
      const role = required(v.role as string | undefined, 'role');
      const schemas = (v.schema as string[] | undefined) ?? ['public'];
      text = await connectorRoleSql(client, role, schemas, (await readServerFacts(client)).rds);
      text += '\n' + (await roleOnTarget((v.target as string | undefined) ?? process.env.TARGET, client, role, schemas));
    } else throw new UsageError(`sql takes tuning, replica-identity or role, not "${kind ?? ''}"`);
    process.stdout.write(text);
    return 0;
  } finally {
    await client.end();
  }
}

const HOLD_SNAPSHOT_BY_HAND = 'hold-snapshot is internal: pg-live-sync run starts it to keep a chunked copy\'s snapshot and sends its orders on stdin; copy with pg-live-sync run instead';

/** The target's half of `sql role`: read from the target when one is given. */
async function roleOnTarget(url: string | undefined, source: pg.Client, role: string, schemas: string[]): Promise<string> {
  const sourceDb = (await source.query('SELECT current_database() AS d')).rows[0].d as string;
  if (!url) return targetRoleSql(null, sourceDb, role, schemas);
  const target = await connect({ url, role: 'target' });
  try {
    return await targetRoleSql(target, sourceDb, role, schemas);
  } finally {
    await target.end();
  }
}

async function main(argv: string[]): Promise<number> {
  const [command, ...args] = argv;
  const help = command === 'help' && args[0] !== undefined ? COMMANDS[args[0]] : undefined;
  const asked = Object.hasOwn(COMMANDS, command ?? '') && (args.includes('--help') || args.includes('-h')) ? COMMANDS[command!] : help;
  if (asked) {
    process.stdout.write(commandHelp(asked));
    return 0;
  }
  try {
    switch (command) {
      case 'run':
        return await run(args);
      case 'status':
        return await status(args);
      case 'drop':
        return await drop(args);
      case 'resync':
        return await resync(args);
      case 'check':
        return await check(args);
      case 'verify':
        return await verify(args);
      case 'sql':
        return await sql(args);
      case 'slots':
        return await slots(args);
      case 'sync-sequences':
        return await syncSequencesCommand(args);
      case 'create-tables':
        return await createTables(args);
      case 'serve-ipc':
        return await serveIpc();
      case 'hold-snapshot':
        // Internal: started detached by a run's chunked copy (snapshotHolder.ts), not by people.
        if (process.stdin.isTTY) throw new UsageError(HOLD_SNAPSHOT_BY_HAND);
        return await runSnapshotHolder(process.stdin, process.stdout).then((code) => {
          // 2: no orders came (stdin was empty or not a run's), which is what running it by hand gives.
          if (code === 2) throw new UsageError(HOLD_SNAPSHOT_BY_HAND);
          return code;
        });
      case '--version':
      case '-V':
      case 'version':
        process.stdout.write(`pg-live-sync ${VERSION}\n`);
        return 0;
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE + '\n');
        return command === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command "${command}"`);
    }
  } catch (err) {
    if (err instanceof UsageError || (err instanceof SyncError && err.code === 'usage')) {
      const more = command !== undefined && Object.hasOwn(COMMANDS, command) ? `pg-live-sync ${command} --help` : 'pg-live-sync --help';
      process.stderr.write(`pg-live-sync: ${oneLine(err.message)}; run ${more} for usage\n`);
      return 2;
    }
    // Every failed check on a line of its own, as `check` prints them, so all are fixed in one go.
    if (err instanceof CheckError && err.problems.length > 1) {
      for (const p of err.problems) process.stderr.write(`pg-live-sync: error: ${oneLine(p)}\n`);
      process.stderr.write(`pg-live-sync: ${err.problems.length} checks failed (above); nothing was created; fix them and run again\n`);
      return 1;
    }
    process.stderr.write(`pg-live-sync: error: ${oneLine(errorMessage(err))}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then((code) => process.exit(code));
