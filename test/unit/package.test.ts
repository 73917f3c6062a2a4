/**
 * The manifest and the vsix as users and tools script against them: command titles under one
 * category, lazy activation, one bundled file per process, and a vsix without sources or tests.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';

const REPO = path.resolve(__dirname, '../..');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const pkg = require(path.join(REPO, 'package.json'));

describe('the extension manifest', () => {
  it('has every command the issue names, titled exactly, under "Postgres Live Sync"', () => {
    const titles = new Map<string, string>(pkg.contributes.commands.map((c: { command: string; title: string; category: string }) => {
      assert.equal(c.category, 'Postgres Live Sync', c.command);
      return [c.title, c.command];
    }));
    for (const title of [
      'Add Connection', 'Edit Connection', 'Test Connection', 'Remove Connection',
      'Generate Tuning SQL', 'Generate Replica Identity SQL', 'Generate Connector Role SQL',
      'Create Publication', 'Add Table to Publication', 'Remove Table from Publication', 'Run SQL on Connection',
      'Start Sync', 'Stop Sync', 'Pause Sync', 'Resume Sync', 'Drop Sync', 'Show Logs', 'Show Sync Progress',
    ]) assert.ok(titles.has(title), `missing command "${title}"`);
  });

  it('activates lazily: nothing but what VS Code derives from its views and commands, and panel restore', () => {
    assert.deepEqual(pkg.activationEvents, ['onWebviewPanel:pgLiveSync.progress']);
    assert.equal(pkg.main, 'dist/extension.js');
    assert.equal(pkg.contributes.viewsContainers.activitybar[0].title, 'Postgres Live Sync');
    assert.deepEqual(pkg.contributes.views.pgLiveSync.map((v: { name: string }) => v.name), ['Connections', 'Syncs']);
    assert.ok(pkg.contributes.viewsWelcome.some((w: { view: string; contents: string }) => w.view === 'pgLiveSync.connections' && /\[Add Connection\]\(command:pgLiveSync\.addConnection\)/.test(w.contents)));
    assert.ok(pkg.contributes.configuration.properties['pgLiveSync.connections'], 'the pgLiveSync.connections setting');
  });

  it('the vsix holds dist, media, README, LICENSE, CHANGELOG and package.json only', () => {
    const files = execFileSync(path.join(REPO, 'node_modules/.bin/vsce'), ['ls', '--no-dependencies'], { cwd: REPO, encoding: 'utf8' })
      .split('\n').map((l) => l.trim()).filter(Boolean);
    for (const f of ['dist/extension.js', 'dist/cli.js', 'dist/webview.js', 'README.md', 'LICENSE', 'CHANGELOG.md', 'package.json']) {
      assert.ok(files.includes(f), `${f} in the vsix (${files.join(', ')})`);
    }
    for (const f of files) {
      assert.match(f, /^(dist\/[a-z]+\.js|media\/.+|README\.md|LICENSE|CHANGELOG\.md|package\.json)$/, `unexpected file in the vsix: ${f}`);
      assert.doesNotMatch(f, /node_modules|^src\/|^test\/|\.map$|\.ts$|screenshots/, f);
    }
  });

  it('pg-live-sync --version (and -V, version) prints the version of package.json the CLI was built from', () => {
    for (const flag of ['--version', '-V', 'version']) {
      const out = execFileSync(process.execPath, [path.join(REPO, 'dist/cli.js'), flag], { encoding: 'utf8' });
      assert.equal(out, `pg-live-sync ${pkg.version}\n`, flag);
    }
  });
});
