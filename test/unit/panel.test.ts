import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { diffTables, panelCsp, panelHtml, PanelUpdater, savedSyncName, type Timers } from '../../src/extension/panelUpdates';
import type { PanelSnapshot } from '../../src/extension/panelSource';
import { parsePanelMessage, type HostToPanel, type PanelHeader, type PanelSample, type PanelTable } from '../../webview/protocol';

describe('parsePanelMessage', () => {
  it('accepts exactly the valid shapes', () => {
    assert.deepEqual(parsePanelMessage({ type: 'ready' }), { type: 'ready' });
    for (const action of ['pause', 'resume', 'stop', 'drop', 'openLogs', 'copyStatus'] as const) {
      assert.deepEqual(parsePanelMessage({ type: 'action', action }), { type: 'action', action });
    }
    assert.deepEqual(parsePanelMessage({ type: 'resyncTable', key: 'public.orders' }), { type: 'resyncTable', key: 'public.orders' });
    assert.deepEqual(parsePanelMessage(JSON.parse('{"type":"resyncTable","key":"x"}')), { type: 'resyncTable', key: 'x' });
  });

  it('rejects extra keys, wrong types, unknown types and actions', () => {
    const bad: unknown[] = [
      null,
      undefined,
      'ready',
      42,
      ['ready'],
      {},
      { type: 'READY' },
      { type: 'state' },
      { type: 'ready', extra: 1 },
      { type: 'action' },
      { type: 'action', action: 'explode' },
      { type: 'action', action: 'Pause' },
      { type: 'action', action: 1 },
      { type: 'action', action: 'pause', name: 'other_sync' },
      { type: 'action', action: 'toString' },
      { type: 'resyncTable' },
      { type: 'resyncTable', key: '' },
      { type: 'resyncTable', key: 7 },
      { type: 'resyncTable', key: null },
      { type: 'resyncTable', key: 'x'.repeat(301) },
      { type: 'resyncTable', key: 'public.t', sync: 'other' },
      JSON.parse('{"type":"ready","__proto__":{"polluted":true}}'),
      Object.create({ type: 'ready' }),
    ];
    for (const raw of bad) assert.equal(parsePanelMessage(raw), null, JSON.stringify(raw));
    assert.notEqual(parsePanelMessage({ type: 'resyncTable', key: 'x'.repeat(300) }), null, 'the limit itself is allowed');
  });

  it('returns a fresh object, not the untrusted one', () => {
    const raw = { type: 'action', action: 'stop' };
    const parsed = parsePanelMessage(raw);
    assert.notEqual(parsed, raw);
  });
});

function table(key: string, over: Partial<PanelTable> = {}): PanelTable {
  const [schema, name] = key.split('.');
  return {
    key,
    schema,
    table: name,
    targetSchema: schema,
    targetTable: name,
    state: 'd',
    removed: false,
    rowsCopied: 0,
    bytesCopied: 0,
    approximateRows: 1000,
    approximateSize: 100_000,
    copyRowsPerSecond: null,
    etaSeconds: null,
    lastError: null,
    ...over,
  };
}

function header(over: Partial<PanelHeader> = {}): PanelHeader {
  return {
    name: 's1',
    mode: 'local',
    source: 'src:5432/app',
    target: 'dst:5432/app',
    publications: ['pub'],
    activity: 'copying',
    appliedLsn: '0/1',
    lagBytes: 0,
    lagSeconds: 0,
    changesPerSecond: 0,
    retainedWalBytes: 0,
    walKeepBytes: null,
    safeWalBytes: null,
    secondsToInvalidation: null,
    lastError: null,
    updatedAt: 1,
    ...over,
  };
}

function sample(t: number): PanelSample {
  return { t, lagBytes: t, lagSeconds: 1, changesPerSecond: 2, copyBytesPerSecond: null };
}

describe('diffTables', () => {
  it('returns only new or changed rows and the keys that went away', () => {
    const a = table('public.a');
    const b = table('public.b');
    const c = table('public.c');
    const sent = new Map([a, b, c].map((t) => [t.key, { ...t }]));
    const next = [{ ...a }, { ...b, rowsCopied: 5 }, table('public.d')];
    const { changed, removedKeys } = diffTables(sent, next);
    assert.deepEqual(changed.map((t) => t.key), ['public.b', 'public.d']);
    assert.deepEqual(removedKeys, ['public.c']);
  });

  it('sees a change in any field, including null <-> value', () => {
    const a = table('public.a');
    const sent = new Map([[a.key, a]]);
    for (const over of [{ lastError: 'boom' }, { removed: true }, { state: 'r' as const }, { etaSeconds: 0 }, { targetTable: 'x' }]) {
      assert.equal(diffTables(sent, [{ ...a, ...over }]).changed.length, 1, JSON.stringify(over));
    }
    assert.deepEqual(diffTables(sent, [{ ...a }]), { changed: [], removedKeys: [] });
  });
});

