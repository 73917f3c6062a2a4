/**
 * Everything that would make a sync fail, checked before anything is created on either side. Each
 * finding is one line with its fix. `pg-live-sync check` prints them all; `run` refuses to start
 * on any error, naming every one, and logs the warnings.
 */
import type pg from 'pg';
import { connect, describeEndpoint, endpointAddress, qualified, quoteIdent, quoteLiteral, tableKey, type Endpoint } from './connection';
import { listPublishedTables, noReplicaIdentityWarning, publicationsMissing, targetColumns, type PublishedTable } from './catalog';
import { errorMessage } from './errors';
import { slotInfo, slotNameFor } from './slot';
import { mappedColumn, resolveColumnMap, resolveTarget } from './tablemap';
import type { ColumnMap, SyncedColumn, SyncedTable, TableMap } from './types';

const FIRST_USER_OID = 16384;

export interface Finding {
  severity: 'error' | 'warning';
  /** One line: the problem, then `;` and the fix. */
  message: string;
  /** The source table (schema.table) a table-level finding is about. */
  table?: string;
}

export interface SourceCheck {
  findings: Finding[];
  published: PublishedTable[];
}

export async function checkSource(client: pg.Client, endpoint: Endpoint, publications: string[], subscription: string | null): Promise<SourceCheck> {
  const where = describeEndpoint(endpoint.url);
  const findings: Finding[] = [];
  const error = (message: string) => findings.push({ severity: 'error', message });
  const warning = (message: string) => findings.push({ severity: 'warning', message });

  const settings = (await client.query(
    `SELECT current_setting('wal_level') AS wal_level,
            current_setting('max_replication_slots')::int AS max_slots,
            (SELECT count(*) FROM pg_replication_slots)::int AS slots,
            current_setting('max_wal_senders')::int AS max_senders,
            (SELECT count(*) FROM pg_stat_replication)::int AS senders,
            current_setting('wal_sender_timeout') AS wal_sender_timeout,
            (SELECT setting::int FROM pg_settings WHERE name = 'wal_sender_timeout') AS wal_sender_timeout_ms,
            inet_server_port() AS server_port,
            current_user AS role,
            (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user) AS can_replicate`,
  )).rows[0];
  if (settings.wal_level !== 'logical') {
    error(`wal_level on the source ${where} is "${settings.wal_level}" but logical replication needs "logical"; run ALTER SYSTEM SET wal_level = logical; on the source and restart it`);
  }
  const freeSlots = settings.max_slots - settings.slots;
  if (freeSlots < 1) error(`the source ${where} has no free replication slot (${settings.slots} of max_replication_slots ${settings.max_slots} used); raise max_replication_slots (needs a restart) or drop unused slots`);
  else if (freeSlots < 2) warning(`the source ${where} has ${freeSlots} free replication slot; tables added later each need one more while they sync: raise max_replication_slots`);
  const freeSenders = settings.max_senders - settings.senders;
  if (freeSenders < 1) error(`the source ${where} has no free WAL sender (${settings.senders} of max_wal_senders ${settings.max_senders} in use); raise max_wal_senders (needs a restart)`);
  else if (freeSenders < 2) warning(`the source ${where} has ${freeSenders} free WAL sender; syncing added tables needs one more each: raise max_wal_senders`);
  if (settings.wal_sender_timeout_ms === 0) {
    warning(`wal_sender_timeout is 0 on the source ${where}, so a dead replication connection is never noticed and its slot stays busy; set it, for example ALTER SYSTEM SET wal_sender_timeout = '60s'; SELECT pg_reload_conf();`);
  }
  if (!settings.can_replicate) {
    error(`role "${settings.role}" on the source ${where} lacks the REPLICATION privilege; run ALTER ROLE ${quoteIdent(settings.role)} WITH REPLICATION; as a superuser (on RDS: GRANT rds_replication TO ${quoteIdent(settings.role)};)`);
  }
  poolerCheck(endpoint, settings.server_port, warning);

  if (subscription !== null) {
    const slot = await slotInfo(client, slotNameFor(subscription));
    if (slot?.active) error(`subscription "${subscription}" is already running: its replication slot "${slotNameFor(subscription)}" on the source is in use; stop that run first (or pick another --subscription)`);
    if (slot?.walStatus === 'lost') error(`replication slot "${slotNameFor(subscription)}" has lost WAL it needed (wal_status lost); run pg-live-sync drop --subscription ${subscription} and run again to copy afresh`);
  }

  const missing = await publicationsMissing(client, publications);
  for (const name of missing) {
    error(`publication "${name}" does not exist on the source ${where}; create it there, for example CREATE PUBLICATION ${quoteIdent(name)} FOR TABLE ...; or fix --publication`);
  }
  const published = missing.length === 0 ? await listPublishedTables(client, publications) : [];
  if (missing.length === 0 && published.length === 0) {
    error(`publication ${publications.map((p) => `"${p}"`).join(', ')} on the source ${where} publishes no tables; add some with ALTER PUBLICATION ${quoteIdent(publications[0])} ADD TABLE ...;`);
  }
  for (const t of published) {
    const name = qualified(t.schema, t.table);
    const table = tableKey(t.schema, t.table);
    const error = (message: string) => findings.push({ severity: 'error', message, table });
    if (!t.canSelect) error(`role "${settings.role}" cannot SELECT from ${name} on the source; run GRANT SELECT ON ${name} TO ${quoteIdent(settings.role)};`);
    if (t.publishesUpdateOrDelete && !t.hasUsableIdentity) {
      findings.push({ severity: 'warning', message: noReplicaIdentityWarning(t), table });
    } else if (t.replicaIdentity === 'f' && t.candidateIndex) {
      warning(`table ${name} uses REPLICA IDENTITY FULL: each UPDATE and DELETE scans for the row on the target; cheaper: ALTER TABLE ${name} REPLICA IDENTITY USING INDEX ${quoteIdent(t.candidateIndex)};`);
    }
  }
  if (findings.every((f) => f.severity !== 'error')) {
    // A walsender connection can still be refused (pg_hba "replication" lines): find out now.
    try {
      const repl = await connect(endpoint, { replication: true });
      await repl.query('IDENTIFY_SYSTEM').finally(() => repl.end().catch(() => undefined));
    } catch (err) {
      error(`${errorMessage(err)} (replication connection)`);
    }
  }
  return { findings, published };
}

