/**
 * `--create-tables`: the target tables a sync needs and the target lacks, built from the source's
 * catalog under their target names (the table map applies). Created: schemas, the user types the
 * columns use (enums, domains, composites), columns with NOT NULL, defaults whose every object
 * exists on the target (a serial's own sequence is created with it), identity and generated
 * columns, primary keys, partitioned parents with their partitions. Not created but printed for
 * the user to choose: the other indexes and constraints, which cost writes and may not suit the
 * target. Extensions are never created: a type from one the target lacks is an error naming the
 * CREATE EXTENSION to run.
 */
import type pg from 'pg';
import { qualified, quoteIdent, quoteLiteral, tableKey } from './connection';
import type { PublishedTable } from './catalog';
import { mapColumns, type Finding } from './precheck';
import { note } from './sqlgen';
import { resolveColumnMap, resolveTarget } from './tablemap';
import type { TableMap, TableName } from './types';

const FIRST_USER_OID = 16384;

export interface CreatePlan {
  /** DDL to run on the target, in order, in one transaction. */
  statements: string[];
  /** The source's other indexes and constraints of those tables, under the target names. */
  optional: string[];
  /** What was left out of a created table and why, one line each. */
  notes: string[];
  /** Problems that keep the plan from running (a missing extension, a type it cannot build). */
  errors: Finding[];
  /** Per created table: its source and target names. */
  tables: { source: TableName; target: TableName }[];
}

interface TypeRow {
  oid: number;
  /** format_type() with only pg_catalog on the search path: schema-qualified unless built in. */
  name: string;
  schema: string;
  kind: string;
  array: boolean;
  elem: number;
  relkind: string | null;
  extension: string | null;
}

interface ColumnRow {
  attnum: number;
  name: string;
  type: string;
  type_oid: number;
  not_null: boolean;
  identity: string;
  generated: string;
  default_expr: string | null;
  attrdef: number | null;
  coll_schema: string | null;
  coll_name: string | null;
}

interface SequenceRow {
  attnum: number;
  deptype: string;
  seq_name: string;
  printed: string;
  type: string;
  start: string;
  increment: string;
  min: string;
  max: string;
  cache: string;
  cycle: boolean;
}

interface DependencyRow {
  attrdef: number;
  catalog: string;
  oid: number;
  subid: number;
  name: string;
}

/**
 * Reads everything from the source in one read-only transaction with only pg_catalog on the
 * search path, so that every name the server deparses (types, functions, sequences, tables) comes
 * out schema-qualified and means the same on the target.
 */
export async function planCreateTables(source: pg.Client, target: pg.Client, published: PublishedTable[], maps: TableMap[]): Promise<CreatePlan> {
  const missing: PublishedTable[] = [];
  for (const t of published) {
    if (!(await relationExists(target, resolveTarget(maps, t)))) missing.push(t);
  }
  const plan: CreatePlan = { statements: [], optional: [], notes: [], errors: [], tables: [] };
  if (missing.length === 0) return plan;
  await source.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
  try {
    await source.query('SET LOCAL search_path = pg_catalog');
    await new Planner(source, target, maps, plan).build(missing);
  } finally {
    await source.query('COMMIT').catch(() => undefined);
  }
  return plan;
}

class Planner {
  private readonly schemas = new Set<string>();
  private readonly types: string[] = [];
  private readonly sequences: string[] = [];
  private readonly tableDdl: string[] = [];
  private readonly owners: string[] = [];
  private readonly visited = new Map<number, boolean>();
  /** Printed names of the user types this plan creates, so defaults casting to them are kept. */
  private readonly createdTypes = new Set<string>();

  constructor(private readonly source: pg.Client, private readonly target: pg.Client, private readonly maps: TableMap[], private readonly plan: CreatePlan) {}

