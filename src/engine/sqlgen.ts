/**
 * SQL a user reviews and runs to prepare a server: tuning, replica identities, a connector role.
 * Shared by `pg-live-sync sql` and the extension's Generate commands. Identifiers are quoted;
 * nothing secret is ever written into the SQL. Every comment goes through `note`: a name with a
 * line break in it would otherwise end its comment and have the rest run as SQL.
 */
import type pg from 'pg';
import { qualified, quoteIdent, quoteLiteral } from './connection';
import { oneLine } from './oneLine';

export interface ServerFacts {
  version: string;
  /** Amazon RDS or Aurora: settings live in a parameter group, not ALTER SYSTEM. */
  rds: boolean;
  settings: Map<string, { value: string; unit: string | null; context: string }>;
  slotsInUse: number;
  sendersInUse: number;
}

export async function readServerFacts(client: pg.Client): Promise<ServerFacts> {
  const r = await client.query(
    `SELECT name, setting, unit, context FROM pg_settings
      WHERE name IN ('wal_level', 'max_wal_senders', 'max_replication_slots', 'wal_sender_timeout', 'max_slot_wal_keep_size', 'rds.logical_replication')`,
  );
  const facts = await client.query(
    `SELECT current_setting('server_version') AS version,
            EXISTS (SELECT 1 FROM pg_roles WHERE rolname IN ('rds_superuser', 'rds_replication')) AS rds,
            (SELECT count(*) FROM pg_replication_slots)::int AS slots,
            (SELECT count(*) FROM pg_stat_replication)::int AS senders`,
  );
  return {
    version: facts.rows[0].version,
    rds: facts.rows[0].rds || r.rows.some((row) => row.name === 'rds.logical_replication'),
    settings: new Map(r.rows.map((row) => [row.name as string, { value: row.setting as string, unit: row.unit as string | null, context: row.context as string }])),
    slotsInUse: facts.rows[0].slots,
    sendersInUse: facts.rows[0].senders,
  };
}

/** Text that is safe inside a comment or on one display line: the one escaping, under its older name. */
export const commentText = oneLine;

/** A `--` comment line, whatever the names in it hold. */
export function note(text: string): string {
  return `-- ${commentText(text)}`;
}

interface Change {
  name: string;
  value: string;
  why: string;
  restart: boolean;
}

/** What a source needs for logical replication with headroom, compared with what it has. */
export function tuningChanges(f: ServerFacts, headroom = 10): Change[] {
  const changes: Change[] = [];
  const num = (name: string) => Number(f.settings.get(name)?.value ?? 0);
  if (f.settings.get('wal_level')?.value !== 'logical') {
    changes.push({ name: 'wal_level', value: 'logical', why: `logical decoding needs it (now ${f.settings.get('wal_level')?.value})`, restart: true });
  }
  const senders = Math.max(10, f.sendersInUse + headroom);
  if (num('max_wal_senders') < senders) {
    changes.push({ name: 'max_wal_senders', value: String(senders), why: `one per sync stream plus one per table syncing on its own (now ${num('max_wal_senders')}, ${f.sendersInUse} in use)`, restart: true });
  }
  const slots = Math.max(10, f.slotsInUse + headroom);
  if (num('max_replication_slots') < slots) {
    changes.push({ name: 'max_replication_slots', value: String(slots), why: `one per sync plus one per table syncing on its own (now ${num('max_replication_slots')}, ${f.slotsInUse} in use)`, restart: true });
  }
  const timeoutMs = num('wal_sender_timeout');
  if (timeoutMs === 0 || timeoutMs < 10_000) {
    changes.push({ name: 'wal_sender_timeout', value: '60s', why: timeoutMs === 0 ? 'with 0 a dead connection is never noticed and keeps its slot busy' : `${timeoutMs} ms drops connections during long applies`, restart: false });
  }
  return changes;
}

