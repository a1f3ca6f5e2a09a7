// The client in a real browser (Debian's chromium driven by playwright-core)
// on every transport, and the example chat with two users.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

import { RealtimeClient } from '../../clients/js/realtime.js';
import { signJwt, startChatServer, startRealtimeServer, waitEvent, waitState } from './helpers.mjs';

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const TRANSPORTS = ['websocket', 'sse', 'polling'];
const WAIT = 10000;

let browser;

before(async () => {
  assert.ok(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM} (apt-get install -y chromium)`);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: 30000,
  });
});

after(async () => {
  await browser?.close();
});

/** Collect page errors so a broken page fails loudly instead of timing out. */
function watch(page) {
  const errors = [];
  page.on('pageerror', (err) => errors.push(String(err)));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.location()?.url?.endsWith('/favicon.ico')) errors.push(msg.text());
  });
  return errors;
}

describe('the client in chromium', () => {
  let server;
  let context;
  const nodeClients = [];

  before(async () => {
    server = await startRealtimeServer();
    context = await browser.newContext();
  });

  after(async () => {
    for (const c of nodeClients) c.disconnect();
    await context?.close();
    await server?.kill('SIGTERM');
  });

  for (const transport of TRANSPORTS) {
    test(`${transport}: connect, receive, client events and presence`, async () => {
      const page = await context.newPage();
      const errors = watch(page);
      try {
        await page.goto(`${server.httpUrl}/health`);
        const token = signJwt(server.jwtSecret, {
          sub: `web-${transport}`,
          info: { name: 'Web' },
          channels: ['private-*', 'presence-*'],
        });
        const room = `presence-browser.${transport}`;
        const chat = `private-browser.${transport}`;

        const info = await page.evaluate(
          async ({ token, transport, room, chat, wait }) => {
            const { RealtimeClient } = await import('/realtime.js');
            const url = location.origin.replace(/^http/, 'ws');
            const c = new RealtimeClient(url, { auth: { token }, transports: [transport] });
            window.rt = c;
            window.got = [];
            window.states = [];
            c.on('state', (s) => window.states.push(s));
            const when = (emitter, event) =>
              new Promise((resolve, reject) => {
                const t = setTimeout(() => reject(new Error(`no ${event}`)), wait);
                emitter.once(event, (...args) => {
                  clearTimeout(t);
                  resolve(args);
                });
              });
            await when(c, 'connected');
            const news = c.subscribe('news');
            news.on('*', (event, data) => window.got.push(['news', event, data]));
            const ch = c.subscribe(chat);
            ch.on('*', (event, data, msg) => window.got.push([chat, event, data, msg.user_id ?? null]));
            const presence = c.subscribe(room);
            presence.on('user.joined', (m) => window.got.push([room, 'user.joined', m.user_id]));
            await Promise.all([when(news, 'subscription.succeeded'), when(ch, 'subscription.succeeded'), when(presence, 'presence.sync')]);
            return { connectionId: c.connectionId, userId: c.userId, transport: c.transport };
          },
          { token, transport, room, chat, wait: WAIT },
        );
        assert.equal(typeof info.connectionId, 'string');
        assert.equal(info.userId, `web-${transport}`);
        assert.equal(info.transport, transport);
        assert.deepEqual(await page.evaluate(() => window.states), ['connecting', 'connected']);

        // Published through the HTTP API.
        await server.publish('news', 'headline', { text: 'from the API' });
        await page.waitForFunction(() => window.got.some((g) => g[0] === 'news' && g[1] === 'headline'), null, { timeout: WAIT });

        // A Node client joins: the page sees it join, and the two exchange client events.
        const node = new RealtimeClient(server.wsUrl, {
          WebSocket,
          auth: { token: signJwt(server.jwtSecret, { sub: 'node', info: { name: 'Node' }, channels: ['private-*', 'presence-*'] }) },
        });
        nodeClients.push(node);
        await waitState(node, 'connected', WAIT);
        const nodeChat = node.subscribe(chat);
        const nodeRoom = node.subscribe(room);
        const [members] = await waitEvent(nodeRoom, 'presence.sync', { timeout: WAIT });
        assert.deepEqual(members.map((m) => m.user_id).sort(), ['node', `web-${transport}`]);
        if (nodeChat.state !== 'subscribed') await waitEvent(nodeChat, 'subscription.succeeded', { timeout: WAIT });
        await page.waitForFunction((room) => window.got.some((g) => g[0] === room && g[2] === 'node'), room, { timeout: WAIT });

        const fromPage = waitEvent(nodeChat, 'hello', { timeout: WAIT });
        await page.evaluate((chat) => window.rt.channel(chat).send('hello', { from: 'page' }), chat);
        const [data, msg] = await fromPage;
        assert.deepEqual(data, { from: 'page' });
        assert.equal(msg.user_id, `web-${transport}`);

        nodeChat.send('reply', { from: 'node' });
        await page.waitForFunction(
          (chat) => window.got.some((g) => g[0] === chat && g[1] === 'reply' && g[3] === 'node'),
          chat,
          { timeout: WAIT },
        );
        node.disconnect();
        await page.evaluate(() => window.rt.disconnect());
        assert.deepEqual(errors, []);
      } finally {
        await page.close();
      }
    });
  }
});

describe('an expiring token refreshed by getToken in chromium', () => {
  let server;
  let context;

  before(async () => {
    // asked 2 s before exp; tokens live 3-4 s: a refresh every 1-2 s
    server = await startRealtimeServer({ extraArgs: ['--refresh-lead', '2'] });
    context = await browser.newContext();
  });

  after(async () => {
    await context?.close();
    await server?.kill('SIGTERM');
  });

  for (const transport of TRANSPORTS) {
    test(`${transport}: several refreshes, the same connection, no gap in delivery`, async () => {
      const page = await context.newPage();
      const errors = watch(page);
      try {
        await page.goto(`${server.httpUrl}/health`);
        await page.exposeFunction('mintToken', () =>
          signJwt(server.jwtSecret, { sub: `exp-${transport}`, exp: Math.floor(Date.now() / 1000) + 4 }),
        );
        await page.evaluate(
          async ({ transport, wait }) => {
            const { RealtimeClient } = await import('/realtime.js');
            const url = location.origin.replace(/^http/, 'ws');
            const c = new RealtimeClient(url, { getToken: () => window.mintToken(), transports: [transport] });
            window.rt = c;
            window.got = [];
            window.states = [];
            window.refreshed = 0;
            c.on('state', (s) => window.states.push(s));
            c.on('connection.refreshed', () => window.refreshed++);
            await new Promise((resolve, reject) => {
              const t = setTimeout(() => reject(new Error('not connected')), wait);
              c.once('connected', () => resolve(clearTimeout(t)));
            });
            window.firstId = c.connectionId;
            const ch = c.subscribe('ticks');
            ch.on('n', (data) => window.got.push(data));
            await new Promise((resolve) => ch.once('subscription.succeeded', resolve));
          },
          { transport, wait: WAIT },
        );
        let sent = 0;
        while ((await page.evaluate(() => window.refreshed)) < 3) {
          await server.publish('ticks', 'n', sent++);
          await new Promise((resolve) => setTimeout(resolve, 200));
          assert.ok(sent < 100, 'no third refresh within 20 s');
        }
        await page.waitForFunction((n) => window.got.length === n, sent, { timeout: WAIT });
        const result = await page.evaluate(() => ({
          got: window.got,
          states: window.states,
          same: window.rt.connectionId === window.firstId,
        }));
        assert.deepEqual(result.got, [...Array(sent).keys()]);
        assert.deepEqual(result.states, ['connecting', 'connected']);
        assert.ok(result.same);
        await page.evaluate(() => window.rt.disconnect());
        assert.deepEqual(errors, []);
      } finally {
        await page.close();
      }
    });
  }
});

describe('the example chat', () => {
  let server;
  let carol;

  before(async () => {
    server = await startChatServer();
  });

  after(async () => {
    carol?.disconnect();
    await server?.kill('SIGTERM');
  });

  async function join(context, name, query = '') {
    const page = await context.newPage();
    const errors = watch(page);
    await page.goto(`${server.httpUrl}/${query}#general`);
    await page.fill('#name-input', name);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#connection[data-state="connected"]', { timeout: WAIT });
    return { page, errors };
  }

  const memberNames = (page) => page.$$eval('#member-list .member-name', (els) => els.map((e) => e.textContent).sort());

  test('two users: online list, typing, messages, read receipts, system messages, leaving', async () => {
    const ctxA = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    // Bob uses long-polling, so both ends see traffic across transports.
    const ctxB = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    try {
      const { page: alice, errors: aliceErrors } = await join(ctxA, 'alice');
      const { page: bob, errors: bobErrors } = await join(ctxB, 'bob', '?transports=polling');
      assert.equal(await alice.textContent('#connection-transport'), 'websocket');
      assert.equal(await bob.textContent('#connection-transport'), 'polling');

      // Both appear online, for each other.
      await alice.waitForFunction(
        () => [...document.querySelectorAll('#member-list .member-name')].map((e) => e.textContent).sort().join() === 'alice,bob',
        null,
        { timeout: WAIT },
      );
      await bob.waitForFunction(() => document.querySelectorAll('#member-list .member').length === 2, null, { timeout: WAIT });
      assert.deepEqual(await memberNames(bob), ['alice', 'bob']);

      // Typing indicator.
      await alice.click('#composer-input');
      await alice.keyboard.type('Hi Bob, welcome to the new chat!');
      await bob.waitForFunction(() => document.querySelector('#typing').textContent.includes('alice is typing'), null, { timeout: WAIT });

      // The message arrives, authored by alice (from message.user_id), and clears the indicator.
      await alice.keyboard.press('Enter');
      await bob.waitForSelector('.message[data-user="alice"] .text >> text=Hi Bob, welcome to the new chat!', { timeout: WAIT });
      assert.equal(await bob.textContent('.message[data-user="alice"] .author'), 'alice');
      await bob.waitForFunction(() => document.querySelector('#typing').textContent === '', null, { timeout: WAIT });
      assert.equal(await alice.$$eval('.message.own', (els) => els.length), 1);
      assert.equal(await bob.$$eval('.message.own', (els) => els.length), 0);

      // Read receipt: bob's page is visible, so it reports what it saw.
      await alice.waitForSelector('.seen >> text=Seen by bob', { timeout: WAIT });

      await bob.click('#composer-input');
      await bob.keyboard.type('Thanks! Typing from a long-poll connection, by the way.');
      await bob.keyboard.press('Enter');
      await alice.waitForSelector('.message[data-user="bob"] .text >> text=long-poll connection', { timeout: WAIT });

      // Published by a backend through the HTTP API: a system message for both.
      await server.publish('private-room.general', 'message.sent', { user: 'server', text: 'Deploy finished: v1.4.2 is live.' });
      await alice.waitForSelector('.message.system .text >> text=Deploy finished', { timeout: WAIT });
      await bob.waitForSelector('.message.system .text >> text=Deploy finished', { timeout: WAIT });
      // bob read it: the receipt sits centred under the (centred) system message
      await alice.waitForSelector('.seen.system >> text=Seen by bob', { timeout: WAIT });
      const [systemMiddle, seenMiddle] = await alice.evaluate(() => {
        const middle = (...nodes) => {
          const boxes = nodes.map((node) => node.getBoundingClientRect());
          return (Math.min(...boxes.map((b) => b.left)) + Math.max(...boxes.map((b) => b.right))) / 2;
        };
        const systems = document.querySelectorAll('.message.system');
        // what is drawn: the receipt's icon and text, not its box
        return [middle(systems[systems.length - 1]), middle(...document.querySelector('.seen').children)];
      });
      assert.ok(Math.abs(systemMiddle - seenMiddle) < 24, `receipt at ${seenMiddle}, message at ${systemMiddle}`);

      // A third user from Node, typing, for a lively screenshot.
      carol = new RealtimeClient(server.wsUrl, { WebSocket, auth: { token: 'carol' } });
      const carolRoom = carol.subscribe('private-room.general');
      carol.subscribe('presence-room.general');
      await waitEvent(carolRoom, 'subscription.succeeded', { timeout: WAIT });
      await alice.waitForFunction(() => document.querySelectorAll('#member-list .member').length === 3, null, { timeout: WAIT });
      carolRoom.send('message.sent', { id: 'carol-1', text: 'Nice, the typing indicator and read receipts work across transports.' });
      carolRoom.send('message.sent', { id: 'carol-2', text: 'And if my connection drops, my messages wait in the queue until it is back.' });
      await alice.waitForSelector('.message[data-key="carol-2"]', { timeout: WAIT });
      assert.equal(await alice.$$eval('.message[data-user="carol"]', (els) => els.length), 2);
      assert.equal(await alice.$$eval('.message[data-user="carol"].grouped', (els) => els.length), 1);
      await alice.click('#composer-input');
      await alice.keyboard.type('Agreed. Shipping it.');
      await alice.keyboard.press('Enter');
      await alice.waitForSelector('.seen >> text=Seen by bob', { timeout: WAIT });
      carolRoom.send('typing', { typing: true });
      await alice.waitForFunction(() => document.querySelector('#typing').textContent.includes('carol is typing'), null, { timeout: WAIT });

      // Under a fresh temporary directory: `make screenshot` sets CHAT_SCREENSHOT to
      // docs/chat.png, the README's picture; a test run leaves the checkout alone.
      const shot = process.env.CHAT_SCREENSHOT || path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'realtime-chat-')), 'chat.png');
      await alice.screenshot({ path: shot });
      assert.ok(fs.statSync(shot).size > 10000);

      // Bob closes his page: alice sees him leave.
      await bob.close({ runBeforeUnload: true });
      await alice.waitForFunction(
        () => ![...document.querySelectorAll('#member-list .member-name')].some((e) => e.textContent === 'bob'),
        null,
        { timeout: WAIT },
      );
      assert.deepEqual(await memberNames(alice), ['alice', 'carol']);

      assert.deepEqual(aliceErrors, []);
      assert.deepEqual(bobErrors, []);
    } finally {
      await ctxA.close();
      await ctxB.close();
    }
  });

  test('a name that is online is refused to someone else, and free once they leave', async () => {
    const ctxA = await browser.newContext();
    const ctxB = await browser.newContext(); // another browser: another key
    try {
      const { page: first, errors } = await join(ctxA, 'gina');
      const second = await ctxB.newPage();
      await second.goto(`${server.httpUrl}/#general`);
      await second.fill('#name-input', 'gina');
      await second.click('#login-form button[type=submit]');
      await second.waitForFunction(() => document.querySelector('#login-error').textContent.includes('in use'), null, { timeout: WAIT });
      assert.equal(await second.isVisible('#app'), false);
      assert.equal(await second.inputValue('#name-input'), 'gina');

      await first.close({ runBeforeUnload: true });
      const deadline = Date.now() + WAIT; // until the server has seen gina leave
      for (;;) {
        await second.click('#login-form button[type=submit]');
        const state = await second.waitForFunction(
          () => (document.querySelector('#login-error').textContent ? 'refused' : document.querySelector('#connection').dataset.state === 'connected' && 'in'),
          null,
          { timeout: WAIT },
        );
        if ((await state.jsonValue()) === 'in') break;
        assert.ok(Date.now() < deadline, 'gina was still online');
      }
      assert.equal(await second.textContent('#me-name'), 'gina');
      assert.deepEqual(errors, []);
    } finally {
      await ctxA.close();
      await ctxB.close();
    }
  });

  test('rooms: switching and creating a room, unread badges', async () => {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    try {
      const { page, errors } = await join(ctx, 'dora');
      await page.fill('#new-room-input', 'Design Reviews');
      await page.press('#new-room-input', 'Enter');
      await page.waitForSelector('.room.active[data-room="design-reviews"]', { timeout: WAIT });
      assert.equal(await page.textContent('#room-title'), 'design-reviews');
      await page.waitForFunction(() => document.querySelectorAll('#member-list .member').length === 1, null, { timeout: WAIT });

      // A message in a room not shown counts as unread.
      await server.publish('private-room.general', 'message.sent', { user: 'server', text: 'unread one' });
      await page.waitForSelector('.room[data-room="general"] .unread >> text=1', { timeout: WAIT });
      await page.click('.room[data-room="general"]');
      await page.waitForSelector('.message.system .text >> text=unread one', { timeout: WAIT });
      assert.equal(await page.$('.room[data-room="general"] .unread'), null);
      assert.deepEqual(errors, []);
    } finally {
      await ctx.close();
    }
  });
});

