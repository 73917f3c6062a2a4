// One build for everything we ship: the CLI and the extension host bundle (node, cjs, `vscode`
// external). Everything else is bundled so the vsix and `dist/cli.js` carry no node_modules.
import * as esbuild from 'esbuild';

const watch = process.argv.includes('--watch');
const options = {
  entryPoints: { cli: 'src/cli/main.ts', extension: 'src/extension/extension.ts' },
  outdir: 'dist',
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['vscode', 'pg-native'],
  sourcemap: true,
  logLevel: 'warning',
};

if (watch) {
  const ctx = await esbuild.context(options);
  await ctx.watch();
} else {
  await esbuild.build(options);
}
