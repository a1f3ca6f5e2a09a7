// Build dist/realtime.min.js: realtime.js minified into one script for a plain
// <script> tag, exposing the module's exports as the global `Realtime`
// (`new Realtime.RealtimeClient(...)`). `node build.mjs [OUTFILE]` (npm run build)
// writes dist/realtime.min.js, or OUTFILE (the tests compare the two).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const here = path.dirname(fileURLToPath(import.meta.url));
const outfile = process.argv[2] ? path.resolve(process.argv[2]) : path.join(here, 'dist', 'realtime.min.js');

await build({
  entryPoints: [path.join(here, 'realtime.js')],
  outfile,
  bundle: true,
  minify: true,
  format: 'iife',
  globalName: 'Realtime',
  platform: 'browser',
  target: 'es2020',
  legalComments: 'none',
  logLevel: 'warning',
  banner: { js: '/* realtime-proto-client: built from realtime.js by build.mjs (npm run build); MIT */' },
});
