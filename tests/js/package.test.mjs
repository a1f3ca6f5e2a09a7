// The npm package as a user gets it: `npm pack` of clients/js, unpacked, its minified
// build loaded by a plain <script> tag and its ES module imported, in chromium against
// the real server; the package imported by name in Node; the committed build up to date.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

import { ROOT, startRealtimeServer } from './helpers.mjs';

const run = promisify(execFile);
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const PACKAGE = path.join(ROOT, 'clients', 'js');
const WAIT = 10000;

let tmp;
let unpacked; // the tarball's `package/` directory
let tarball;

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'realtime-jspack-'));
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: PACKAGE });
  const [info] = JSON.parse(stdout);
  tarball = path.join(tmp, info.filename);
  const site = path.join(tmp, 'site');
  fs.mkdirSync(site);
  await run('tar', ['-xzf', tarball, '-C', site]);
  unpacked = path.join(site, 'package');
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('the committed dist/realtime.min.js is what build.mjs makes of realtime.js', async () => {
  const fresh = path.join(tmp, 'fresh.min.js');
  await run(process.execPath, [path.join(PACKAGE, 'build.mjs'), fresh]);
  assert.ok(
    fs.readFileSync(fresh).equals(fs.readFileSync(path.join(PACKAGE, 'dist', 'realtime.min.js'))),
    'clients/js/dist/realtime.min.js is stale: run `npm run build` in clients/js and commit it',
  );
});

test('the tarball holds the module, the types and the minified build', () => {
  const files = fs.readdirSync(unpacked, { recursive: true }).filter((f) => fs.statSync(path.join(unpacked, f)).isFile());
  assert.deepEqual(files.sort(), ['README.md', 'dist/realtime.min.js', 'package.json', 'realtime.d.ts', 'realtime.js']);
  const pkg = JSON.parse(fs.readFileSync(path.join(unpacked, 'package.json'), 'utf8'));
  assert.equal(pkg.exports['.'].types, './realtime.d.ts');
  assert.equal(pkg.exports['.'].import, './realtime.js');
  assert.equal(pkg.exports['./realtime.min.js'], './dist/realtime.min.js');
  assert.match(fs.readFileSync(path.join(unpacked, 'realtime.d.ts'), 'utf8'), /export declare class RealtimeClient/);
});

test('installed from the tarball, Node imports it by name', async () => {
  const app = path.join(tmp, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  await run('npm', ['install', '--no-audit', '--no-fund', '--offline', tarball], { cwd: app });
  const { stdout } = await run(
    process.execPath,
    [
      '--input-type=module',
      '-e',
      "import { RealtimeClient, VERSION } from 'realtime-proto-client';" +
        "import { createRequire } from 'node:module';" +
        "const min = createRequire(import.meta.url).resolve('realtime-proto-client/realtime.min.js');" +
        'console.log(JSON.stringify({ client: typeof RealtimeClient, VERSION, min }));',
    ],
    { cwd: app },
  );
  const got = JSON.parse(stdout);
  const pkg = JSON.parse(fs.readFileSync(path.join(PACKAGE, 'package.json'), 'utf8'));
  assert.equal(got.client, 'function');
  assert.equal(got.VERSION, pkg.version);
  assert.equal(got.min, path.join(app, 'node_modules', 'realtime-proto-client', 'dist', 'realtime.min.js'));
});

describe('the packed client in chromium', () => {
  let browser;
  let server;

  before(async () => {
    assert.ok(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM} (apt-get install -y chromium)`);
    const site = path.dirname(unpacked);
    // Each page subscribes to `news` and records what arrives in window.got.
    const body = `
      const realtime = new RealtimeClient(location.origin);
      window.got = [];
      const news = realtime.subscribe('news');
      news.on('headline', (data) => window.got.push(data));
      news.on('subscription.succeeded', () => { window.ready = realtime.transport; });`;
    fs.writeFileSync(
      path.join(site, 'script.html'),
      `<!doctype html><meta charset="utf-8"><script src="/package/dist/realtime.min.js"></script>
       <script>const { RealtimeClient } = window.Realtime; ${body}</script>`,
    );
    fs.writeFileSync(
      path.join(site, 'module.html'),
      `<!doctype html><meta charset="utf-8"><script type="module">
       import { RealtimeClient } from '/package/realtime.js'; ${body}</script>`,
    );
    server = await startRealtimeServer({ staticDir: site });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
      timeout: 30000,
    });
  });

  after(async () => {
    await browser?.close();
    await server?.kill('SIGTERM');
  });

  test('the server serves the same minified build at /realtime.min.js', async () => {
    const res = await fetch(`${server.httpUrl}/realtime.min.js`);
    assert.equal(res.status, 200);
    assert.ok(Buffer.from(await res.arrayBuffer()).equals(fs.readFileSync(path.join(unpacked, 'dist', 'realtime.min.js'))));
  });

  for (const [page, how] of [['script.html', 'a plain <script> tag'], ['module.html', 'an ES module import']]) {
    test(`${how}: connect, subscribe, receive a publish`, async () => {
      const tab = await browser.newPage();
      const errors = [];
      tab.on('pageerror', (err) => errors.push(String(err)));
      try {
        await tab.goto(`${server.httpUrl}/${page}`);
        await tab.waitForFunction(() => window.ready, null, { timeout: WAIT });
        assert.equal(await tab.evaluate(() => window.ready), 'websocket');
        await server.publish('news', 'headline', { page });
        await tab.waitForFunction(() => window.got.length > 0, null, { timeout: WAIT });
        assert.deepEqual(await tab.evaluate(() => window.got), [{ page }]);
        assert.deepEqual(errors, []);
      } finally {
        await tab.close();
      }
    });
  }
});
