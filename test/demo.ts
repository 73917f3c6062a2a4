/**
 * `npm run demo`: two throwaway clusters, a small shop dataset, the real CLI syncing it with live
 * progress, changes made while it streams, a check that both sides are identical, then clean-up.
 */
import { serverBinariesMissing } from './harness/cluster';
import { runCli, startCli, startPair, tableFingerprint, waitAllReady, waitCaughtUp, type Pair } from './harness/sync';

const SCHEMA = `
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE, country text, created_at timestamptz NOT NULL);
CREATE TABLE products (sku text PRIMARY KEY, title text NOT NULL, price numeric(10,2) NOT NULL, tags text[], attrs jsonb);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers, status order_status NOT NULL, placed_at timestamptz NOT NULL, note text);
CREATE TABLE order_items (order_id bigint REFERENCES orders, sku text REFERENCES products, qty int NOT NULL, PRIMARY KEY (order_id, sku));
CREATE TABLE page_views (path text, viewed_at timestamptz, ms int);
ALTER TABLE page_views REPLICA IDENTITY FULL;`;

const DATA = `
INSERT INTO customers SELECT g, 'Customer ' || g, 'c' || g || '@example.com', (ARRAY['DE','FR','JP','BR','US'])[1 + g % 5], now() - g * interval '1 hour' FROM generate_series(1, 20000) g;
INSERT INTO products SELECT 'SKU-' || g, 'Product ' || g || ' – «édition» 製品', (g % 500) + 0.99, ARRAY['tag' || g % 7, NULL], jsonb_build_object('weight_g', g * 10, 'id64', 9007199254740993 + g) FROM generate_series(1, 2000) g;
INSERT INTO orders SELECT g, 1 + g % 20000, (ARRAY['new','paid','shipped']::order_status[])[1 + g % 3], now() - g * interval '1 minute', CASE WHEN g % 10 = 0 THEN E'leave at the door\\nthanks' END FROM generate_series(1, 100000) g;
INSERT INTO order_items SELECT o, 'SKU-' || (1 + (o + k * 577) % 2000), k FROM generate_series(1, 100000) o, generate_series(1, 3) k;
INSERT INTO page_views SELECT '/p/' || g % 100, now(), g % 1000 FROM generate_series(1, 30000) g;
CREATE PUBLICATION shop FOR TABLE customers, products, orders, order_items, page_views;
ANALYZE;`;

const TABLES = ['customers', 'products', 'orders', 'order_items', 'page_views'];

function say(text: string): void {
  process.stdout.write(`\n\x1b[1m== ${text}\x1b[0m\n`);
}

async function main(): Promise<number> {
  const missing = serverBinariesMissing();
  if (missing) {
    process.stderr.write(`demo: ${missing}\n`);
    return 1;
  }
  say('starting two throwaway PostgreSQL 15 clusters (wal_level=logical)');
  const pair: Pair = await startPair();
  try {
    const db = 'shop';
    await Promise.all([pair.source.createDatabase(db), pair.target.createDatabase(db)]);
    await Promise.all([pair.source.query(db, SCHEMA), pair.target.query(db, SCHEMA)]);
    say(`loading the source: ${TABLES.join(', ')}`);
    await pair.source.query(db, DATA);
    const sourceUrl = pair.source.url(db);
    const targetUrl = pair.target.url(db);
    process.stdout.write(`source 127.0.0.1:${pair.source.port}/shop   target 127.0.0.1:${pair.target.port}/shop\n`);

    say('pg-live-sync run --publication shop --subscription demo');
    const run = startCli(['run', '--source', sourceUrl, '--target', targetUrl, '--publication', 'shop', '--subscription', 'demo']);
    run.proc.stderr!.on('data', (d: Buffer) => process.stdout.write(d.toString().replace(/^/gm, '  run | ').replace(/  run \| $/, '')));
    await waitAllReady(pair.target, db, 'demo', TABLES.length, 300_000);

    say('changing the source while the sync streams');
    // Each label says what the statement is meant to do; the line printed counts what it did.
    const steps: [string, string][] = [
      ['new orders with their items', `INSERT INTO orders SELECT g, 1 + g % 20000, 'new', now(), NULL FROM generate_series(100001, 100500) g; INSERT INTO order_items SELECT g, 'SKU-1', 1 FROM generate_series(100001, 100500) g;`],
      ['a price rise on products SKU-1000 to SKU-1999', `UPDATE products SET price = price * 1.1 WHERE sku LIKE 'SKU-1___';`],
      ['a new customer, then its id changes (primary key update)', `INSERT INTO customers VALUES (20001, 'Customer 20001', 'c20001@example.com', 'DE', now()); UPDATE customers SET id = 900042 WHERE id = 20001;`],
      ['old page views deleted (no primary key: replica identity FULL)', `DELETE FROM page_views WHERE ctid IN (SELECT ctid FROM page_views LIMIT 1000);`],
      ['orders 1-100 cancelled', `UPDATE orders SET status = 'cancelled' WHERE id <= 100;`],
    ];
    for (const [what, sql] of steps) {
      const t0 = Date.now();
      const result = await pair.source.query(db, sql);
      const counts = (Array.isArray(result) ? result : [result]).map((r: { command: string; rowCount: number | null }) => `${r.command} ${(r.rowCount ?? 0).toLocaleString('en-US')}`);
      await waitCaughtUp(pair, db, 'demo');
      process.stdout.write(`  ✓ ${what} (${counts.join(', ')}): on the target after ${Date.now() - t0} ms\n`);
    }
    // A rolled-back transaction never leaves the source: nothing to wait for, the target keeps every item.
    const before = await tableFingerprint(pair.target, db, 'order_items');
    await pair.source.query(db, 'BEGIN; DELETE FROM order_items; ROLLBACK;');
    await waitCaughtUp(pair, db, 'demo');
    const after = await tableFingerprint(pair.target, db, 'order_items');
    process.stdout.write(`  ${after.rows === before.rows ? '✓' : '✗'} a rolled-back DELETE of every order item: nothing arrives (target still ${after.rows.toLocaleString('en-US')} items)\n`);

    say('verifying source and target are identical');
    let identical = true;
    for (const t of TABLES) {
      const [a, b] = await Promise.all([tableFingerprint(pair.source, db, t), tableFingerprint(pair.target, db, t)]);
      const same = a.rows === b.rows && a.md5 === b.md5;
      identical &&= same;
      process.stdout.write(`  ${same ? '✓' : '✗'} ${t.padEnd(12)} ${String(a.rows).padStart(7)} rows  md5 ${a.md5}${same ? '' : `  target: ${b.rows} rows md5 ${b.md5}`}\n`);
    }

    say('pg-live-sync status --subscription demo');
    const status = await runCli(['status', '--subscription', 'demo', '--target', targetUrl, '--source', sourceUrl]);
    process.stdout.write(status.stdout.replace(/^/gm, '  '));

    say('stopping the sync (SIGINT) and dropping it');
    const code = await run.stop();
    const dropped = await runCli(['drop', '--subscription', 'demo', '--source', sourceUrl, '--target', targetUrl]);
    process.stdout.write(dropped.stderr.replace(/^/gm, '  drop | '));
    say(identical && code === 0 && dropped.code === 0 ? 'demo complete: source and target identical' : 'demo FAILED');
    return identical && code === 0 && dropped.code === 0 ? 0 : 1;
  } finally {
    pair.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`demo: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
