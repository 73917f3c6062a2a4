/**
 * Everything that would make `run` fail is checked before anything is created on either side,
 * and each finding is one line with the fix.
 */
import type pg from 'pg';
import { connect, describeEndpoint, qualified, quoteIdent, type Endpoint } from './connection';
import { listPublishedTables, publicationsMissing, replicaIdentityFix, targetColumns, type PublishedTable } from './catalog';
import { SyncError } from './errors';
import { resolveTarget } from './tablemap';
import type { SyncedTable, TableMap } from './types';

const FIRST_USER_OID = 16384;

export async function checkSource(client: pg.Client, endpoint: Endpoint, publications: string[]): Promise<PublishedTable[]> {
  const where = describeEndpoint(endpoint.url);
  const wal = (await client.query('SHOW wal_level')).rows[0].wal_level as string;
  if (wal !== 'logical') {
    throw new SyncError(`wal_level on the source ${where} is "${wal}" but logical replication needs "logical"; run ALTER SYSTEM SET wal_level = logical; on the source and restart it`, 'wal_level');
  }
  const role = (await client.query(`SELECT current_user AS name, rolreplication OR rolsuper AS ok FROM pg_roles WHERE rolname = current_user`)).rows[0];
  if (!role.ok) {
    throw new SyncError(`role "${role.name}" on the source ${where} lacks the REPLICATION privilege; run ALTER ROLE ${quoteIdent(role.name)} WITH REPLICATION; as a superuser (on RDS: GRANT rds_replication TO ${quoteIdent(role.name)};)`, 'privilege');
  }
  const missing = await publicationsMissing(client, publications);
  if (missing.length > 0) {
    throw new SyncError(`publication "${missing[0]}" does not exist on the source ${where}; create it there, for example CREATE PUBLICATION ${quoteIdent(missing[0])} FOR TABLE ...; or fix --publication`, 'publication');
  }
  const tables = await listPublishedTables(client, publications);
  if (tables.length === 0) {
    throw new SyncError(`publication ${publications.map((p) => `"${p}"`).join(', ')} on the source ${where} publishes no tables; add some with ALTER PUBLICATION ${quoteIdent(publications[0])} ADD TABLE ...;`, 'publication');
  }
  const noIdentity = tables.find((t) => t.publishesUpdateOrDelete && !t.hasUsableIdentity);
  if (noIdentity) {
    throw new SyncError(`table ${qualified(noIdentity.schema, noIdentity.table)} has no usable replica identity, so its UPDATEs and DELETEs cannot be replicated; on the source run: ${replicaIdentityFix(noIdentity)}`, 'replica_identity');
  }
  // A walsender connection can still be refused (pg_hba "replication" lines, max_wal_senders):
  // find out now, before the slot exists.
  const repl = await connect(endpoint, { replication: true });
  try {
    await repl.query('IDENTIFY_SYSTEM');
  } finally {
    await repl.end().catch(() => undefined);
  }
  return tables;
}

export async function checkTarget(client: pg.Client, endpoint: Endpoint, published: PublishedTable[], maps: TableMap[]): Promise<SyncedTable[]> {
  const where = describeEndpoint(endpoint.url);
  try {
    await client.query('SET session_replication_role = replica');
    await client.query('RESET session_replication_role');
  } catch (err) {
    const user = (await client.query('SELECT current_user AS u')).rows[0].u as string;
    throw new SyncError(`role "${user}" on the target ${where} cannot SET session_replication_role (${(err as Error).message}); connect to the target as a superuser (on RDS a member of rds_superuser)`, 'privilege');
  }
  const synced: SyncedTable[] = [];
  const seen = new Map<string, string>();
  for (const t of published) {
    const target = resolveTarget(maps, { schema: t.schema, table: t.table });
    const targetName = qualified(target.schema, target.table);
    const sourceName = qualified(t.schema, t.table);
    const other = seen.get(targetName);
    if (other) {
      throw new SyncError(`source tables ${other} and ${sourceName} both map to the target table ${targetName}; give each its own --table-map`, 'table_map');
    }
    seen.set(targetName, sourceName);
    const cols = await targetColumns(client, target);
    if (!cols) {
      throw new SyncError(`target table ${targetName} (for source table ${sourceName}) does not exist on the target ${where}; create it first, for example: pg_dump --schema-only -t '${sourceName.replace(/'/g, "'\\''")}' "$SOURCE" | psql "$TARGET"`, 'target_table');
    }
    const byName = new Map(cols.filter((c) => !c.generated).map((c) => [c.name, c]));
    const missing = t.columns.find((c) => !byName.has(c.name));
    if (missing) {
      throw new SyncError(`target table ${targetName} has no column ${quoteIdent(missing.name)} (source ${sourceName} has it); run on the target: ALTER TABLE ${targetName} ADD COLUMN ${quoteIdent(missing.name)} ${missing.type};`, 'target_column');
    }
    const sameTypes = t.columns.every((c) => byName.get(c.name)?.type === c.type);
    const builtin = t.columns.every((c) => c.typeOid < FIRST_USER_OID);
    synced.push({
      relid: t.relid,
      source: { schema: t.schema, table: t.table },
      target,
      publications: t.publications,
      columns: t.columns,
      rowFilter: t.rowFilter,
      // Binary COPY carries type OIDs inside arrays and records and needs identical types: only
      // built-in types on both sides qualify, the rest go through text.
      copyFormat: sameTypes && builtin ? 'binary' : 'text',
      approximateRows: t.approximateRows,
      approximateSize: t.approximateSize,
    });
  }
  return synced;
}