/** Timers driven by hand: no real sleeps. */
class FakeTimers implements Timers {
  t = 10_000;
  private seq = 0;
  private pending: { id: number; at: number; fn: () => void }[] = [];
  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.seq;
    this.pending.push({ id, at: this.t + ms, fn });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.pending = this.pending.filter((p) => p.id !== handle);
  }
  get scheduled(): number {
    return this.pending.length;
  }
  advance(ms: number): void {
    const end = this.t + ms;
    for (;;) {
      const due = this.pending.filter((p) => p.at <= end).sort((x, y) => x.at - y.at)[0];
      if (due === undefined) break;
      this.pending = this.pending.filter((p) => p !== due);
      this.t = due.at;
      due.fn();
    }
    this.t = end;
  }
}

function setup(initial: PanelSnapshot | null) {
  const timers = new FakeTimers();
  const sent: HostToPanel[] = [];
  const src = { snap: initial };
  const updater = new PanelUpdater(() => src.snap, (m) => sent.push(structuredClone(m)), timers, 250);
  return { timers, sent, src, updater };
}

function snapshot(tables: PanelTable[], samples: PanelSample[] = [], over: Partial<PanelHeader> = {}): PanelSnapshot {
  return { header: header(over), tables, samples };
}

const updates = (sent: HostToPanel[]) => sent.filter((m): m is Extract<HostToPanel, { type: 'update' }> => m.type === 'update');