export interface TargetCheck {
  findings: Finding[];
  synced: SyncedTable[];
  /** Per source table, the first error that keeps it from syncing. */
  tableErrors: Map<string, string>;
  /**
   * Tables whose only errors are source columns the target table lacks (a column added on the
   * source): schema drift, which stops only that table (see drift.ts). The columns, by name.
   */
  driftOnly: Map<string, { table: SyncedTable; columns: string[] }>;
}

export async function checkTarget(
  client: pg.Client,
  endpoint: Endpoint,
  published: PublishedTable[],
  maps: TableMap[],
  /** createTables: `check --create-tables` (run would create the missing tables first, so they are no error). */
  opts: { source?: pg.Client; freshStart?: boolean; createTables?: boolean } = {},
): Promise<TargetCheck> {
  const where = describeEndpoint(endpoint.url);
  const findings: Finding[] = [];
  const tableErrors = new Map<string, string>();
  const driftOnly = new Map<string, { table: SyncedTable; columns: string[] }>();
  const settings = (await client.query(`SELECT inet_server_port() AS server_port, current_user AS role`)).rows[0];
  try {
    await client.query('SET session_replication_role = replica');
    await client.query('RESET session_replication_role');
  } catch (err) {
    findings.push({ severity: 'error', message: `role "${settings.role}" on the target ${where} cannot SET session_replication_role (${errorMessage(err)}); on PostgreSQL 15+ have a superuser run GRANT SET ON PARAMETER session_replication_role TO ${quoteIdent(settings.role)}; (pg-live-sync sql role --target prints the whole role), otherwise connect to the target as a superuser (on RDS a member of rds_superuser)` });
  }
  poolerCheck(endpoint, settings.server_port, (message) => findings.push({ severity: 'warning', message }));
  const targetExtensions = new Set((await client.query(`SELECT extname FROM pg_extension`)).rows.map((r) => r.extname as string));
  const typeExtensions = opts.source ? await extensionsOfTypes(opts.source, published) : new Map<number, string>();

  const synced: SyncedTable[] = [];
  const seen = new Map<string, string>();
  for (const t of published) {
    const key = tableKey(t.schema, t.table);
    let otherErrors = 0;
    const lacking: string[] = [];
    const tableError = (message: string, lackingColumn?: string) => {
      findings.push({ severity: 'error', message, table: key });
      if (!tableErrors.has(key)) tableErrors.set(key, message);
      if (lackingColumn === undefined) otherErrors++;
      else lacking.push(lackingColumn);
    };
    const target = resolveTarget(maps, { schema: t.schema, table: t.table });
    const targetName = qualified(target.schema, target.table);
    const sourceName = qualified(t.schema, t.table);
    const other = seen.get(targetName);
    if (other) {
      tableError(`source tables ${other} and ${sourceName} both map to the target table ${targetName}; give each its own --table-map`);
      continue;
    }
    seen.set(targetName, sourceName);
    for (const c of t.columns) {
      const ext = typeExtensions.get(c.typeOid);
      if (ext && !targetExtensions.has(ext)) tableError(`column ${quoteIdent(c.name)} of ${sourceName} has type ${c.type} from extension "${ext}", which the target lacks; run on the target: CREATE EXTENSION ${quoteIdent(ext)};`);
    }
    const columnMap = resolveColumnMap(maps, { schema: t.schema, table: t.table });
    let mapErrors = 0;
    const columns = mapColumns(t, columnMap, !!opts.freshStart, (message) => {
      mapErrors++;
      tableError(message);
    });
    // The target's columns are checked against the map's names: a bad map comes first, alone.
    if (mapErrors > 0) continue;
    const cols = await targetColumns(client, target);
    if (!cols && opts.createTables) {
      findings.push({ severity: 'warning', message: `target table ${targetName} (for source table ${sourceName}) does not exist on the target ${where} yet; run --create-tables creates it from the source (pg-live-sync create-tables --dry-run prints its DDL)`, table: key });
      continue;
    }
    if (!cols) {
      const quotedForShell = sourceName.replace(/'/g, "'\\''");
      tableError(`target table ${targetName} (for source table ${sourceName}) does not exist on the target ${where}; run with --create-tables to have it created from the source (or pg-live-sync create-tables), or create it first, for example: pg_dump --schema-only -t '${quotedForShell}' "$SOURCE" | psql "$TARGET"`);
      continue;
    }
    const byName = new Map(cols.map((c) => [c.name, c]));
    for (const c of columns) {
      const tc = byName.get(c.target);
      const col = quoteIdent(c.target);
      if (!tc && c.target !== c.name) {
        // Not schema drift: the name comes from the map, so adding the source's column would not help.
        tableError(`target table ${targetName} has no column ${col}, the target name --table-map "columns" gives source column ${quoteIdent(c.name)} of ${sourceName}; add it on the target (ALTER TABLE ${targetName} ADD COLUMN ${col} ${c.type};) or fix the name in the map`);
      } else if (!tc) tableError(`target table ${targetName} has no column ${col} (source ${sourceName} has it); run on the target: ALTER TABLE ${targetName} ADD COLUMN ${col} ${c.type};`, c.name);
      else if (tc.generated) tableError(`column ${col} of ${targetName} is a generated column on the target, so it cannot take the source's values; make it a plain column on the target: ALTER TABLE ${targetName} ALTER COLUMN ${col} DROP EXPRESSION;`);
      else if (tc.alwaysIdentity) {
        findings.push({ severity: 'warning', message: `target column ${col} of ${targetName} is GENERATED ALWAYS AS IDENTITY: the sync writes the source's values into it (as OVERRIDING SYSTEM VALUE does) and its sequence does not advance; before writing to the target, run there: SELECT setval(pg_get_serial_sequence(${quoteLiteral(targetName)}, ${quoteLiteral(c.target)}), max(${col})) FROM ${targetName};` });
      }
      if (!tc || tc.generated) continue;
      if (tc.type !== c.type) findings.push({ severity: 'warning', message: `column ${col} is ${c.type} on the source but ${tc.type} on the target ${targetName}; values pass as text, so every source value must fit: ALTER TABLE ${targetName} ALTER COLUMN ${col} TYPE ${c.type};` });
    }
    const published = new Set(columns.map((c) => c.target));
    for (const tc of cols) {
      if (!published.has(tc.name) && tc.notNull && !tc.hasDefault && !tc.generated) {
        tableError(`target column ${quoteIdent(tc.name)} of ${targetName} is NOT NULL without a default and gets no value from the source; give it a default or drop NOT NULL: ALTER TABLE ${targetName} ALTER COLUMN ${quoteIdent(tc.name)} DROP NOT NULL;`);
      }
    }
    if (tableErrors.has(key)) {
      if (otherErrors === 0 && lacking.length > 0) {
        const present = new Set(cols.map((c) => c.name));
        driftOnly.set(key, { table: toSyncedTable(t, target, cols, columns.filter((c) => present.has(c.target)), columnMap), columns: lacking });
      }
      continue;
    }
    if (opts.freshStart) {
      const rows = await client.query(`SELECT EXISTS (SELECT 1 FROM ${targetName}) AS any`);
      if (rows.rows[0].any) findings.push({ severity: 'warning', message: `target table ${targetName} is not empty; the initial copy empties it first (its rows are replaced by the source's)` });
    }
    synced.push(toSyncedTable(t, target, cols, columns, columnMap));
  }
  findings.push(...(await untrustedOwnerWarnings(client, synced)));
  return { findings, synced, tableErrors, driftOnly };
}

/**
 * Target tables whose owner is less trusted than the sync's role: what the owner attaches to the
 * table (a trigger enabled ALWAYS or REPLICA, a rule, a default, a check constraint or an index
 * expression calling a function) runs as the sync's role whenever it writes a row. Warned about
 * for every such table when the sync's role is a superuser (the owner may add code later), else
 * only where such code is there now. Functions owned by a superuser are taken as trusted.
 */
async function untrustedOwnerWarnings(client: pg.Client, tables: SyncedTable[]): Promise<Finding[]> {
  if (tables.length === 0) return [];
  const r = await client.query(
    `SELECT u.i, o.rolname AS owner, me.rolname AS me, me.rolsuper AS me_super,
            ARRAY(SELECT format('%s trigger %I', CASE tgenabled WHEN 'A' THEN 'ENABLE ALWAYS' ELSE 'ENABLE REPLICA' END, tgname)
                    FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal AND tgenabled IN ('A', 'R') ORDER BY tgname)
         || ARRAY(SELECT format('rule %I', rulename) FROM pg_rewrite WHERE ev_class = c.oid AND rulename <> '_RETURN' AND ev_enabled IN ('A', 'R') ORDER BY rulename)
         || ARRAY(SELECT DISTINCT format('function %s in a %s', p.oid::regprocedure, CASE d.classid WHEN 'pg_attrdef'::regclass THEN 'default' WHEN 'pg_constraint'::regclass THEN 'check constraint' ELSE 'index' END)
                    FROM pg_depend d JOIN pg_proc p ON p.oid = d.refobjid JOIN pg_roles po ON po.oid = p.proowner
                   WHERE d.refclassid = 'pg_proc'::regclass AND NOT po.rolsuper
                     AND ((d.classid = 'pg_attrdef'::regclass AND d.objid IN (SELECT oid FROM pg_attrdef WHERE adrelid = c.oid))
                       OR (d.classid = 'pg_constraint'::regclass AND d.objid IN (SELECT oid FROM pg_constraint WHERE conrelid = c.oid))
                       OR (d.classid = 'pg_class'::regclass AND d.objid IN (SELECT indexrelid FROM pg_index WHERE indrelid = c.oid))))
            AS code
       FROM unnest($1::text[]) WITH ORDINALITY AS u(name, i)
       JOIN pg_class c ON c.oid = to_regclass(u.name)
       JOIN pg_roles o ON o.oid = c.relowner
       JOIN pg_roles me ON me.rolname = current_user
      WHERE o.oid <> me.oid AND NOT o.rolsuper`,
    [tables.map((t) => qualified(t.target.schema, t.target.table))],
  );
  const out: Finding[] = [];
  for (const row of r.rows) {
    const code = row.code as string[];
    if (!row.me_super && code.length === 0) continue;
    const t = tables[Number(row.i) - 1];
    const name = qualified(t.target.schema, t.target.table);
    const as = `"${row.me}"${row.me_super ? ', a superuser' : ''}`;
    const now = code.length > 0 ? ` (there now: ${code.join(', ')})` : '';
    const fix = row.me_super
      ? `connect to the target as a role that is not a superuser (pg-live-sync sql role --target prints one), or make the sync's role its owner after reviewing it: ALTER TABLE ${name} OWNER TO ${quoteIdent(row.me)};`
      : `review that code, or make the sync's role its owner: ALTER TABLE ${name} OWNER TO ${quoteIdent(row.me)};`;
    out.push({
      severity: 'warning',
      table: tableKey(t.source.schema, t.source.table),
      message: `target table ${name} is owned by role "${row.owner}", not by the sync's role ${as}: triggers enabled ALWAYS or REPLICA, rules, defaults, check constraints and index expressions "${row.owner}" attaches to it run as ${as} each time the sync writes a row${now}; ${fix}`,
    });
  }
  return out;
}

/**
 * The published columns under the table's column map: each with its target name, excluded ones
 * left out. Bad entries are reported through `tableError`. A map entry excluding a column the
 * source no longer has is an error only on a fresh start: once syncing, it is a column dropped
 * on the source that the target never had.
 */
/**
 * `--table-map` entries that match nothing the publications publish. A table the source lacks is
 * a typo, which would otherwise sync the table under its own name without a word: an error. A
 * table that exists but is not published yet (it may join later), or a schema with no published
 * table, is a warning.
 */
export async function unmatchedTableMaps(source: pg.Client, maps: TableMap[], published: PublishedTable[], publications: string[]): Promise<Finding[]> {
  const pubs = publications.map((p) => `"${p}"`).join(', ');
  const findings: Finding[] = [];
  for (const m of maps) {
    const { schema, table } = m.source;
    if (published.some((t) => t.schema === schema && (table === undefined || t.table === table))) continue;
    if (table === undefined) {
      findings.push({ severity: 'warning', message: `--table-map maps schema ${quoteIdent(schema)}, but publication ${pubs} publishes no table in it; check the schema name` });
      continue;
    }
    const exists = (await source.query(
      `SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`, [schema, table],
    )).rowCount! > 0;
    findings.push(exists
      ? { severity: 'warning', message: `--table-map names the source table ${qualified(schema, table)}, which publication ${pubs} does not publish yet; the map applies once it joins` }
      : { severity: 'error', message: `--table-map names the source table ${qualified(schema, table)}, which the source does not have; fix the name (names are exact, as the catalog spells them)` });
  }
  return findings;
}

export function mapColumns(t: PublishedTable, map: ColumnMap, freshStart: boolean, tableError: (message: string) => void): SyncedColumn[] {
  const sourceName = qualified(t.schema, t.table);
  const published = new Set(t.columns.map((c) => c.name));
  for (const [from, to] of Object.entries(map)) {
    if (published.has(from) || (to === null && !freshStart)) continue;
    tableError(`--table-map "columns" names ${quoteIdent(from)}, which is not a published column of source table ${sourceName} (names are exact: case and quotes matter); fix the name or remove it from the map`);
  }
  for (const k of t.identityColumns) {
    if (map[k] === null && Object.hasOwn(map, k)) {
      tableError(`--table-map "columns" leaves out ${quoteIdent(k)}, a column of the replica identity of ${sourceName} (its primary key or identity index), so the target could not find rows to update or delete; map it to a target name instead of null`);
    }
  }
  const columns: SyncedColumn[] = [];
  const byTarget = new Map<string, string>();
  for (const c of t.columns) {
    const target = mappedColumn(map, c.name);
    if (target === null) continue;
    const other = byTarget.get(target);
    if (other !== undefined) {
      tableError(`source columns ${quoteIdent(other)} and ${quoteIdent(c.name)} of ${sourceName} both land on target column ${quoteIdent(target)} through --table-map "columns"; give one of them another target name (or null to leave it out)`);
    }
    byTarget.set(target, c.name);
    columns.push({ ...c, target });
  }
  return columns;
}

export function toSyncedTable(t: PublishedTable, target: { schema: string; table: string }, cols: { name: string; type: string }[], columns: SyncedColumn[], columnMap: ColumnMap): SyncedTable {
  const byName = new Map(cols.map((c) => [c.name, c.type]));
  const sameTypes = columns.every((c) => byName.get(c.target) === c.type);
  const builtin = columns.every((c) => c.typeOid < FIRST_USER_OID);
  return {
    relid: t.relid,
    source: { schema: t.schema, table: t.table },
    target,
    publications: t.publications,
    columns,
    columnMap,
    rowFilter: t.rowFilter,
    // Binary COPY carries type OIDs inside arrays and records and needs identical types: only
    // built-in types on both sides qualify, the rest go through text.
    copyFormat: sameTypes && builtin ? 'binary' : 'text',
    partitioned: t.partitioned,
    approximateRows: t.approximateRows,
    approximateSize: t.approximateSize,
  };
}

/** Extension that owns each column type (or the element type of an array), by type OID. */
async function extensionsOfTypes(source: pg.Client, published: PublishedTable[]): Promise<Map<number, string>> {
  const oids = [...new Set(published.flatMap((t) => t.columns.map((c) => c.typeOid)))];
  if (oids.length === 0) return new Map();
  const r = await source.query(
    `SELECT t.oid::int AS oid, e.extname
       FROM pg_type t
       JOIN pg_depend d ON d.classid = 'pg_type'::regclass AND d.objid = CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN t.typelem ELSE t.oid END AND d.deptype = 'e'
       JOIN pg_extension e ON e.oid = d.refobjid
      WHERE t.oid = ANY($1)`,
    [oids],
  );
  return new Map(r.rows.map((row) => [row.oid as number, row.extname as string]));
}

/** A pooler answers on one port and reaches PostgreSQL on another; replication cannot pass it. */
function poolerCheck(endpoint: Endpoint, serverPort: number | null, warn: (m: string) => void): void {
  const { host, port: urlPort } = endpointAddress(endpoint.url);
  if (serverPort !== null && host && !host.startsWith('/') && serverPort !== urlPort) {
    warn(`the ${endpoint.role} URL uses port ${urlPort} but PostgreSQL there listens on ${serverPort}: this looks like a pooler (PgBouncer) or a port forward; a sync needs a direct connection (session state, replication), so connect to PostgreSQL itself`);
  }
}