  async build(missing: PublishedTable[]): Promise<void> {
    for (const t of missing) {
      const target = resolveTarget(this.maps, t);
      // A bad column map is refused before anything is created.
      const key = tableKey(t.schema, t.table);
      const columns = mapColumns(t, resolveColumnMap(this.maps, t), true, (message) => this.plan.errors.push({ severity: 'error', message, table: key }));
      await this.table(t.relid, { schema: t.schema, table: t.table }, target, new Map(columns.map((c) => [c.name, c.target])), null);
    }
    if (this.plan.errors.length > 0) return;
    const present = new Set((await this.target.query(`SELECT nspname FROM pg_namespace WHERE nspname = ANY($1)`, [[...this.schemas]])).rows.map((r) => r.nspname as string));
    const schemas = [...this.schemas].filter((s) => !present.has(s)).map((s) => `CREATE SCHEMA IF NOT EXISTS ${quoteIdent(s)};`);
    this.plan.statements.push(...schemas, ...this.types, ...this.sequences, ...this.tableDdl, ...this.owners);
  }

  /**
   * One table: `published` maps the columns the sync writes (a column list or the column map may
   * leave some out) to their target names; `parent` makes it a partition of that (target) table,
   * which gives it its columns.
   */
  private async table(relid: number, source: TableName, target: TableName, published: Map<string, string> | null, parent: { name: string; bound: string } | null): Promise<void> {
    const sourceName = qualified(source.schema, source.table);
    const targetName = qualified(target.schema, target.table);
    const rel = (await this.source.query(
      `SELECT c.relkind::text AS relkind, CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partkey
         FROM pg_class c WHERE c.oid = $1`,
      [relid],
    )).rows[0];
    this.schemas.add(target.schema);
    this.plan.tables.push({ source, target });
    const partitionBy = rel.partkey ? ` PARTITION BY ${rel.partkey}` : '';
    if (parent) {
      this.tableDdl.push(`CREATE TABLE ${targetName} PARTITION OF ${parent.name} ${parent.bound}${partitionBy};`);
    } else {
      const renamed = [...published!].some(([from, to]) => from !== to);
      if (renamed && partitionBy) {
        this.plan.errors.push({ severity: 'error', table: tableKey(source.schema, source.table), message: `--create-tables cannot rewrite the partition key of ${sourceName} for the column names --table-map "columns" gives; create ${targetName} and its partitions on the target yourself, then run again` });
        return;
      }
      const lines = await this.columns(relid, sourceName, target, published!);
      if (lines === null) return;
      this.tableDdl.push(`CREATE TABLE ${targetName} (\n  ${lines.join(',\n  ')}\n)${partitionBy};`);
      // The source's definitions name the source's columns; under renames they would name others.
      if (renamed) this.plan.notes.push(`${targetName}: the source's other indexes and constraints are not printed: --table-map "columns" renames columns they name; write them for the target's column names`);
      else await this.optional(relid, targetName);
    }
    if (rel.relkind !== 'p') return;
    const children = await this.source.query(
      `SELECT c.oid::int AS relid, n.nspname AS schema, c.relname AS table, pg_get_expr(c.relpartbound, c.oid) AS bound
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE i.inhparent = $1 ORDER BY n.nspname, c.relname`,
      [relid],
    );
    for (const c of children.rows) {
      const child = { schema: c.schema as string, table: c.table as string };
      await this.table(c.relid, child, resolveTarget(this.maps, child), null, { name: targetName, bound: c.bound });
    }
  }

