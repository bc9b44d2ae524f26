// Bundles src/extension.ts and its npm dependencies into dist/extension.js
// (vscode stays external: the editor provides it).
import { build } from 'esbuild';

await build({
  entryPoints: ['src/extension.ts'],
  bundle: true,
  outfile: 'dist/extension.js',
  external: ['vscode'],
  format: 'cjs',
  platform: 'node',
  // jsonc-parser's CommonJS build is a UMD wrapper whose require() calls esbuild
  // cannot follow; its ES module build bundles cleanly.
  mainFields: ['module', 'main'],
  target: 'node18',
  sourcemap: true,
  minify: process.argv.includes('--minify'),
  logLevel: 'info',
});
