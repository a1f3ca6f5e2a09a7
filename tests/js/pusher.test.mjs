// The Pusher Channels protocol against the real server, with the real, unmodified
// pusher-js (8.x, its Node build and its own WebSocket client) and the official Python
// server SDK (`pusher` on PyPI) for the backend calls. The channel auth endpoint is
// written here, signing with the app secret as a backend does.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';

import Echo from 'laravel-echo';
import PusherServer from 'pusher';
import Pusher from 'pusher-js';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

import { RealtimeClient } from '../../clients/js/realtime.js';
import { ROOT, freePort, pythonBin, startRealtimeServer, until, waitEvent, withTimeout } from './helpers.mjs';

const APP_ID = '4242';
const KEY = 'app-key';
const SECRET = 'app-secret';
const APP = `${APP_ID}:${KEY}:${SECRET}`;
const run = promisify(execFile);

let uniq = 0;
const unique = (prefix) => `${prefix}${Date.now().toString(36)}${++uniq}`;

/** Run the official Python SDK against a server; what `code` prints, as JSON. */
async function sdk(port, code) {
  const script = [
    'import json, pusher',
    `client = pusher.Pusher(app_id='${APP_ID}', key='${KEY}', secret='${SECRET}', host='127.0.0.1', port=${port}, ssl=False)`,
    code,
  ].join('\n');
  const { stdout } = await run(pythonBin(), ['-c', script], { timeout: 20000 });
  return stdout.trim() ? JSON.parse(stdout) : null;
}

const trigger = (port, channel, event, data, extra = '') =>
  sdk(port, `print(json.dumps(client.trigger(${JSON.stringify(channel)}, ${JSON.stringify(event)}, ${JSON.stringify(JSON.stringify(data))}${extra})))`);

/** The official Node server SDK (`pusher` on npm) pointed at a node. */
const MASTER_KEY = crypto.randomBytes(32).toString('base64');
const nodeSdk = (port) =>
  new PusherServer({
    appId: APP_ID,
    key: KEY,
    secret: SECRET,
    host: '127.0.0.1',
    port: String(port),
    useTLS: false,
    encryptionMasterKeyBase64: MASTER_KEY,
  });

/** The app backend's channel auth endpoint: `user` (a param pusher-js sends) is the
 * presence member; `private-denied…` is refused, `private-forged…` signed with a wrong
 * secret (so the server refuses it). */