  /** The column and primary key lines of CREATE TABLE, or null when a type is missing. */
  private async columns(relid: number, sourceName: string, target: TableName, published: Map<string, string>): Promise<string[] | null> {
    const targetName = qualified(target.schema, target.table);
    const cols = (await this.source.query<ColumnRow>(
      `SELECT a.attnum, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int AS type_oid,
              a.attnotnull AS not_null, a.attidentity::text AS identity, a.attgenerated::text AS generated,
              pg_get_expr(ad.adbin, ad.adrelid) AS default_expr, ad.oid::int AS attrdef,
              CASE WHEN a.attcollation <> t.typcollation THEN cn.nspname END AS coll_schema,
              CASE WHEN a.attcollation <> t.typcollation THEN co.collname END AS coll_name
         FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
         LEFT JOIN pg_collation co ON co.oid = a.attcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
        WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum`,
      [relid],
    )).rows;
    const sequences = new Map((await this.source.query<SequenceRow>(
      `SELECT d.refobjsubid AS attnum, d.deptype::text AS deptype, sc.relname AS seq_name, sc.oid::regclass::text AS printed,
              format_type(s.seqtypid, NULL) AS type, s.seqstart::text AS start, s.seqincrement::text AS increment,
              s.seqmin::text AS min, s.seqmax::text AS max, s.seqcache::text AS cache, s.seqcycle AS cycle
         FROM pg_depend d JOIN pg_class sc ON sc.oid = d.objid AND sc.relkind = 'S' JOIN pg_sequence s ON s.seqrelid = sc.oid
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = $1 AND d.deptype IN ('a', 'i')`,
      [relid],
    )).rows.map((s) => [s.attnum, s]));
    // What each default and generation expression refers to (a generation expression's are all
    // 'a'uto dependencies), to keep only those the target can evaluate.
    const deps = (await this.source.query<DependencyRow>(
      `SELECT d.objid::int AS attrdef, d.refclassid::regclass::text AS catalog, d.refobjid::int AS oid, d.refobjsubid AS subid,
              CASE d.refclassid WHEN 'pg_class'::regclass THEN d.refobjid::regclass::text
                                WHEN 'pg_proc'::regclass THEN d.refobjid::regprocedure::text
                                WHEN 'pg_type'::regclass THEN format_type(d.refobjid, NULL)
                                ELSE pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) END AS name
         FROM pg_depend d JOIN pg_attrdef ad ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid
        WHERE ad.adrelid = $1 AND d.deptype IN ('n', 'a') AND NOT (d.refobjid = ad.adrelid AND d.refobjsubid = ad.adnum)`,
      [relid],
    )).rows;
    const included = new Set(cols.filter((c) => published.has(c.name)).map((c) => c.attnum));
    const renamedAttnums = new Set(cols.filter((c) => published.has(c.name) && published.get(c.name) !== c.name).map((c) => c.attnum));
    // A generated column is computed on the target from the published columns it reads.
    for (const c of cols) {
      if (c.generated !== 's' || c.attrdef === null) continue;
      const reads = deps.filter((d) => d.attrdef === c.attrdef && d.oid === relid && d.subid > 0);
      // Its expression is the source's text, which names the source's columns.
      if (reads.some((d) => renamedAttnums.has(d.subid))) this.plan.notes.push(`${targetName}: generated column ${quoteIdent(c.name)} left out: it reads a column --table-map "columns" renames`);
      else if (reads.every((d) => included.has(d.subid))) included.add(c.attnum);
      else this.plan.notes.push(`${targetName}: generated column ${quoteIdent(c.name)} left out: it reads a column the publication (or the column map) leaves out`);
    }
    const lines: string[] = [];
    let typesOk = true;
    for (const c of cols) {
      if (!included.has(c.attnum)) continue;
      if (!(await this.type(c.type_oid, `column ${quoteIdent(c.name)} of ${sourceName}`))) typesOk = false;
    }
    if (!typesOk) return null;
    for (const c of cols) {
      if (!included.has(c.attnum)) continue;
      const col = quoteIdent(published.get(c.name) ?? c.name);
      const parts = [col, c.type];
      if (c.coll_name !== null) parts.push(`COLLATE ${qualified(c.coll_schema!, c.coll_name)}`);
      const seq = sequences.get(c.attnum);
      if (c.identity !== '') {
        parts.push(`GENERATED ${c.identity === 'a' ? 'ALWAYS' : 'BY DEFAULT'} AS IDENTITY${seq ? ` (${sequenceOptions(seq, false)})` : ''}`);
      } else if (c.default_expr !== null) {
        const missing = await this.unavailable(deps.filter((d) => d.attrdef === c.attrdef), relid, included, seq);
        if (c.generated === 's') {
          if (missing.length > 0) {
            this.plan.notes.push(`${targetName}: generated column ${col} left out: its expression needs ${missing.join(', ')}, which the target lacks`);
            continue;
          }
          parts.push(`GENERATED ALWAYS AS (${c.default_expr}) STORED`);
        } else if (missing.length > 0) {
          this.plan.notes.push(`${targetName}: column ${col} created without its source default ${c.default_expr}: it needs ${missing.join(', ')}, which the target lacks; create that on the target, then run ALTER TABLE ${targetName} ALTER COLUMN ${col} SET DEFAULT ${c.default_expr};`);
        } else if (seq) {
          // A serial's sequence belongs to its column: it is created beside the target table.
          const name = qualified(target.schema, seq.seq_name);
          this.sequences.push(`CREATE SEQUENCE ${name} ${sequenceOptions(seq, true)};`);
          this.owners.push(`ALTER SEQUENCE ${name} OWNED BY ${targetName}.${col};`);
          parts.push(`DEFAULT ${c.default_expr.split(`${sqlString(seq.printed)}::regclass`).join(`${sqlString(name)}::regclass`)}`);
        } else {
          parts.push(`DEFAULT ${c.default_expr}`);
        }
      }
      if (c.not_null && c.identity === '') parts.push('NOT NULL');
      lines.push(parts.join(' '));
    }
    const pk = (await this.source.query(
      `SELECT pg_get_constraintdef(oid) AS def, conkey::int[] AS cols FROM pg_constraint WHERE conrelid = $1 AND contype = 'p'`,
      [relid],
    )).rows[0];
    if (pk) {
      const pkCols = pk.cols as number[];
      const byAttnum = new Map(cols.map((c) => [c.attnum, c.name]));
      if (!pkCols.every((n) => included.has(n))) this.plan.notes.push(`${targetName}: created without the source's ${pk.def}: the publication leaves some of its columns out`);
      else if (pkCols.some((n) => renamedAttnums.has(n))) lines.push(`PRIMARY KEY (${pkCols.map((n) => quoteIdent(published.get(byAttnum.get(n)!)!)).join(', ')})`);
      else lines.push(pk.def);
    }
    return lines;
  }