describe('PanelUpdater', () => {
  it('sends nothing before ready, then the full state on ready', () => {
    const { timers, sent, src, updater } = setup(snapshot([table('public.a'), table('public.b')], [sample(1), sample(2)]));
    updater.changed();
    timers.advance(5000);
    assert.equal(sent.length, 0);
    updater.ready();
    assert.equal(sent.length, 1);
    const state = sent[0];
    assert.equal(state.type, 'state');
    assert.deepEqual(state.type === 'state' && state.tables.map((t) => t.key), ['public.a', 'public.b']);
    assert.deepEqual(state.type === 'state' && state.samples.map((s) => s.t), [1, 2]);
    assert.equal(src.snap?.tables.length, 2);
  });

  it('sends only the changed rows, the removed keys and the new sample', () => {
    const { timers, sent, src, updater } = setup(snapshot([table('public.a'), table('public.b'), table('public.c')], [sample(1)]));
    updater.ready();
    timers.advance(1000);
    src.snap = snapshot([table('public.a'), table('public.b', { rowsCopied: 10 }), table('public.d')], [sample(1), sample(2)], { lagBytes: 7 });
    updater.changed();
    assert.equal(sent.length, 2, 'flushed at once: the last flush is older than the interval');
    const u = sent[1];
    assert.equal(u.type, 'update');
    if (u.type !== 'update') return;
    assert.deepEqual(u.tables.map((t) => t.key), ['public.b', 'public.d']);
    assert.deepEqual(u.removedKeys, ['public.c']);
    assert.equal(u.sample?.t, 2);
    assert.equal(u.header.lagBytes, 7);
  });

  it('coalesces a burst of changes into one update per interval, with the latest data', () => {
    const { timers, sent, src, updater } = setup(snapshot([table('public.a')]));
    updater.ready();
    // 40 changes within 100 ms, each a new rowsCopied for the same row
    for (let i = 1; i <= 40; i++) {
      src.snap = snapshot([table('public.a', { rowsCopied: i })]);
      updater.changed();
      timers.advance(2.5);
    }
    assert.equal(updates(sent).length, 0, 'nothing inside the first interval after the state');
    assert.equal(timers.scheduled, 1, 'one timer, however many changes');
    timers.advance(250);
    assert.equal(updates(sent).length, 1);
    assert.equal(updates(sent)[0].tables[0].rowsCopied, 40);

    // a steady stream: at most ~4 updates a second
    const before = updates(sent).length;
    for (let i = 0; i < 100; i++) {
      src.snap = snapshot([table('public.a', { rowsCopied: 1000 + i })]);
      updater.changed();
      timers.advance(10);
    }
    timers.advance(250);
    const n = updates(sent).length - before;
    assert.ok(n >= 4 && n <= 5, `${n} updates for 1.25 s of changes every 10 ms`);
  });

  it('sends nothing when nothing changed', () => {
    const { timers, sent, src, updater } = setup(snapshot([table('public.a')], [sample(1)]));
    updater.ready();
    timers.advance(1000);
    src.snap = snapshot([table('public.a')], [sample(1)]);
    updater.changed();
    timers.advance(1000);
    assert.equal(sent.length, 1);
  });

  it('sends every new sample, in order, when several arrived between flushes', () => {
    const { timers, sent, src, updater } = setup(snapshot([table('public.a')], [sample(1)]));
    updater.ready();
    timers.advance(1000);
    src.snap = snapshot([table('public.a', { rowsCopied: 3 })], [sample(1), sample(2), sample(3), sample(4)]);
    updater.changed();
    const u = updates(sent);
    assert.deepEqual(u.map((m) => m.sample?.t), [2, 3, 4]);
    assert.deepEqual(u.map((m) => m.tables.length), [0, 0, 1], 'the rows ride with the last one');
  });

  it('stops while hidden and starts over with a full state on the next ready', () => {
    const { timers, sent, src, updater } = setup(snapshot([table('public.a')]));
    updater.ready();
    src.snap = snapshot([table('public.a', { rowsCopied: 1 })]);
    updater.changed();
    updater.hidden();
    timers.advance(1000);
    updater.changed();
    timers.advance(1000);
    assert.equal(sent.length, 1, 'the pending update was cancelled and nothing new was sent');
    updater.ready();
    assert.equal(sent.length, 2);
    assert.equal(sent[1].type, 'state');
    assert.equal(sent[1].type === 'state' && sent[1].tables[0].rowsCopied, 1);
  });

  it('waits for a snapshot when the source has none at ready', () => {
    const { timers, sent, src, updater } = setup(null);
    updater.ready();
    assert.equal(sent.length, 0);
    src.snap = snapshot([table('public.a')]);
    updater.changed();
    timers.advance(300);
    assert.deepEqual(sent.map((m) => m.type), ['state']);
  });

  it('sees a header change alone, and a source that mutates its objects in place', () => {
    const snap = snapshot([table('public.a')]);
    const { timers, sent, src, updater } = setup(snap);
    updater.ready();
    timers.advance(1000);
    snap.header.publications.push('pub2');
    snap.tables[0].rowsCopied = 99;
    src.snap = snap;
    updater.changed();
    const u = updates(sent);
    assert.equal(u.length, 1);
    assert.deepEqual(u[0].header.publications, ['pub', 'pub2']);
    assert.equal(u[0].tables[0].rowsCopied, 99);
  });

  it('does nothing after dispose', () => {
    const { timers, sent, src, updater } = setup(snapshot([table('public.a')]));
    updater.ready();
    src.snap = snapshot([table('public.a', { rowsCopied: 1 })]);
    updater.changed();
    updater.dispose();
    timers.advance(1000);
    updater.ready();
    updater.changed();
    assert.equal(sent.length, 1);
  });
});

describe('panel HTML', () => {
  it('has a strict CSP: our script by nonce only, no unsafe-inline or eval', () => {
    const csp = panelCsp('https://file+.vscode-resource.vscode-cdn.net', 'abc123');
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'nonce-abc123';/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*;/);
    const html = panelHtml({ cspSource: 'vscode-resource:', nonce: 'abc123', scriptUri: 'vscode-resource:/dist/webview.js', styleUri: 'vscode-resource:/media/panel.css', syncName: 'a"<b>' });
    assert.match(html, /<script nonce="abc123" src="vscode-resource:\/dist\/webview.js"><\/script>/);
    assert.match(html, /<meta property="csp-nonce" content="abc123">/);
    assert.doesNotMatch(html, /a"<b>/, 'the name is escaped');
    assert.match(html, /data-sync-name="a&#34;&#60;b&#62;"/);
    assert.doesNotMatch(html, /<style|style=/, 'no inline styles');
  });

  it('reads the sync name the webview saved, and nothing else', () => {
    assert.equal(savedSyncName({ name: 'orders', filter: 'x' }), 'orders');
    for (const bad of [undefined, null, 'orders', {}, { name: 3 }, { name: '' }, { name: 'x'.repeat(201) }]) assert.equal(savedSyncName(bad), null);
  });
});