describe('compression in chromium', () => {
  let server;
  let context;

  before(async () => {
    server = await startRealtimeServer({ extraArgs: ['--compression'] });
    context = await browser.newContext();
  });

  after(async () => {
    await context?.close();
    await server?.kill('SIGTERM');
  });

  test('websocket: chromium agrees to permessage-deflate and reads compressed broadcasts', async () => {
    const page = await context.newPage();
    const errors = watch(page);
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    const handshakes = [];
    cdp.on('Network.webSocketHandshakeResponseReceived', (event) => handshakes.push(event.response.headers));
    try {
      await page.goto(`${server.httpUrl}/health`);
      await page.evaluate(async ({ wait }) => {
        const { RealtimeClient } = await import('/realtime.js');
        const c = new RealtimeClient(location.origin.replace(/^http/, 'ws'), { transports: ['websocket'] });
        window.got = [];
        const when = (emitter, event) =>
          new Promise((resolve, reject) => {
            const t = setTimeout(() => reject(new Error(`no ${event}`)), wait);
            emitter.once(event, () => {
              clearTimeout(t);
              resolve();
            });
          });
        await when(c, 'connected');
        const news = c.subscribe('news');
        news.on('said', (data) => window.got.push(data));
        await when(news, 'subscription.succeeded');
      }, { wait: WAIT });
      const extensions = handshakes.map((h) => h['Sec-WebSocket-Extensions'] ?? h['sec-websocket-extensions']);
      assert.equal(extensions.length, 1);
      assert.match(extensions[0], /^permessage-deflate; server_no_context_takeover/);

      const before = await deflateEncodings(server);
      const text = 'a chat message long enough to be worth compressing, '.repeat(20);
      await server.publish('news', 'said', { text });
      await page.waitForFunction(() => window.got.length === 1, null, { timeout: WAIT });
      assert.deepEqual(await page.evaluate(() => window.got), [{ text }]);
      assert.equal(await deflateEncodings(server), before + 1); // it went out compressed
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
  });
});

/** How many broadcasts the server compressed (`encodings_total{framing="websocket-deflate"}`). */
async function deflateEncodings(server) {
  const text = await (await fetch(`${server.httpUrl}/metrics`)).text();
  const line = text.split('\n').find((l) => l.includes('framing="websocket-deflate"'));
  return line ? Number(line.trim().split(/\s+/).pop()) : 0;
}