  /** The objects a default needs that neither the target has nor this plan creates. */
  private async unavailable(deps: DependencyRow[], relid: number, included: Set<number>, ownSequence: SequenceRow | undefined): Promise<string[]> {
    const missing: string[] = [];
    for (const d of deps) {
      if (d.oid < FIRST_USER_OID) continue;
      if (d.oid === relid) {
        if (d.subid > 0 && !included.has(d.subid)) missing.push(`an unpublished column`);
        continue;
      }
      if (ownSequence && d.catalog === 'pg_class' && d.name === ownSequence.printed && ownSequence.deptype === 'a') continue;
      if (d.catalog === 'pg_type' && this.createdTypes.has(d.name)) continue;
      const lookup = { pg_class: 'to_regclass', pg_proc: 'to_regprocedure', pg_type: 'to_regtype' }[d.catalog];
      const present = lookup ? (await this.target.query(`SELECT ${lookup}($1) IS NOT NULL AS ok`, [d.name])).rows[0].ok : false;
      if (!present) missing.push(d.name);
    }
    return missing;
  }

  /**
   * Queues CREATE TYPE/DOMAIN for a user type the target lacks, after the types it is built on;
   * false (with an error recorded) when it cannot be made.
   */
  private async type(oid: number, usedBy: string): Promise<boolean> {
    if (oid < FIRST_USER_OID) return true;
    const seen = this.visited.get(oid);
    if (seen !== undefined) return seen;
    const t = (await this.source.query<TypeRow>(
      `SELECT t.oid::int AS oid, format_type(t.oid, NULL) AS name, n.nspname AS schema, t.typtype::text AS kind,
              t.typelem <> 0 AND t.typlen = -1 AS array, t.typelem::int AS elem,
              (SELECT c.relkind::text FROM pg_class c WHERE c.oid = t.typrelid) AS relkind,
              (SELECT e.extname FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
                WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e') AS extension
         FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1`,
      [oid],
    )).rows[0];
    this.visited.set(oid, true);
    // The type it is built on has recorded why.
    const failed = () => {
      this.visited.set(oid, false);
      return false;
    };
    const fail = (message: string) => {
      this.plan.errors.push({ severity: 'error', message });
      return failed();
    };
    if (t.array) {
      const ok = await this.type(t.elem, usedBy);
      this.visited.set(oid, ok);
      return ok;
    }
    if (t.extension !== null) {
      const has = (await this.target.query(`SELECT 1 FROM pg_extension WHERE extname = $1`, [t.extension])).rowCount !== 0;
      return has || fail(`${usedBy} has type ${t.name} from extension "${t.extension}", which the target lacks; run on the target: CREATE EXTENSION ${quoteIdent(t.extension)}; (--create-tables never creates extensions)`);
    }
    if ((await this.target.query(`SELECT to_regtype($1) IS NOT NULL AS ok`, [t.name])).rows[0].ok) return true;
    this.schemas.add(t.schema);
    if (t.kind === 'e') {
      const labels = await this.source.query(`SELECT enumlabel FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder`, [oid]);
      this.types.push(`CREATE TYPE ${t.name} AS ENUM (${labels.rows.map((r) => quoteLiteral(r.enumlabel)).join(', ')});`);
    } else if (t.kind === 'd') {
      const d = (await this.source.query(
        `SELECT format_type(t.typbasetype, t.typtypmod) AS base, t.typbasetype::int AS base_oid, t.typnotnull AS not_null,
                pg_get_expr(t.typdefaultbin, 0) AS default_expr,
                CASE WHEN t.typcollation <> b.typcollation THEN cn.nspname END AS coll_schema,
                CASE WHEN t.typcollation <> b.typcollation THEN co.collname END AS coll_name,
                coalesce((SELECT json_agg(json_build_object('name', c.conname, 'def', pg_get_constraintdef(c.oid)) ORDER BY c.conname)
                            FROM pg_constraint c WHERE c.contypid = t.oid AND c.contype = 'c'), '[]') AS checks
           FROM pg_type t JOIN pg_type b ON b.oid = t.typbasetype
           LEFT JOIN pg_collation co ON co.oid = t.typcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
          WHERE t.oid = $1`,
        [oid],
      )).rows[0];
      if (!(await this.type(d.base_oid, usedBy))) return failed();
      const parts = [`CREATE DOMAIN ${t.name} AS ${d.base}`];
      if (d.coll_name !== null) parts.push(`COLLATE ${qualified(d.coll_schema, d.coll_name)}`);
      if (d.default_expr !== null) parts.push(`DEFAULT ${d.default_expr}`);
      if (d.not_null) parts.push('NOT NULL');
      for (const c of d.checks as { name: string; def: string }[]) parts.push(`CONSTRAINT ${quoteIdent(c.name)} ${c.def}`);
      this.types.push(`${parts.join(' ')};`);
    } else if (t.kind === 'c' && t.relkind === 'c') {
      const attrs = (await this.source.query(
        `SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, a.atttypid::int AS type_oid,
                CASE WHEN a.attcollation <> at.typcollation THEN cn.nspname END AS coll_schema,
                CASE WHEN a.attcollation <> at.typcollation THEN co.collname END AS coll_name
           FROM pg_type t JOIN pg_attribute a ON a.attrelid = t.typrelid JOIN pg_type at ON at.oid = a.atttypid
           LEFT JOIN pg_collation co ON co.oid = a.attcollation LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
          WHERE t.oid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`,
        [oid],
      )).rows;
      for (const a of attrs) if (!(await this.type(a.type_oid, `attribute ${quoteIdent(a.name)} of type ${t.name}`))) return failed();
      const fields = attrs.map((a) => `${quoteIdent(a.name)} ${a.type}${a.coll_name !== null ? ` COLLATE ${qualified(a.coll_schema, a.coll_name)}` : ''}`);
      this.types.push(`CREATE TYPE ${t.name} AS (${fields.join(', ')});`);
    } else {
      const what = t.kind === 'c' ? `the row type of table ${t.name}` : t.kind === 'r' || t.kind === 'm' ? `range type ${t.name}` : `type ${t.name}`;
      return fail(`${usedBy} has ${what}, which --create-tables does not create; create it on the target first (pg_dump --schema-only shows its definition), then run again`);
    }
    this.createdTypes.add(t.name);
    return true;
  }