async function startAuthEndpoint() {
  const backend = nodeSdk(1); // only signs here
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => (body += d));
    req.on('end', () => {
      const form = new URLSearchParams(body);
      const socketId = form.get('socket_id');
      // pusher-js sends `user` as a param; an Echo client names it in its endpoint's query
      if (!form.get('user')) form.set('user', new URL(req.url, 'http://x').searchParams.get('user') ?? 'anon');
      if (req.url.startsWith('/pusher/user-auth')) {
        const user = form.get('user');
        const answer = backend.authenticateUser(socketId, { id: user, user_info: { name: user } });
        res.writeHead(200, { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' }).end(JSON.stringify(answer));
        return;
      }
      const channel = form.get('channel_name');
      if (channel.startsWith('private-encrypted-')) {
        const answer = backend.authorizeChannel(socketId, channel); // with its shared_secret
        res.writeHead(200, { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' }).end(JSON.stringify(answer));
        return;
      }
      if (channel.startsWith('private-denied')) {
        res.writeHead(403).end('{"error":"no"}');
        return;
      }
      const answer = {};
      let text = `${socketId}:${channel}`;
      if (channel.startsWith('presence-')) {
        const user = form.get('user');
        answer.channel_data = JSON.stringify({ user_id: user, user_info: { name: user.toUpperCase() } });
        text += `:${answer.channel_data}`;
      }
      const secret = channel.startsWith('private-forged') ? 'wrong-secret' : SECRET;
      answer.auth = `${KEY}:${crypto.createHmac('sha256', secret).update(text).digest('hex')}`;
      res.writeHead(200, { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' }).end(JSON.stringify(answer));
    });
  });
  const port = await freePort();
  await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${port}/pusher/auth`,
    userUrl: `http://127.0.0.1:${port}/pusher/user-auth`,
    close: () => new Promise((r) => server.close(r)),
  };
}

const pushers = new Set();

function makePusher(port, { user = 'anon', key = KEY } = {}) {
  const pusher = new Pusher(key, {
    cluster: 'local', // required even with wsHost
    wsHost: '127.0.0.1',
    wsPort: port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: { endpoint: auth.url, transport: 'ajax', params: { user } },
    userAuthentication: { endpoint: auth.userUrl, transport: 'ajax', params: { user } },
  });
  pushers.add(pusher);
  return pusher;
}

/** Resolve with the args of the first `event` on a pusher-js emitter (channel, connection). */
function once(emitter, event, { timeout = 8000, filter = () => true } = {}) {
  let handler;
  const promise = new Promise((resolve) => {
    handler = (...args) => {
      if (filter(...args)) resolve(args);
    };
    emitter.bind(event, handler);
  });
  return withTimeout(promise, timeout, `pusher-js "${event}"`).finally(() => emitter.unbind(event, handler));
}

async function connected(pusher) {
  if (pusher.connection.state !== 'connected') await once(pusher.connection, 'connected');
  return pusher;
}

async function subscribed(pusher, name) {
  const channel = pusher.subscribe(name);
  const outcome = await Promise.race([
    once(channel, 'pusher:subscription_succeeded').then((args) => ['ok', ...args]),
    once(channel, 'pusher:subscription_error').then((args) => ['error', ...args]),
  ]);
  return { channel, outcome };
}

let auth;
let server;

before(async () => {
  auth = await startAuthEndpoint();
  server = await startRealtimeServer({ extraArgs: ['--pusher-app', APP] });
});

after(async () => {
  for (const pusher of pushers) pusher.disconnect();
  await server?.kill('SIGTERM');
  await auth?.close();
});

describe('pusher-js on one node', () => {
  test('connects with a digits.digits socket_id; a wrong key is refused for good (4001)', async () => {
    const pusher = await connected(makePusher(server.port));
    assert.match(pusher.connection.socket_id, /^\d+\.\d+$/);
    const refused = makePusher(server.port, { key: 'no-such-key' });
    const stopped = once(refused.connection, 'state_change', {
      filter: (change) => change.current === 'disconnected' || change.current === 'failed',
    });
    const [error] = await once(refused.connection, 'error');
    assert.equal(error.error.data.code, 4001); // the pusher:error frame ahead of the close
    // 4000-4099 stop pusher-js: it gives up instead of reconnecting
    await stopped;
    refused.disconnect();
  });

  test('a public channel gets what the Python SDK triggers, and the socket_id it excludes', async () => {
    const name = unique('orders-');
    const one = await connected(makePusher(server.port));
    const two = await connected(makePusher(server.port));
    const { channel: ch1 } = await subscribed(one, name);
    const { channel: ch2 } = await subscribed(two, name);
    const got1 = [];
    ch1.bind('created', (data) => got1.push(data));
    const received = once(ch2, 'created');
    await trigger(server.port, name, 'created', { id: 1, text: 'é' }, `, socket_id='${one.connection.socket_id}'`);
    assert.deepEqual((await received)[0], { id: 1, text: 'é' });
    const second = once(ch1, 'second');
    await trigger(server.port, name, 'second', { id: 2 });
    assert.deepEqual((await second)[0], { id: 2 });
    assert.deepEqual(got1, []); // excluded from the first, which was sent before the second
  });

  test('private channels: signed by the backend, refusals reach the channel', async () => {
    const pusher = await connected(makePusher(server.port));
    const ok = await subscribed(pusher, unique('private-ok-'));
    assert.equal(ok.outcome[0], 'ok');
    const denied = await subscribed(pusher, unique('private-denied-'));
    assert.equal(denied.outcome[0], 'error');
    assert.equal(denied.outcome[1].status, 403); // refused by the backend
    const forged = await subscribed(pusher, unique('private-forged-'));
    assert.equal(forged.outcome[0], 'error');
    assert.equal(forged.outcome[1].type, 'AuthError'); // refused by the server
    assert.equal(forged.outcome[1].status, 401);
    assert.equal(pusher.connection.state, 'connected');
  });

  test('presence: members, member_added and member_removed once per user, client events', async () => {
    const name = unique('presence-room-');
    const ann1 = await connected(makePusher(server.port, { user: 'ann' }));
    const ann2 = await connected(makePusher(server.port, { user: 'ann' }));
    const bob = await connected(makePusher(server.port, { user: 'bob' }));
    const { channel: a1 } = await subscribed(ann1, name);
    const added = [];
    a1.bind('pusher:member_added', (member) => added.push(member.id));
    const { channel: a2, outcome } = await subscribed(ann2, name);
    assert.equal(outcome[1].count, 1); // ann once, with two connections
    const bobAdded = once(a1, 'pusher:member_added');
    const { channel: b, outcome: bobOutcome } = await subscribed(bob, name);
    assert.equal(bobOutcome[1].count, 2);
    assert.deepEqual(bobOutcome[1].members, { ann: { name: 'ANN' }, bob: { name: 'BOB' } });
    await bobAdded;
    assert.deepEqual(added, ['bob']); // ann's second connection added no one

    // client events: to the others, with the sender's user_id, never echoed
    const echoed = [];
    b.bind('client-typing', (data) => echoed.push(data));
    const whispers = [once(a1, 'client-typing'), once(a2, 'client-typing')];
    assert.equal(b.trigger('client-typing', { on: true }), true);
    for (const [data, metadata] of await Promise.all(whispers)) {
      assert.deepEqual(data, { on: true });
      assert.equal(metadata.user_id, 'bob');
    }
    const marker = once(b, 'marker');
    await trigger(server.port, name, 'marker', {});
    await marker;
    assert.deepEqual(echoed, []);

    // ann leaves one connection: still present; then the other: removed once
    const removed = [];
    b.bind('pusher:member_removed', (member) => removed.push(member.id));
    ann2.disconnect();
    await until(async () => {
      const info = await sdk(server.port, `print(json.dumps(client.channel_info('${name}', ['subscription_count'])))`);
      return info.subscription_count === 2;
    }, { timeout: 8000, what: "ann's second connection to be gone" });
    const marker2 = once(b, 'marker');
    await trigger(server.port, name, 'marker', {});
    await marker2;
    assert.deepEqual(removed, []);
    const gone = once(b, 'pusher:member_removed');
    ann1.disconnect();
    assert.equal((await gone)[0].id, 'ann');
    assert.equal(b.members.count, 1);
  });

  test('an encrypted channel passes through: the SDK encrypts, pusher-js decrypts', async () => {
    const name = unique('private-encrypted-');
    const pusher = await connected(makePusher(server.port));
    const { channel, outcome } = await subscribed(pusher, name);
    assert.equal(outcome[0], 'ok');
    const got = once(channel, 'secret');
    await nodeSdk(server.port).trigger(name, 'secret', { text: 'only the ends read this' });
    assert.deepEqual((await got)[0], { text: 'only the ends read this' });
  });

  test('cache channels: the last event after the success, or pusher:cache_miss (public, private, presence)', async () => {
    /** The channel's events in the order pusher-js hands them out, until `count` came. */
    async function seen(pusher, name, count) {
      const channel = pusher.channel(name) ?? pusher.subscribe(name);
      const events = [];
      channel.bind_global((event, data) => events.push([event, event === 'price' ? data : null]));
      await until(async () => events.length >= count, { timeout: 8000, what: `${count} events on ${name}` });
      return events;
    }
    const backend = nodeSdk(server.port);
    for (const prefix of ['cache-', 'private-cache-', 'presence-cache-']) {
      const empty = await connected(makePusher(server.port, { user: 'ann' }));
      assert.deepEqual(await seen(empty, unique(`${prefix}empty-`), 2), [
        ['pusher:subscription_succeeded', null], ['pusher:cache_miss', null]]);
      const name = unique(`${prefix}prices-`);
      await backend.trigger(name, 'price', { p: 1 });
      await backend.trigger(name, 'price', { p: 2 });
      const late = await connected(makePusher(server.port, { user: 'bob' }));
      assert.deepEqual(await seen(late, name, 2), [
        ['pusher:subscription_succeeded', null], ['price', { p: 2 }]]);
      const live = once(late.channel(name), 'price');
      await backend.trigger(name, 'price', { p: 3 });
      assert.deepEqual((await live)[0], { p: 3 });
    }
  });

  test('signin, sendToUser and terminateUserConnections with the Node SDK', async () => {
    const user = unique('user');
    const pusher = await connected(makePusher(server.port, { user }));
    const other = await connected(makePusher(server.port, { user: unique('other') }));
    const otherGot = [];
    other.user.bind('notice', (data) => otherGot.push(data));
    const signedIn = once(pusher.connection, 'message', {
      filter: (message) => message.event === 'pusher:signin_success',
    });
    pusher.signin();
    other.signin();
    await signedIn;
    const backend = nodeSdk(server.port);
    // the user channel's subscription may still be on its way: send until it arrives
    const got = [];
    pusher.user.bind('notice', (data) => got.push(data));
    await until(async () => {
      await backend.sendToUser(user, 'notice', { text: 'hi' });
      return got.length > 0;
    }, { timeout: 8000, interval: 200, what: 'the event sent to the user' });
    assert.deepEqual(got[0], { text: 'hi' });
    const closed = once(pusher.connection, 'state_change', { filter: (c) => c.current === 'disconnected' });
    await backend.terminateUserConnections(user);
    await closed; // 4009: pusher-js does not reconnect
    assert.equal(other.connection.state, 'connected');
    assert.deepEqual(otherGot, []);
  });

  test('a native client and a pusher-js client on one channel both get a broadcast', async () => {
    const name = unique('news-');
    const pusher = await connected(makePusher(server.port));
    const { channel } = await subscribed(pusher, name);
    const native = new RealtimeClient(server.wsUrl, { WebSocket, transports: ['websocket'] });
    try {
      const nch = native.subscribe(name);
      await waitEvent(nch, 'subscription.succeeded', { timeout: 8000 });
      const viaPusher = once(channel, 'headline');
      const viaNative = waitEvent(nch, 'headline', { timeout: 8000 });
      await server.publish(name, 'headline', { title: 'both' });
      assert.deepEqual((await viaPusher)[0], { title: 'both' });
      assert.deepEqual((await viaNative)[0], { title: 'both' });
    } finally {
      native.disconnect();
    }
  });
});

describe('Laravel Echo 2 on pusher-js', () => {
  const echos = [];

  function makeEcho(user, broadcaster = 'pusher') {
    const echo = new Echo({
      broadcaster,
      Pusher,
      key: KEY,
      cluster: 'local',
      wsHost: '127.0.0.1',
      wsPort: server.port,
      forceTLS: false,
      enabledTransports: ['ws', 'wss'],
      disableStats: true,
      authEndpoint: `${auth.url}?user=${user}`,
      withoutInterceptors: true,
    });
    echos.push(echo);
    return echo;
  }

  after(() => {
    for (const echo of echos) echo.disconnect();
  });

  const subscribedEcho = (channel) => withTimeout(new Promise((resolve) => channel.subscribed(resolve)), 8000, 'Echo subscribed');

  for (const broadcaster of ['pusher', 'reverb']) {
    test(`${broadcaster}: listen, private, presence here/joining/leaving, whisper, error`, async () => {
      const ann = makeEcho('ann', broadcaster);
      const bob = makeEcho('bob', broadcaster);
      const news = unique('news-');
      const publicChannel = ann.channel(news);
      const shipped = new Promise((resolve) => publicChannel.listen('.order.shipped', resolve));
      await subscribedEcho(publicChannel);
      await trigger(server.port, news, 'order.shipped', { id: 3 });
      assert.deepEqual(await withTimeout(shipped, 8000, 'listen'), { id: 3 });

      const room = unique('presence-room-');
      const here = new Promise((resolve) => ann.join(room).here(resolve));
      assert.deepEqual((await withTimeout(here, 8000, 'here')).map((m) => m.name), ['ANN']);
      const joining = new Promise((resolve) => ann.join(room).joining(resolve));
      const bobRoom = bob.join(room);
      const bobHere = new Promise((resolve) => bobRoom.here(resolve));
      assert.equal((await withTimeout(joining, 8000, 'joining')).name, 'BOB');
      assert.equal((await withTimeout(bobHere, 8000, 'bob here')).length, 2);
      const whispered = new Promise((resolve) => ann.join(room).listenForWhisper('typing', resolve));
      bobRoom.whisper('typing', { on: true });
      assert.deepEqual(await withTimeout(whispered, 8000, 'whisper'), { on: true });
      const leaving = new Promise((resolve) => ann.join(room).leaving(resolve));
      bob.leave(room);
      assert.equal((await withTimeout(leaving, 8000, 'leaving')).name, 'BOB');

      const refused = new Promise((resolve) => ann.private(unique('forged-')).error(resolve));
      const error = await withTimeout(refused, 8000, 'error()');
      assert.equal(error.status, 401); // the server's channel-level subscription_error
      const denied = new Promise((resolve) => ann.private(unique('denied-')).error(resolve));
      assert.equal((await withTimeout(denied, 8000, 'error() from the backend')).status, 403);
    });
  }
});

describe('pusher-js in headless chromium (its browser build)', () => {
  let browser;

  before(async () => {
    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
      timeout: 30000,
    });
  });

  after(async () => {
    await browser?.close();
  });

  test('connects, receives a trigger and sees a member join a presence channel', async () => {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (err) => errors.push(String(err)));
    await page.goto(`${server.httpUrl}/health`);
    await page.addScriptTag({ path: path.join(ROOT, 'tests', 'js', 'node_modules', 'pusher-js', 'dist', 'web', 'pusher.min.js') });
    const news = unique('news-');
    const room = unique('presence-room-');
    await page.evaluate(
      ({ key, port, authUrl, news, room }) => {
        window.got = [];
        const pusher = new window.Pusher(key, {
          cluster: 'local',
          wsHost: '127.0.0.1',
          wsPort: port,
          forceTLS: false,
          enabledTransports: ['ws', 'wss'],
          disableStats: true,
          channelAuthorization: { endpoint: authUrl, transport: 'ajax', params: { user: 'ann' } },
        });
        const ready = (channel) => new Promise((resolve) => channel.bind('pusher:subscription_succeeded', resolve));
        const newsChannel = pusher.subscribe(news);
        newsChannel.bind('headline', (data) => window.got.push(['headline', data]));
        const roomChannel = pusher.subscribe(room);
        roomChannel.bind('pusher:member_added', (member) => window.got.push(['added', member.id, member.info]));
        window.ready = Promise.all([ready(newsChannel), ready(roomChannel)]);
      },
      { key: KEY, port: server.port, authUrl: auth.url, news, room },
    );
    await withTimeout(page.evaluate(() => window.ready), 10000, 'the browser subscriptions');
    await trigger(server.port, news, 'headline', { title: 'in chromium' });
    const bob = await connected(makePusher(server.port, { user: 'bob' }));
    await subscribed(bob, room);
    await page.waitForFunction(() => window.got.length >= 2, null, { timeout: 10000 });
    assert.deepEqual(await page.evaluate(() => window.got), [
      ['headline', { title: 'in chromium' }],
      ['added', 'bob', { name: 'BOB' }],
    ]);
    assert.deepEqual(errors, []);
    await page.close();
  });
});

