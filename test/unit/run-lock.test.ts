/** When a session holding a subscription's run lock may be ended: only when it is surely stale. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { processAlive, staleHolder, type LockOwner, type LockSession } from '../../src/engine/runLock';

const here = { host: 'sync-1', pid: 4242, runId: 'run-now' };
const holder: LockSession = { pid: 900, started: '2026-12-07 21:00:00.123456' };
const owner = (o: Partial<LockOwner> = {}): LockOwner => ({ ...holder, host: 'sync-1', osPid: 777, runId: 'run-before', ...o });
const dead = () => false;
const living = () => true;

describe('staleHolder', () => {
  it('ends this run\'s own session from before a reconnect, whatever the state records', () => {
    assert.match(staleHolder(holder, null, [{ ...holder }], here, living) ?? '', /this run's own session/);
    assert.equal(staleHolder(holder, null, [{ ...holder, started: '2026-12-07 21:00:00.123457' }], here, living), null, 'the same pid, another backend');
  });

  it('ends the recorded owner\'s session when that process on this host is gone, or its pid is this process\'s now', () => {
    assert.match(staleHolder(holder, owner(), [], here, dead) ?? '', /process 777 on this host, is gone/);
    assert.match(staleHolder(holder, owner({ osPid: here.pid }), [], here, living) ?? '', /this process has its pid now/);
  });

  it('never ends a session that may be a live run\'s', () => {
    assert.equal(staleHolder(holder, owner(), [], here, living), null, 'its process runs');
    assert.equal(staleHolder(holder, owner({ host: 'sync-2' }), [], here, dead), null, 'another host: cannot tell');
    assert.equal(staleHolder(holder, owner({ osPid: here.pid, runId: here.runId }), [], here, living), null, 'this very process, another engine');
    assert.equal(staleHolder(holder, owner({ pid: 901 }), [], here, dead), null, 'not the recorded session');
    assert.equal(staleHolder(holder, owner({ started: '2026-12-07 21:00:01.000000' }), [], here, dead), null, 'the recorded pid, another backend');
    assert.equal(staleHolder(holder, null, [], here, dead), null, 'nothing recorded');
  });

  it('processAlive: this process runs, a pid nobody has does not', () => {
    assert.equal(processAlive(process.pid), true);
    assert.equal(processAlive(2 ** 22 + 12345), false);
  });
});