  /** The source's other indexes and constraints, rewritten for the target table, for the user to choose. */
  private async optional(relid: number, targetName: string): Promise<void> {
    const printed = (await this.source.query(`SELECT $1::int::regclass::text AS name`, [relid])).rows[0].name as string;
    const constraints = await this.source.query(
      `SELECT c.conname, pg_get_constraintdef(c.oid) AS def, rn.nspname AS ref_schema, r.relname AS ref_table, c.confrelid::regclass::text AS ref_printed
         FROM pg_constraint c LEFT JOIN pg_class r ON r.oid = c.confrelid LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
        WHERE c.conrelid = $1 AND c.contype IN ('u', 'f', 'c', 'x') ORDER BY c.contype, c.conname`,
      [relid],
    );
    for (const c of constraints.rows) {
      let def = c.def as string;
      if (c.ref_table !== null) {
        const ref = resolveTarget(this.maps, { schema: c.ref_schema, table: c.ref_table });
        def = def.replace(`REFERENCES ${c.ref_printed}(`, `REFERENCES ${qualified(ref.schema, ref.table)}(`);
      }
      this.plan.optional.push(`ALTER TABLE ${targetName} ADD CONSTRAINT ${quoteIdent(c.conname)} ${def};`);
    }
    const indexes = await this.source.query(
      `SELECT pg_get_indexdef(i.indexrelid) AS def FROM pg_index i
        WHERE i.indrelid = $1 AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid)
        ORDER BY i.indexrelid`,
      [relid],
    );
    for (const r of indexes.rows) {
      const def = r.def as string;
      for (const on of [` ON ONLY ${printed} USING `, ` ON ${printed} USING `]) {
        const at = def.indexOf(on);
        if (at === -1) continue;
        // Not ONLY: pg_get_indexdef says it of a partitioned table's index, which would then cover no partition.
        this.plan.optional.push(`${def.slice(0, at)} ON ${targetName} USING ${def.slice(at + on.length)};`);
        break;
      }
    }
  }
}