describe('Pusher webhooks, checked by the Node SDK', () => {
  let hooked;
  let receiver;
  const hooks = [];

  before(async () => {
    receiver = http.createServer((req, res) => {
      let rawBody = '';
      req.on('data', (d) => (rawBody += d));
      req.on('end', () => {
        const webhook = nodeSdk(1).webhook({ headers: req.headers, rawBody });
        hooks.push(webhook.isValid() ? webhook.getEvents() : 'invalid');
        res.writeHead(200).end();
      });
    });
    const port = await freePort();
    await new Promise((resolve) => receiver.listen(port, '127.0.0.1', resolve));
    hooked = await startRealtimeServer({
      extraArgs: ['--pusher-app', APP, '--pusher-webhook', `http://127.0.0.1:${port}/hook`],
    });
  });

  after(async () => {
    await hooked?.kill('SIGTERM');
    await new Promise((resolve) => receiver?.close(resolve));
  });

  test('member_added, client_event and member_removed from pusher-js clients', async () => {
    const room = unique('presence-room-');
    const ann = await connected(makePusher(hooked.port, { user: 'ann' }));
    const bob = await connected(makePusher(hooked.port, { user: 'bob' }));
    const { channel: a } = await subscribed(ann, room);
    await subscribed(bob, room);
    const whisper = once(a, 'client-typing');
    bob.channel(room).trigger('client-typing', { on: true });
    await whisper;
    const all = () => hooks.flatMap((h) => (h === 'invalid' ? [{ name: 'invalid' }] : h));
    const events = () => all().filter((e) => !e.name.startsWith('channel_')).map((e) => `${e.name}:${e.user_id}`);
    // presence is reported once a change has lasted the settle delay (a flap is not)
    await until(async () => events().includes('member_added:bob'), { timeout: 10000, what: 'bob reported' });
    bob.disconnect();
    await until(async () => events().length >= 4, { timeout: 10000, what: 'four webhook events' });
    // (the presence reports and the client event go in requests of their own: any order)
    assert.deepEqual(events().sort(), ['client_event:bob', 'member_added:ann', 'member_added:bob', 'member_removed:bob']);
    assert.deepEqual(all().filter((e) => e.name.startsWith('channel_')), [{ name: 'channel_occupied', channel: room }]);
  });
});

