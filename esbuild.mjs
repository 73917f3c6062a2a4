// Two builds for everything we ship: the CLI and the extension host bundle (node, cjs, `vscode`
// external), and the progress panel's webview script (browser, iife). Everything else is bundled
// so the vsix and `dist/cli.js` carry no node_modules.
import * as esbuild from 'esbuild';
import { readFileSync } from 'node:fs';

const { version } = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8'));

const watch = process.argv.includes('--watch');
const options = {
  entryPoints: { cli: 'src/cli/main.ts', extension: 'src/extension/extension.ts' },
  outdir: 'dist',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['vscode', 'pg-native'],
  define: { PG_LIVE_SYNC_VERSION: JSON.stringify(version) },
  sourcemap: true,
  logLevel: 'warning',
};
const webviewOptions = {
  entryPoints: { webview: 'webview/main.ts' },
  outdir: 'dist',
  bundle: true,
  platform: 'browser',
  format: 'iife',
  target: 'es2022',
  minify: true,
  sourcemap: false,
  logLevel: 'warning',
};

if (watch) {
  const contexts = await Promise.all([esbuild.context(options), esbuild.context(webviewOptions)]);
  await Promise.all(contexts.map((ctx) => ctx.watch()));
} else {
  await Promise.all([esbuild.build(options), esbuild.build(webviewOptions)]);
}