/** The name of a table or partitioned table on the target exists, as a table. */
async function relationExists(client: pg.Client, t: TableName): Promise<boolean> {
  const r = await client.query(
    `SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')`,
    [t.schema, t.table],
  );
  return r.rowCount !== 0;
}

function sequenceOptions(s: SequenceRow, withType: boolean): string {
  return `${withType ? `AS ${s.type} ` : ''}INCREMENT BY ${s.increment} MINVALUE ${s.min} MAXVALUE ${s.max} START WITH ${s.start} CACHE ${s.cache} ${s.cycle ? 'CYCLE' : 'NO CYCLE'}`;
}

/** A string literal as the server deparses one (standard_conforming_strings on). */
function sqlString(text: string): string {
  return `'${text.replace(/'/g, "''")}'`;
}

/** Runs the plan's DDL in one target transaction: all of it is created, or none. */
export async function applyCreatePlan(target: pg.Client, plan: CreatePlan): Promise<void> {
  if (plan.statements.length === 0) return;
  await target.query('BEGIN');
  try {
    for (const s of plan.statements) await target.query(s);
    await target.query('COMMIT');
  } catch (err) {
    await target.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

/** The plan as a script for psql: the DDL in a transaction, then the optional SQL commented out. */
export function createPlanSql(plan: CreatePlan): string {
  const out: string[] = [];
  for (const t of plan.tables) out.push(note(`${tableKey(t.source.schema, t.source.table)} -> ${qualified(t.target.schema, t.target.table)}`));
  for (const n of plan.notes) out.push(note(n));
  if (plan.statements.length > 0) out.push('BEGIN;', ...plan.statements, 'COMMIT;');
  if (plan.optional.length > 0) {
    out.push('', note('Not created: the source\'s other indexes and constraints. Uncomment those the target should have.'));
    out.push(...plan.optional.map((s) => note(s)));
  }
  return out.length > 0 ? `${out.join('\n')}\n` : '';
}