describe('pusher-js across two nodes on Redis', () => {
  let nodeA;
  let nodeB;

  before(async () => {
    // a prefix of its own: other clusters on the same Redis stay apart
    const broker = `redis://127.0.0.1:6379/0?prefix=${unique('rt-pusher-')}:`;
    const args = ['--pusher-app', APP, '--broker', broker];
    nodeA = await startRealtimeServer({ extraArgs: args });
    nodeB = await startRealtimeServer({ extraArgs: args });
  });

  after(async () => {
    await nodeA?.kill('SIGTERM');
    await nodeB?.kill('SIGTERM');
  });

  test('a cache channel keeps its last event for a subscriber on the other node', async () => {
    const name = unique('cache-prices-');
    await trigger(nodeA.port, name, 'price', { p: 1 });
    await trigger(nodeA.port, name, 'price', { p: 2 });
    const pusher = await connected(makePusher(nodeB.port));
    const [data] = await once(pusher.subscribe(name), 'price');
    assert.deepEqual(data, { p: 2 });
    await once(pusher.subscribe(unique('cache-empty-')), 'pusher:cache_miss');
  });

  test('a subscriber on node B gets what the SDK triggers on node A; presence spans both', async () => {
    const name = unique('orders-');
    const onB = await connected(makePusher(nodeB.port));
    const { channel } = await subscribed(onB, name);
    const got = [];
    channel.bind('created', (data) => got.push(data));
    // node B's broker subscription may still be on its way: trigger until it arrives
    await until(async () => {
      await trigger(nodeA.port, name, 'created', { n: 1 });
      return got.length > 0;
    }, { timeout: 15000, interval: 300, what: 'the event across nodes' });
    assert.deepEqual(got[0], { n: 1 });

    const room = unique('presence-room-');
    const bob = await connected(makePusher(nodeB.port, { user: 'bob' }));
    const { channel: b } = await subscribed(bob, room);
    const annJoined = once(b, 'pusher:member_added', { timeout: 15000 });
    const ann = await connected(makePusher(nodeA.port, { user: 'ann' }));
    await subscribed(ann, room);
    assert.equal((await annJoined)[0].id, 'ann');
    let users;
    await until(async () => {
      users = await sdk(nodeA.port, `print(json.dumps(client.users_info('${room}')))`);
      return users.users.length === 2; // node B's news of bob may still be on its way
    }, { timeout: 15000, interval: 100, what: 'node A to know both members' });
    assert.deepEqual(users.users.map((u) => u.id).sort(), ['ann', 'bob']);
    const annLeft = once(b, 'pusher:member_removed', { timeout: 15000 });
    ann.disconnect();
    assert.equal((await annLeft)[0].id, 'ann');

    // a user signed in on node B, terminated through node A
    const user = unique('user');
    const carol = await connected(makePusher(nodeB.port, { user }));
    const signedIn = once(carol.connection, 'message', { filter: (m) => m.event === 'pusher:signin_success' });
    carol.signin();
    await signedIn;
    const closed = once(carol.connection, 'state_change', {
      timeout: 15000,
      filter: (c) => c.current === 'disconnected',
    });
    await nodeSdk(nodeA.port).terminateUserConnections(user);
    await closed;
  });
  test('the Node SDK asks node A for subscription counts that include node B', async () => {
    const name = unique('orders-');
    const secret = unique('private-orders-');
    const onA = await connected(makePusher(nodeA.port));
    const onB = [await connected(makePusher(nodeB.port)), await connected(makePusher(nodeB.port))];
    for (const pusher of [onA, ...onB]) assert.equal((await subscribed(pusher, name)).outcome[0], 'ok');
    assert.equal((await subscribed(onB[0], secret)).outcome[0], 'ok');
    const backend = nodeSdk(nodeA.port);
    const ask = async (path, info) => (await backend.get({ path, params: { info } })).json();
    const counts = async () => ({
      one: await ask(`/channels/${name}`, 'subscription_count'),
      all: (await ask('/channels', 'subscription_count')).channels,
    });
    const expect = async (one, all) => {
      let last;
      await until(async () => {
        last = await counts();
        const mine = Object.fromEntries(Object.entries(last.all).filter(([c]) => c === name || c === secret));
        return JSON.stringify(last.one) === JSON.stringify(one) && JSON.stringify(mine) === JSON.stringify(all);
      }, { timeout: 15000, interval: 200, what: 'node A to count node B\'s subscribers' }).catch((error) => {
        throw new Error(`${error.message}: ${JSON.stringify(last)}`);
      });
    };
    await expect({ occupied: true, subscription_count: 3 },
      { [name]: { subscription_count: 3 }, [secret]: { subscription_count: 1 } });
    onB[0].disconnect();
    await expect({ occupied: true, subscription_count: 2 }, { [name]: { subscription_count: 2 } });
  });
});
