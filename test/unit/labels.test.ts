/** The words and numbers the panel, the status bar and the CLI show: one formatter each, one precedence. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import * as units from '../../src/engine/units';
import { describeActivity } from '../../src/extension/syncModel';
import { activityBadge, countWords, formatBytes, formatCount, formatRows, rowStateWord, tableSummary } from '../../webview/format';
import type { PanelHeader, PanelTable, SyncActivity, TableStateCode } from '../../webview/protocol';

function table(name: string, state: TableStateCode, over: Partial<PanelTable> = {}): PanelTable {
  return {
    key: `public.${name}`, schema: 'public', table: name, targetSchema: 'public', targetTable: name, state, removed: false,
    rowsCopied: 0, bytesCopied: 0, approximateRows: 0, approximateSize: 0, copyRowsPerSecond: null, etaSeconds: null, lastError: null, ...over,
  };
}

const summary = (tables: PanelTable[]) => tableSummary(countWords(tables.map(rowStateWord)));
const badge = (activity: SyncActivity, tables: PanelTable[]) => activityBadge(activity, countWords(tables.map(rowStateWord)));

const HEADER: Omit<PanelHeader, 'activity'> = {
  name: 's', mode: 'local', source: 'a:5432/x', target: 'b:5432/x', publications: ['pub'], appliedLsn: null,
  lagBytes: 0, lagSeconds: 0, changesPerSecond: null, retainedWalBytes: null, walKeepBytes: null, safeWalBytes: null,
  secondsToInvalidation: null, lastError: null, updatedAt: 0,
};

describe('the tables summary', () => {
  it('counts a finished copy as done: 4 of 5 copied while the fifth copies', () => {
    // The initial copy leaves each table at f (copied, consistent at the slot's point) until streaming starts.
    const s = summary([table('a', 'f'), table('b', 'f'), table('c', 'f'), table('d', 'f'), table('e', 'd')]);
    assert.deepEqual(s, { text: '4 / 5 copied · 1 copying', done: 4, total: 5 });
  });

  it('counts tables waiting for their copy, then ready and catching-up tables once every copy is done', () => {
    assert.equal(summary([table('a', 'i'), table('b', 'i'), table('c', 'd')]).text, '0 / 3 copied · 1 copying · 2 waiting');
    assert.deepEqual(summary([table('a', 'r'), table('b', 'r'), table('c', 's'), table('d', 'f')]), { text: '2 / 4 ready · 2 catching up', done: 2, total: 4 });
    assert.deepEqual(summary([table('a', 'r'), table('b', 'r')]), { text: '2 / 2 ready', done: 2, total: 2 });
  });

  it('shows errors, and leaves removed tables out of the total', () => {
    const s = summary([table('a', 'r'), table('b', 'r'), table('c', 'r'), table('d', 'r'), table('e', 'i', { lastError: 'no target table' }), table('x', 'r', { removed: true })]);
    assert.deepEqual(s, { text: '4 / 5 ready · 1 error · 1 removed', done: 4, total: 5 });
    assert.equal(summary([table('a', 'd', { lastError: 'x' }), table('b', 'd', { lastError: 'y' }), table('c', 'i')]).text, '0 / 3 copied · 1 waiting · 2 errors');
  });

  it('writes large counts with thousands separators', () => {
    const many = Array.from({ length: 1234 }, (_, i) => table(`t${i}`, 'r'));
    assert.equal(summary(many).text, '1,234 / 1,234 ready');
  });
});

describe('the activity badge', () => {
  it('a table in error beats copying, which beats streaming', () => {
    assert.equal(badge('streaming', [table('a', 'r'), table('b', 'i', { lastError: 'boom' })]), 'error');
    assert.equal(badge('copying', [table('a', 'd'), table('b', 'd', { lastError: 'boom' })]), 'error');
    assert.equal(badge('copying', [table('a', 'd'), table('b', 'r')]), 'copying');
    assert.equal(badge('streaming', [table('a', 'r'), table('b', 'f')]), 'streaming');
  });

  it("the sync's own state wins: error, paused, stopped and starting say so whatever the tables", () => {
    for (const activity of ['error', 'paused', 'stopped', 'starting'] as const) assert.equal(badge(activity, [table('a', 'r', { lastError: 'x' })]), activity);
    assert.equal(badge('streaming', [table('a', 'r', { lastError: 'gone', removed: true })]), 'streaming', 'a removed table does not count');
  });

  it('the status bar text leads with the same word as the badge', () => {
    const cases: [SyncActivity, PanelTable[]][] = [
      ['streaming', [table('a', 'r'), table('b', 'i', { lastError: 'boom' })]],
      ['copying', [table('a', 'd')]],
      ['streaming', [table('a', 'r')]],
      ['paused', [table('a', 'r', { lastError: 'x' })]],
      ['error', [table('a', 'r')]],
    ];
    for (const [activity, tables] of cases) {
      const text = describeActivity({ header: { ...HEADER, activity }, tables, samples: [] });
      assert.equal(text.split(/[\s:,]/)[0], badge(activity, tables), text);
    }
  });
});

describe('formatBytes and formatCount', () => {
  it('sizes in IEC units', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(1023), '1023 B');
    assert.equal(formatBytes(1536), '1.5 KiB');
    assert.equal(formatBytes(228 * 1024 ** 2), '228 MiB');
    assert.equal(formatBytes(5 * 1024 ** 3), '5 GiB');
    assert.equal(formatBytes(1.25 * 1024 ** 4), '1.25 TiB');
    assert.equal(formatBytes(-2048), '-2 KiB');
    assert.equal(formatBytes(null), '—');
  });

  it('counts with thousands separators', () => {
    assert.equal(formatCount(0), '0');
    assert.equal(formatCount(999), '999');
    assert.equal(formatCount(1000), '1,000');
    assert.equal(formatCount(1234567.4), '1,234,567');
    assert.equal(formatCount(-1234), '-1,234');
    assert.equal(formatCount(null), '—');
    assert.equal(formatRows(table('a', 'd', { rowsCopied: 12345, approximateRows: 200000 })), '12,345 / ~200,000');
  });

  it('are the same functions in the CLI and engine, the extension and the panel', () => {
    assert.equal(formatBytes, units.formatBytes);
    assert.equal(formatCount, units.formatCount);
  });
});