export function tuningSql(f: ServerFacts, serverName: string): string {
  const changes = tuningChanges(f);
  const head = [note(`Tuning for logical replication on ${serverName} (PostgreSQL ${f.version})`)];
  if (changes.length === 0) return [...head, note('Nothing to change: this server is ready for logical replication.'), ''].join('\n');
  if (f.rds) {
    const lines = [...head, note('This is Amazon RDS / Aurora: ALTER SYSTEM is not allowed. In the console (or the CLI), edit the'),
      note('DB parameter group (Aurora: the DB cluster parameter group) attached to this instance:')];
    for (const c of changes) {
      const param = c.name === 'wal_level' ? 'rds.logical_replication = 1   (sets wal_level = logical)' : `${c.name} = ${c.value}`;
      lines.push(note(`  ${param.padEnd(58)} ${c.why}${c.restart ? '; needs a reboot' : ''}`));
    }
    lines.push(note('then reboot the instance if any line above says so, and check again with:'));
    lines.push(`SELECT name, setting FROM pg_settings WHERE name IN (${changes.map((c) => quoteLiteral(c.name)).join(', ')});`, '');
    return lines.join('\n');
  }
  const lines = [...head];
  for (const c of changes) {
    lines.push(note(`${c.why}; ${c.restart ? 'takes effect after a server restart' : 'takes effect on reload'}`));
    lines.push(`ALTER SYSTEM SET ${c.name} = ${quoteLiteral(c.value)};`);
  }
  if (changes.some((c) => !c.restart)) lines.push(note('apply the settings that need no restart now'), 'SELECT pg_reload_conf();');
  if (changes.some((c) => c.restart)) lines.push(note(`RESTART NEEDED for: ${changes.filter((c) => c.restart).map((c) => c.name).join(', ')} (for example: sudo systemctl restart postgresql)`));
  lines.push('');
  return lines.join('\n');
}

export interface TableIdentity {
  schema: string;
  table: string;
  /** p(rimary key in use), i(ndex), f(ull), n(othing usable) */
  identity: 'primary key' | 'index' | 'full' | 'none';
  candidateIndex: string | null;
}

/** Every user table (or a publication's tables) with its replica identity as it stands. */
export async function tableIdentities(client: pg.Client, publication?: string): Promise<TableIdentity[]> {
  const r = await client.query(
    `SELECT n.nspname AS schema, c.relname AS "table",
            CASE c.relreplident
              WHEN 'f' THEN 'full'
              WHEN 'i' THEN CASE WHEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisreplident) THEN 'index' ELSE 'none' END
              WHEN 'd' THEN CASE WHEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) THEN 'primary key' ELSE 'none' END
              ELSE 'none' END AS identity,
            (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indpred IS NULL AND i.indexprs IS NULL
                AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ANY(i.indkey) AND NOT a.attnotnull)
              ORDER BY i.indisprimary DESC, array_length(i.indkey, 1), ic.relname LIMIT 1) AS "candidateIndex"
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
        AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> '_pg_live_sync'
        AND ($1::text IS NULL OR EXISTS (SELECT 1 FROM pg_publication_tables pt WHERE pt.pubname = $1 AND pt.schemaname = n.nspname AND pt.tablename = c.relname))
      ORDER BY 1, 2`,
    [publication ?? null],
  );
  return r.rows;
}

export function replicaIdentitySql(tables: TableIdentity[], scope: string): string {
  const lines = [note(`Replica identity for ${scope}: how UPDATEs and DELETEs find their row on the target`)];
  let changes = 0;
  for (const t of tables) {
    const name = qualified(t.schema, t.table);
    if (t.identity === 'primary key' || t.identity === 'index' || t.identity === 'full') {
      lines.push(note(`${name}: ${t.identity === 'full' ? 'REPLICA IDENTITY FULL already' : `uses its ${t.identity}`}; nothing to do`));
    } else if (t.candidateIndex) {
      changes++;
      lines.push(note(`${name}: no primary key; its unique index ${quoteIdent(t.candidateIndex)} (non-partial, NOT NULL columns) can identify rows`));
      lines.push(identityFix(t));
    } else {
      changes++;
      lines.push(note(`${name}: no primary key and no usable unique index. WARNING: FULL writes the whole old row to WAL`));
      lines.push(note('for every UPDATE and DELETE, and the target scans for it; add a primary key if you can.'));
      lines.push(identityFix(t));
    }
  }
  if (tables.length === 0) lines.push(note('No tables.'));
  else if (changes === 0) lines.push(note('Every table already has a usable replica identity.'));
  lines.push('');
  return lines.join('\n');
}

/** The statement that gives a table a usable replica identity: its unique index if it has one, else FULL. */
function identityFix(t: TableIdentity): string {
  const name = qualified(t.schema, t.table);
  return t.candidateIndex ? `ALTER TABLE ${name} REPLICA IDENTITY USING INDEX ${quoteIdent(t.candidateIndex)};` : `ALTER TABLE ${name} REPLICA IDENTITY FULL;`;
}

/**
 * Add Table to Publication: the ALTER PUBLICATION, and for picked tables without a usable replica
 * identity the warning and the statements that give them one. Once published, the source refuses
 * every UPDATE and DELETE on such a table, which the application would meet first.
 */
export function addTablesPlan(publication: string, tables: TableIdentity[]): { add: string; identityFixes: string[]; warning: string | null } {
  const add = `ALTER PUBLICATION ${quoteIdent(publication)} ADD TABLE ${tables.map((t) => qualified(t.schema, t.table)).join(', ')};`;
  const lacking = tables.filter((t) => t.identity === 'none');
  if (lacking.length === 0) return { add, identityFixes: [], warning: null };
  const names = lacking.map((t) => qualified(t.schema, t.table)).join(', ');
  const warning = `${lacking.length === 1 ? `${names} has` : `${lacking.length} of these tables have`} no replica identity${lacking.length === 1 ? '' : ` (${names})`}: once published, the source refuses every UPDATE and DELETE on ${lacking.length === 1 ? 'it' : 'them'} ("does not have a replica identity and publishes updates"). Add ${lacking.length === 1 ? 'it' : 'them'} with a replica identity (a unique index where there is one, else FULL), or add only if ${lacking.length === 1 ? 'it is' : 'they are'} never updated or deleted from.`;
  return { add, identityFixes: lacking.map(identityFix), warning: oneLine(warning) };
}

/** A role for the connector: can replicate, read the published schemas, create its slot's state. */
export async function connectorRoleSql(client: pg.Client, role: string, schemas: string[], rds: boolean): Promise<string> {
  const db = (await client.query('SELECT current_database() AS d')).rows[0].d as string;
  const r = quoteIdent(role);
  const lines = [
    note(`A role for Postgres Live Sync on database ${quoteIdent(db)}. Set its password yourself (psql: \\password ${r});`),
    note('it is never written here.'),
    `CREATE ROLE ${r} WITH LOGIN ${rds ? '' : 'REPLICATION '}PASSWORD NULL;`,
  ];
  if (rds) lines.push(`GRANT rds_replication TO ${r};  -- RDS/Aurora grants replication through this role`);
  lines.push(`GRANT CREATE ON DATABASE ${quoteIdent(db)} TO ${r};  -- publications and the sync's own schema`);
  for (const s of schemas) {
    const q = quoteIdent(s);
    lines.push(`GRANT USAGE ON SCHEMA ${q} TO ${r};`);
    lines.push(`GRANT SELECT ON ALL TABLES IN SCHEMA ${q} TO ${r};  -- the initial copy reads every table`);
    lines.push(`ALTER DEFAULT PRIVILEGES IN SCHEMA ${q} GRANT SELECT ON TABLES TO ${r};  -- and tables created later`);
  }
  lines.push('');
  return lines.join('\n');
}

/**
 * A role for the sync on the target that is not a superuser: the owners of the target tables can
 * attach code to them (triggers, defaults, ...) that runs as the role writing the rows, so that
 * role should hold no more than the sync needs. Written as comments: this text goes with the
 * source's SQL, and a script piped into the source must not grant writes on the source's tables.
 * `target` null: not connected, written for PostgreSQL 15+ and the source's database name.
 */
export async function targetRoleSql(target: pg.Client | null, fallbackDatabase: string, role: string, schemas: string[]): Promise<string> {
  const facts = target
    ? (await target.query(`SELECT current_database() AS d, current_setting('server_version_num')::int AS v`)).rows[0]
    : { d: fallbackDatabase, v: null };
  const r = quoteIdent(role);
  const db = quoteIdent(facts.d as string);
  const sql = (statement: string) => note(`    ${statement}`);
  const lines = [
    note(`ON THE TARGET (database ${db}${target ? '' : ', named as on the source: give --target to read it'}), as a superuser there, uncommented: the sync's role`),
    note('there, not a superuser, so code the owners of the target tables attach to them (triggers, defaults, ...) never runs as one.'),
    note(`Set its password yourself (psql: \\password ${r}).`),
    sql(`CREATE ROLE ${r} WITH LOGIN PASSWORD NULL;`),
    sql(`GRANT CREATE ON DATABASE ${db} TO ${r};  -- its state schema _pg_live_sync`),
  ];
  if (facts.v !== null && facts.v < 150000) {
    lines.push(note(`PostgreSQL ${Math.floor(facts.v / 10000)} cannot GRANT SET ON PARAMETER: only a superuser may set session_replication_role, which the`));
    lines.push(note('sync needs (rows applied without firing ordinary triggers and foreign keys); PostgreSQL 15+ can grant it.'));
  } else {
    lines.push(sql(`GRANT SET ON PARAMETER session_replication_role TO ${r};  -- PostgreSQL 15+: rows applied without firing ordinary triggers and foreign keys`));
  }
  for (const s of schemas) {
    const q = quoteIdent(s);
    lines.push(sql(`GRANT USAGE ON SCHEMA ${q} TO ${r};`));
    lines.push(sql(`GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA ${q} TO ${r};  -- the copy and the stream write every table`));
    lines.push(sql(`GRANT SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA ${q} TO ${r};  -- sync-sequences at cutover`));
  }
  lines.push(note('--create-tables and --apply-ddl add-column also need CREATE on those schemas, or the role owning the tables.'));
  lines.push('');
  return lines.join('\n');
}
