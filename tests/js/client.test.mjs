// clients/js/realtime.js against the real server, every feature on every transport.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import WebSocket from 'ws';

import { RealtimeClient, SseParser } from '../../clients/js/realtime.js';
import {
  CLIENT_PATH,
  TcpProxy,
  freePort,
  signJwt,
  startFastApiExample,
  startRealtimeServer,
  until,
  waitEvent,
  waitState,
  withTimeout,
} from './helpers.mjs';

const TRANSPORTS = ['websocket', 'sse', 'polling'];

// Fast timings so failures and reconnects happen within a test's patience.
const FAST = {
  WebSocket,
  reconnectDelay: 50,
  maxReconnectDelay: 250,
  connectTimeout: 4000,
  pollRetryDelay: 100,
  sendRetryDelay: 100,
};

const clients = new Set();

function makeClient(url, transport, options = {}) {
  const transports = options.transports ?? (transport ? [transport] : undefined);
  const c = new RealtimeClient(url, { ...FAST, ...options, ...(transports ? { transports } : {}) });
  clients.add(c);
  return c;
}

function closeAll() {
  for (const c of clients) c.disconnect();
  clients.clear();
}

function userToken(server, sub, extra = {}) {
  return signJwt(server.jwtSecret, {
    sub,
    info: { name: sub[0].toUpperCase() + sub.slice(1) },
    channels: ['private-*', 'presence-*'],
    exp: Math.floor(Date.now() / 1000) + 3600,
    ...extra,
  });
}

async function connected(client, timeout = 8000) {
  await waitState(client, 'connected', timeout);
  return client;
}

async function subscribed(client, name, timeout = 5000) {
  const ch = client.subscribe(name);
  if (ch.state !== 'subscribed') await waitEvent(ch, 'subscription.succeeded', { timeout });
  return ch;
}

let uniq = 0;
const unique = (prefix) => `${prefix}${Date.now().toString(36)}${++uniq}`;

describe('SSE parser', () => {
  test('fields, comments, CRLF and chunks split anywhere', () => {
    const got = [];
    const p = new SseParser((d) => got.push(d));
    const text = 'retry: 3000\r\n\r\n: heartbeat\n\nid: m-1\ndata: {"a":1}\n\nid: m-2\r\ndata: line1\r\ndata:line2\r\r\n: trailing';
    for (const ch of text) p.push(ch);
    assert.deepEqual(got, ['{"a":1}', 'line1\nline2']);
  });
});

describe('client against the real server', () => {
  let server;

  before(async () => {
    server = await startRealtimeServer();
  });

  after(async () => {
    closeAll();
    await server?.kill('SIGTERM');
  });

  for (const transport of TRANSPORTS) {
    describe(transport, () => {
      after(closeAll);

      test('connects: state events, connectionId, userId, transport', async () => {
        const states = [];
        const c = makeClient(server.wsUrl, transport, { auth: { token: userToken(server, 'alice') } });
        assert.equal(c.state, 'connecting');
        c.on('state', (s) => states.push(s));
        await connected(c);
        assert.deepEqual(states, ['connecting', 'connected']);
        assert.equal(typeof c.connectionId, 'string');
        assert.ok(c.connectionId.length > 0);
        assert.equal(c.userId, 'alice');
        assert.equal(c.transport, transport);
        assert.equal(typeof c.heartbeat, 'number');
        c.disconnect();
        assert.equal(c.state, 'disconnected');
        assert.equal(c.connectionId, null);
        assert.deepEqual(states, ['connecting', 'connected', 'disconnected']);
      });

      test('anonymous connection (no token), http:// URL', async () => {
        const c = makeClient(server.httpUrl, transport);
        await connected(c);
        assert.equal(c.userId, null);
        c.disconnect();
      });

      test('subscribes and receives events published through the HTTP API', async () => {
        const c = makeClient(server.wsUrl, transport);
        await connected(c);
        const name = unique('news.');
        const ch = await subscribed(c, name);
        assert.equal(ch.state, 'subscribed');
        const all = [];
        ch.on('*', (event, data) => all.push([event, data]));
        const got = waitEvent(ch, 'article.published');
        await server.publish(name, 'article.published', { title: 'Hello', n: 1 });
        const [data, message] = await got;
        assert.deepEqual(data, { title: 'Hello', n: 1 });
        assert.equal(message.channel, name);
        assert.equal(message.event, 'article.published');
        assert.equal(typeof message.id, 'string');
        assert.equal(typeof message.timestamp, 'number');
        assert.deepEqual(all, [['article.published', { title: 'Hello', n: 1 }]]);
        // off() removes a listener
        const seen = [];
        const fn = (d) => seen.push(d);
        ch.on('x', fn);
        ch.off('x', fn);
        const marker = waitEvent(ch, 'marker');
        await server.publish(name, 'x', 1);
        await server.publish(name, 'marker', 2);
        await marker;
        assert.deepEqual(seen, []);
      });

      test('client events reach the other subscribers, not the sender', async () => {
        const a = makeClient(server.wsUrl, transport, { auth: { token: userToken(server, 'alice') } });
        const b = makeClient(server.wsUrl, transport, { auth: { token: userToken(server, 'bob') } });
        await Promise.all([connected(a), connected(b)]);
        const name = unique('private-chat.');
        const [ca, cb] = await Promise.all([subscribed(a, name), subscribed(b, name)]);
        const echoed = [];
        ca.on('message.sent', (d) => echoed.push(d));
        const got = waitEvent(cb, 'message.sent');
        ca.send('message.sent', { text: 'Hello!' });
        const [data, message] = await got;
        assert.deepEqual(data, { text: 'Hello!' });
        assert.equal(message.user_id, 'alice');
        assert.equal(message.channel, name);
        // Anything the server had queued for alice before this marker arrives first.
        const marker = waitEvent(ca, 'marker');
        await server.publish(name, 'marker', {});
        await marker;
        assert.deepEqual(echoed, []);
      });

      test('presence: sync, user.joined, user.left, members kept current', async () => {
        const a = makeClient(server.wsUrl, transport, { auth: { token: userToken(server, 'alice') } });
        const b = makeClient(server.wsUrl, transport, { auth: { token: userToken(server, 'bob') } });
        await Promise.all([connected(a), connected(b)]);
        const name = unique('presence-room.');
        const ra = a.subscribe(name);
        const [syncA] = await waitEvent(ra, 'presence.sync');
        assert.deepEqual(
          syncA.map((m) => m.user_id),
          ['alice'],
        );
        assert.deepEqual(ra.members, [{ user_id: 'alice', info: { name: 'Alice' } }]);
        assert.deepEqual(ra.me, { user_id: 'alice', info: { name: 'Alice' } });

        const joined = waitEvent(ra, 'user.joined');
        const rb = b.subscribe(name);
        const [syncB] = await waitEvent(rb, 'presence.sync');
        assert.deepEqual(syncB.map((m) => m.user_id).sort(), ['alice', 'bob']);
        const [member] = await joined;
        assert.deepEqual(member, { user_id: 'bob', info: { name: 'Bob' } });
        assert.deepEqual(ra.members.map((m) => m.user_id).sort(), ['alice', 'bob']);
        assert.deepEqual(rb.members.map((m) => m.user_id).sort(), ['alice', 'bob']);

        const left = waitEvent(ra, 'user.left', { timeout: 8000 });
        b.disconnect();
        const [gone] = await left;
        assert.equal(gone.user_id, 'bob');
        assert.deepEqual(
          ra.members.map((m) => m.user_id),
          ['alice'],
        );
      });

      test('subscription.error 4001 for an anonymous connection on a private channel', async () => {
        const c = makeClient(server.wsUrl, transport);
        await connected(c);
        const ch = c.subscribe(unique('private-secret.'));
        const [err, message] = await waitEvent(ch, 'subscription.error');
        assert.equal(err.code, 4001);
        assert.equal(typeof err.message, 'string');
        assert.equal(message.type, 'error');
        assert.equal(ch.state, 'failed');
        assert.equal(c.state, 'connected');
      });

      test('subscription.error 4003 for a channel the token does not allow', async () => {
        const token = userToken(server, 'carol', { channels: ['private-allowed.*'] });
        const c = makeClient(server.wsUrl, transport, { auth: { token } });
        await connected(c);
        const ok = await subscribed(c, unique('private-allowed.'));
        assert.equal(ok.state, 'subscribed');
        const ch = c.subscribe(unique('private-other.'));
        const [err] = await waitEvent(ch, 'subscription.error');
        assert.equal(err.code, 4003);
        assert.equal(ch.state, 'failed');
      });

      test('unsubscribe: unsubscription.succeeded, no more events', async () => {
        const c = makeClient(server.wsUrl, transport);
        await connected(c);
        const name = unique('news.');
        const keep = unique('keep.');
        const ch = await subscribed(c, name);
        const kept = await subscribed(c, keep);
        const after = [];
        ch.on('*', (e) => after.push(e));
        const done = waitEvent(ch, 'unsubscription.succeeded');
        c.unsubscribe(name);
        assert.equal(ch.state, 'unsubscribed');
        assert.equal(c.channel(name), null);
        await done;
        const info = await server.api('GET', `/api/channels/${encodeURIComponent(name)}`).catch(() => null);
        if (info) assert.equal(info.subscribers, 0);
        await server.publish(name, 'late', {});
        const marker = waitEvent(kept, 'marker');
        await server.publish(keep, 'marker', {});
        await marker;
        assert.deepEqual(after, ['unsubscription.succeeded']);
      });

      test('sends while reconnecting are queued and flushed after resubscription', async () => {
        const proxy = await new TcpProxy(server.port).listen();
        try {
          const a = makeClient(proxy.wsUrl, transport, { auth: { token: userToken(server, 'alice') } });
          const b = makeClient(server.wsUrl, transport, { auth: { token: userToken(server, 'bob') } });
          await Promise.all([connected(a), connected(b)]);
          const name = unique('private-q.');
          const [ca, cb] = await Promise.all([subscribed(a, name), subscribed(b, name)]);
          const received = [];
          cb.on('note', (d, m) => received.push([d.n, m.user_id]));

          proxy.down = true;
          const reconnecting = waitState(a, 'reconnecting');
          proxy.cut();
          await reconnecting;
          assert.equal(ca.send('note', { n: 1 }), false);
          ca.send('note', { n: 2 });
          ca.send('note', { n: 3 });
          assert.equal(a.queueSize, 3);

          const resubscribed = waitEvent(ca, 'subscription.succeeded', { timeout: 10000 });
          proxy.down = false;
          await resubscribed;
          await until(() => received.length >= 3, { what: 'the queued notes' });
          assert.deepEqual(received, [
            [1, 'alice'],
            [2, 'alice'],
            [3, 'alice'],
          ]);
          assert.equal(a.queueSize, 0);
        } finally {
          await proxy.close();
        }
      });

      test('falls back past refused endpoints and remembers the one that worked', async () => {
        if (transport === 'websocket') return; // nothing to fall back to
        const proxy = await new TcpProxy(server.port).listen();
        try {
          proxy.refusePaths = transport === 'sse' ? ['/ws'] : ['/ws', '/sse'];
          const c = makeClient(proxy.wsUrl, null, {
            transports: ['websocket', 'sse', 'polling'],
            auth: { token: userToken(server, 'dave') },
          });
          await connected(c);
          assert.equal(c.transport, transport);
          assert.ok(proxy.refused.includes('/ws'));
          const ch = await subscribed(c, unique('news.'));
          const got = waitEvent(ch, 'hello');
          await server.publish(ch.name, 'hello', { via: transport });
          assert.deepEqual((await got)[0], { via: transport });

          // The next connection starts with the remembered transport. (A cut
          // connection would not do: a long-poll just retries its cursor.)
          const before = proxy.refused.length;
          const back = waitEvent(ch, 'subscription.succeeded', { timeout: 10000 });
          c.disconnect();
          c.connect();
          await back;
          assert.equal(c.transport, transport);
          assert.equal(proxy.refused.length, before);
        } finally {
          await proxy.close();
        }
      });

      test('bad token: failed after maxAuthFailures, token function called each attempt', async () => {
        let calls = 0;
        const c = makeClient(server.wsUrl, transport, {
          maxAuthFailures: 2,
          auth: {
            token: async () => {
              calls++;
              return signJwt('not-the-secret', { sub: 'mallory' });
            },
          },
        });
        const states = [];
        c.on('state', (s) => states.push(s));
        await waitState(c, 'failed', 8000);
        assert.equal(calls, 2);
        assert.deepEqual(states, ['connecting', 'reconnecting', 'failed']);
      });

      test('disconnected by the backend (4010): failed with the reason, no reconnect', async () => {
        const user = unique('banned');
        let tokens = 0;
        const c = makeClient(server.wsUrl, transport, {
          auth: { token: () => (tokens++, userToken(server, user)) },
        });
        const bystander = makeClient(server.wsUrl, transport, { auth: { token: userToken(server, 'alice') } });
        await Promise.all([connected(c), connected(bystander)]);
        const states = [];
        c.on('state', (s, _previous, info) => states.push([s, info && info.code, info && info.reason]));
        const answer = await server.api('POST', `/api/users/${user}/disconnect`, { reason: 'banned' });
        assert.deepEqual(answer, { local: 1 });
        await waitState(c, 'failed', 8000);
        assert.deepEqual(states, [['failed', 4010, 'banned']]);
        assert.equal(tokens, 1); // no second attempt was started
        assert.equal(bystander.state, 'connected');
      });

      test('subscription.revoked: the channel fails and is not resubscribed', async () => {
        const user = unique('revoked');
        const c = makeClient(server.wsUrl, transport, { auth: { token: userToken(server, user) } });
        await connected(c);
        const name = unique('private-doc.');
        const ch = await subscribed(c, name);
        const revoked = waitEvent(ch, 'subscription.revoked');
        await server.api('POST', `/api/users/${user}/unsubscribe`, { channel: name, reason: 'access removed' });
        const [data] = await revoked;
        assert.deepEqual(data, { reason: 'access removed' });
        assert.equal(ch.state, 'failed');
        assert.deepEqual(ch.error, { code: 4003, message: 'access removed' });
        const info = await server.api('GET', `/api/channels/${encodeURIComponent(name)}`);
        assert.equal(info.subscribers, 0);
      });
    });
  }

  test('failed after maxReconnectAttempts when nothing listens', async () => {
    const port = await freePort();
    const c = makeClient(`ws://127.0.0.1:${port}`, null, { maxReconnectAttempts: 2 });
    const states = [];
    c.on('state', (s) => states.push(s));
    await waitState(c, 'failed', 8000);
    assert.deepEqual(states, ['connecting', 'reconnecting', 'failed']);
    // connect() starts over
    const again = waitState(c, 'reconnecting');
    c.connect();
    await again;
    c.disconnect();
  });

  test('queue overflow drops the oldest queued events', async () => {
    const a = makeClient(server.wsUrl, 'websocket', { maxQueueSize: 3, auth: { token: userToken(server, 'alice') } });
    const b = makeClient(server.wsUrl, 'websocket', { auth: { token: userToken(server, 'bob') } });
    await Promise.all([connected(a), connected(b)]);
    const name = unique('private-overflow.');
    const [ca, cb] = await Promise.all([subscribed(a, name), subscribed(b, name)]);
    const received = [];
    cb.on('n', (d) => received.push(d));
    a.disconnect();
    const dropped = [];
    a.on('queue.dropped', (msgs) => dropped.push(...msgs.map((m) => m.data)));
    for (let i = 1; i <= 5; i++) ca.send('n', i);
    assert.equal(a.queueSize, 3);
    assert.deepEqual(dropped, [1, 2]);
    a.connect();
    await until(() => received.length >= 3, { what: 'the queued events' });
    assert.deepEqual(received, [3, 4, 5]);
  });

  test('polling: a lost poll answer is fetched again with the same cursor', async () => {
    let dropped = 0;
    const cursors = [];
    const lossyFetch = async (url, init) => {
      const res = await fetch(url, init);
      const u = new URL(String(url));
      if (u.pathname !== '/poll' || !u.searchParams.get('connection_id')) return res;
      cursors.push(u.searchParams.get('cursor'));
      const body = await res.clone().json();
      const hasEvent = body.messages.some((m) => m.event === 'lossy');
      if (hasEvent && dropped === 0) {
        dropped++;
        throw new TypeError('simulated network failure after the server answered');
      }
      return res;
    };
    const c = makeClient(server.wsUrl, 'polling', { fetch: lossyFetch });
    await connected(c);
    const ch = await subscribed(c, unique('lossy.'));
    const got = [];
    ch.on('lossy', (d) => got.push(d));
    await server.publish(ch.name, 'lossy', { n: 1 });
    await until(() => got.length >= 1, { what: 'the event after the lost answer' });
    const marker = waitEvent(ch, 'marker');
    await server.publish(ch.name, 'marker', {});
    await marker;
    assert.equal(dropped, 1);
    assert.deepEqual(got, [{ n: 1 }]);
    // The retry asked again from the same position.
    const i = cursors.length - 1;
    assert.ok(cursors.some((cur, k) => k > 0 && cur === cursors[k - 1]), `cursors ${cursors.slice(0, i + 1)}`);
  });
});

describe('a server mounted under a path prefix (examples/fastapi_app)', () => {
  let server;

  before(async () => {
    server = await startFastApiExample();
  });

  after(async () => {
    closeAll();
    await server?.kill('SIGTERM');
  });

  for (const transport of TRANSPORTS) {
    test(`${transport}: the URL's path is kept for every request`, async () => {
      const c = makeClient(server.httpUrl, transport); // http://127.0.0.1:PORT/rt
      await connected(c);
      const news = await subscribed(c, 'news'); // SSE and polling subscribe with POST /rt/send
      const got = waitEvent(news, 'notice');
      const res = await fetch(`${server.origin}/notify-sync?text=${transport}`, { method: 'POST' });
      assert.equal(res.status, 200);
      const { id } = await res.json();
      const [data, message] = await got;
      assert.deepEqual(data, { text: transport, route: 'sync' });
      assert.equal(message.id, id);
    });
  }
});

describe('expiring tokens (a few seconds of life) refreshed by the token function', () => {
  let server;

  before(async () => {
    // asked 2 s before exp; tokens live 3-4 s: a refresh every 1-2 s
    server = await startRealtimeServer({ extraArgs: ['--refresh-lead', '2'] });
  });

  after(async () => {
    closeAll();
    await server?.kill('SIGTERM');
  });

  const shortToken = (sub) => userToken(server, sub, { exp: Math.floor(Date.now() / 1000) + 4 });

  for (const transport of TRANSPORTS) {
    test(`${transport}: several refreshes, the same connection, no gap in delivery`, async () => {
      let calls = 0;
      const c = makeClient(server.wsUrl, transport, { getToken: () => (calls++, shortToken('ann')) });
      await connected(c);
      const states = [];
      c.on('state', (s) => states.push(s));
      let refreshed = 0;
      c.on('connection.refreshed', () => refreshed++);
      const id = c.connectionId;
      const name = unique('news.');
      const ch = await subscribed(c, name);
      const got = [];
      ch.on('n', (data) => got.push(data));
      let sent = 0;
      while (refreshed < 3) {
        await server.publish(name, 'n', sent++);
        await delay(200);
        assert.ok(sent < 100, 'no third refresh within 20 s');
      }
      await until(() => got.length === sent, { what: 'every message' });
      assert.deepEqual(got, [...Array(sent).keys()]);
      assert.deepEqual(states, []); // never left 'connected'
      assert.equal(c.connectionId, id);
      assert.equal(calls, 1 + refreshed);
    });
  }

  test('a token function that fails: closed with 4001 at expiry, then failed, no loop', async () => {
    let calls = 0;
    const c = makeClient(server.wsUrl, 'websocket', {
      maxAuthFailures: 2,
      getToken: () => {
        if (calls++ === 0) return shortToken('bob');
        throw new Error('backend down');
      },
    });
    await connected(c);
    const states = [];
    c.on('state', (s, _previous, info) => states.push([s, info && info.code]));
    await waitState(c, 'failed', 10000);
    assert.deepEqual(states.map(([s]) => s), ['reconnecting', 'failed']);
    assert.equal(states[0][1], 4001); // closed at expiry: the token expired
    assert.equal(calls, 3); // the first token, the refresh, one reconnect: then no more
  });
});

describe('heartbeats and dead connections', () => {
  let server;

  before(async () => {
    // The server pings a silent WebSocket client after 0.5 s, holds polls 1 s.
    server = await startRealtimeServer({ extraArgs: ['--heartbeat-interval', '0.5', '--idle-timeout', '2', '--poll-timeout', '1'] });
  });

  after(async () => {
    closeAll();
    await server?.kill('SIGTERM');
  });

  test('websocket: answers the server ping with pong and outlives the idle timeout', async () => {
    const c = makeClient(server.wsUrl, 'websocket', { clientPing: false });
    await connected(c);
    assert.equal(c.heartbeat, 0.5);
    const first = c.connectionId;
    const closes = [];
    c.on('disconnected', (info) => closes.push(info));
    let pings = 0;
    c.on('message', (m) => {
      if (m.type === 'ping') pings++;
    });
    // 5 pings ≈ 2.5 s: past the 2 s idle timeout, so the pongs kept it open.
    await until(() => pings >= 5, { timeout: 10000, what: '5 server pings' });
    assert.deepEqual(closes, []);
    assert.equal(c.connectionId, first);
    assert.equal(c.state, 'connected');
  });

  for (const transport of TRANSPORTS) {
    test(`${transport}: a stalled connection is detected and replaced`, async () => {
      const proxy = await new TcpProxy(server.port).listen();
      try {
        const c = makeClient(proxy.wsUrl, transport, {
          heartbeatGrace: 300, // dead after 2 × 0.5 s + 0.3 s of silence
          pollRequestTimeout: 1500,
          pollRetries: 1,
          pollRetryDelay: 100,
          connectTimeout: 2000,
        });
        await connected(c);
        const ch = await subscribed(c, unique('alive.'));
        const first = c.connectionId;

        // Healthy but quiet: it stays up well past the 1.3 s dead timeout. (Asserting
        // that nothing happens needs a bounded wait; there is no event to await.)
        const quietStates = [];
        c.on('state', (st) => quietStates.push(st));
        await delay(2500);
        const tick = waitEvent(ch, 'tick');
        await server.publish(ch.name, 'tick', {});
        await tick;
        assert.deepEqual(quietStates, []);
        assert.equal(c.connectionId, first);

        proxy.stalled = true;
        const [, , info] = await waitEvent(c, 'state', { timeout: 10000, filter: (st) => st === 'reconnecting' });
        if (transport !== 'polling') assert.match(info.reason, /heartbeat/);
        const back = waitEvent(ch, 'subscription.succeeded', { timeout: 15000 });
        proxy.stalled = false;
        proxy.cut();
        await back;
        assert.notEqual(c.connectionId, first);
        const got = waitEvent(ch, 'after');
        await server.publish(ch.name, 'after', { ok: 1 });
        assert.deepEqual((await got)[0], { ok: 1 });
      } finally {
        await proxy.close();
      }
    });
  }
});

describe('history and recovery', () => {
  let server;

  before(async () => {
    server = await startRealtimeServer({ extraArgs: ['--history', 'hist.*=100:300'] });
  });

  after(async () => {
    closeAll();
    await server?.kill('SIGTERM');
  });

  for (const transport of TRANSPORTS) {
    test(`${transport}: resubscribing recovers what was published while disconnected`, async () => {
      const proxy = await new TcpProxy(server.port).listen();
      try {
        const c = makeClient(proxy.wsUrl, transport, { pollRetries: 1, pollRetryDelay: 50 });
        await connected(c);
        const name = unique('hist.');
        const ch = await subscribed(c, name);
        assert.equal(typeof ch.epoch, 'string');
        const got = [];
        ch.on('n', (d, m) => got.push([d, typeof m.offset]));
        const first = waitEvent(ch, 'n');
        await server.publish(name, 'n', 1);
        await first;
        const offset = ch.offset;

        proxy.down = true;
        const reconnecting = waitState(c, 'reconnecting', 10000);
        proxy.cut();
        await reconnecting;
        await server.publish(name, 'n', 2);
        await server.publish(name, 'n', 3);

        const resubscribed = waitEvent(ch, 'subscription.succeeded', { timeout: 15000 });
        proxy.down = false;
        const [data] = await resubscribed;
        assert.equal(data.recovered, true);
        assert.equal(ch.recovered, true);
        await until(() => got.length >= 3, { what: 'the missed messages' });
        const marker = waitEvent(ch, 'marker');
        await server.publish(name, 'marker', {});
        await marker;
        assert.deepEqual(got, [
          [1, 'number'],
          [2, 'number'],
          [3, 'number'],
        ]);
        assert.equal(ch.offset, offset + 3);
      } finally {
        await proxy.close();
      }
    });
  }

  test('a recovery cut short right after subscription.succeeded is asked for again', async () => {
    const c = makeClient(server.wsUrl, 'websocket');
    await connected(c);
    const ch = await subscribed(c, unique('hist.'));
    const got = [];
    ch.on('n', (d) => got.push(d));
    const first = waitEvent(ch, 'n');
    await server.publish(ch.name, 'n', 1);
    await first;
    c.disconnect();
    await server.publish(ch.name, 'n', 2);
    await server.publish(ch.name, 'n', 3);
    // The connection ends between the recovery's answer and the replay that follows it.
    ch.once('subscription.succeeded', () => c.disconnect());
    const cut = waitEvent(ch, 'subscription.succeeded');
    c.connect();
    assert.equal((await cut)[0].recovered, true);
    assert.deepEqual(got, [1]);
    const again = waitEvent(ch, 'subscription.succeeded');
    c.connect();
    assert.equal((await again)[0].recovered, true);
    await until(() => got.length >= 3, { what: 'the replay' });
    const marker = waitEvent(ch, 'marker');
    await server.publish(ch.name, 'marker', {});
    await marker;
    assert.deepEqual(got, [1, 2, 3]);
  });

  test('subscribe(name, {history}) delivers the last messages', async () => {
    const name = unique('hist.');
    for (let i = 1; i <= 4; i++) await server.publish(name, 'n', i);
    const c = makeClient(server.wsUrl, 'websocket');
    const ch = c.subscribe(name, { history: 2 });
    const got = [];
    ch.on('n', (d) => got.push(d));
    await waitEvent(ch, 'subscription.succeeded');
    await until(() => got.length >= 2, { what: 'two history messages' });
    const marker = waitEvent(ch, 'marker');
    await server.publish(name, 'marker', {});
    await marker;
    assert.deepEqual(got, [3, 4]);
  });
});

// The server reports lost messages with `messages.lost` (docs/protocol.md). These tests
// check the CLIENT'S REACTION: the event is injected through the HTTP API (published on
// the channel, or sent to the connection), and the gap it reports is a real one — the
// messages were published with `exclude_connection_id`, so they are in the channel's
// history but never reached the client.
describe("client reaction to messages.lost (event injected through the HTTP API)", () => {
  let server;

  before(async () => {
    server = await startRealtimeServer({ extraArgs: ['--history', 'hist.*=100:300,tiny.*=3:300'] });
  });

  after(async () => {
    closeAll();
    await server?.kill('SIGTERM');
  });

  // Options that record every message the client sends, on every transport.
  function recording() {
    const sent = [];
    class RecordingWebSocket extends WebSocket {
      send(data) {
        sent.push(JSON.parse(data));
        super.send(data);
      }
    }
    const recordingFetch = (url, init) => {
      if (init?.method === 'POST' && new URL(String(url)).pathname === '/send') {
        const body = JSON.parse(init.body);
        sent.push(...(Array.isArray(body) ? body : [body]));
      }
      return fetch(url, init);
    };
    return { sent, options: { WebSocket: RecordingWebSocket, fetch: recordingFetch } };
  }

  function publishExcluding(client, channel, data) {
    return server.api('POST', '/api/publish', { channel, event: 'n', data, exclude_connection_id: client.connectionId });
  }

  // Publish `n` 1, 2, 3… (those in `skip` are kept from the client); wait for the rest.
  async function stream(client, ch, numbers, skip) {
    const got = [];
    const offsets = new Map();
    ch.on('n', (d, m) => {
      got.push(d);
      offsets.set(d, m.offset);
    });
    for (const n of numbers) {
      if (skip.includes(n)) await publishExcluding(client, ch.name, n);
      else await server.publish(ch.name, 'n', n);
    }
    const expected = numbers.filter((n) => !skip.includes(n));
    await until(() => got.length >= expected.length, { what: `messages ${expected}` });
    assert.deepEqual(got, expected);
    return { got, offsets };
  }

  for (const transport of TRANSPORTS) {
    test(`${transport}: client reaction: resubscribes from before the gap, delivers the lost messages once`, async () => {
      const rec = recording();
      const c = makeClient(server.wsUrl, transport, rec.options);
      await connected(c);
      const ch = await subscribed(c, unique('hist.'));
      const events = [];
      ch.on('*', (e) => events.push(e));
      const onChannel = [];
      ch.on('messages.lost', (d) => onChannel.push([d, ch.recovering]));
      const onClient = [];
      c.on('messages.lost', (name, d) => onClient.push([name, d]));
      const { got, offsets } = await stream(c, ch, [1, 2, 3, 4, 5, 6], [3, 4]);
      const from = offsets.get(2) + 1;
      assert.equal(offsets.get(5), from + 2);

      const lost = { count: 2, epoch: ch.epoch, from, to: from + 1 };
      const recovered = waitEvent(ch, 'subscription.succeeded', { timeout: 10000 });
      await server.publish(ch.name, 'messages.lost', lost);
      const [data] = await recovered;
      assert.equal(data.recovered, true);
      assert.equal(ch.recovered, true);
      assert.equal(ch.recovering, false);
      assert.equal(ch.state, 'subscribed');
      const seven = waitEvent(ch, 'n', { filter: (d) => d === 7 });
      await server.publish(ch.name, 'n', 7);
      await seven;
      // 3 and 4 arrive once, after the gap was reported; 5, 6 and the report itself
      // (it is in the history too) are not delivered again.
      assert.deepEqual(got, [1, 2, 5, 6, 3, 4, 7]);
      assert.deepEqual(onChannel, [[lost, true]]);
      assert.deepEqual(onClient, [[ch.name, lost]]);
      assert.equal(events.filter((e) => e === 'messages.lost').length, 1);
      assert.ok(!events.includes('unsubscription.succeeded'), `events ${events}`);
      assert.equal(ch.offset, offsets.get(7));
      const mine = rec.sent.filter((m) => m.channel === ch.name);
      assert.deepEqual(mine, [ // asked again while joined: no leave, no join
        { type: 'subscribe', channel: ch.name },
        { type: 'subscribe', channel: ch.name, data: { recover: { epoch: ch.epoch, offset: from - 1 } } },
      ]);
    });
  }

  test('client reaction: messages.lost with no channel reaches the client listener as (null, data)', async () => {
    const c = makeClient(server.wsUrl, 'websocket');
    await connected(c);
    const all = [];
    c.on('*', (event, data) => all.push([event, data]));
    const got = waitEvent(c, 'messages.lost');
    await server.api('POST', `/api/connections/${c.connectionId}/send`, { event: 'messages.lost', data: { count: 3 } });
    const [channel, data, message] = await got;
    assert.equal(channel, null);
    assert.deepEqual(data, { count: 3 });
    assert.equal(message.event, 'messages.lost');
    assert.deepEqual(all, [['messages.lost', { count: 3 }]]);
  });

  test('client reaction: reported but not recovered with autoRecover off, another epoch, no range or no history', async () => {
    const off = recording();
    const a = makeClient(server.wsUrl, 'websocket', { ...off.options, autoRecover: false });
    const on = recording();
    const b = makeClient(server.wsUrl, 'websocket', on.options);
    await Promise.all([connected(a), connected(b)]);
    const name = unique('hist.');
    const [ca, cb] = await Promise.all([subscribed(a, name), subscribed(b, name)]);
    const plain = await subscribed(b, unique('plain.')); // no history: no epoch
    const reports = [];
    for (const [who, ch] of [['a', ca], ['b', cb], ['plain', plain]]) {
      ch.on('messages.lost', (d) => reports.push([who, d, ch.recovering]));
    }
    const one = Promise.all([waitEvent(ca, 'n'), waitEvent(cb, 'n')]);
    await server.publish(name, 'n', 1);
    await one;
    const from = ca.offset;
    const sameEpoch = { count: 1, epoch: ca.epoch, from, to: from };
    const otherEpoch = { count: 1, epoch: `not-${ca.epoch}`, from, to: from };
    const noRange = { count: null };
    const lose = (data, exclude) =>
      server.api('POST', '/api/publish', { channel: name, event: 'messages.lost', data, exclude_connection_id: exclude.connectionId });
    await lose(sameEpoch, b); // to a, whose autoRecover is off
    await lose(otherEpoch, a);
    await lose(noRange, a);
    await server.publish(plain.name, 'messages.lost', sameEpoch);
    const markers = Promise.all([waitEvent(ca, 'marker'), waitEvent(cb, 'marker'), waitEvent(plain, 'marker')]);
    await Promise.all([server.publish(name, 'marker', {}), server.publish(plain.name, 'marker', {})]);
    await markers;
    assert.deepEqual(reports, [
      ['a', sameEpoch, false],
      ['b', otherEpoch, false],
      ['b', noRange, false],
      ['plain', sameEpoch, false],
    ]);
    for (const rec of [off, on]) assert.deepEqual(rec.sent.filter((m) => m.type === 'unsubscribe'), []);
    assert.deepEqual([ca.state, cb.state, plain.state], ['subscribed', 'subscribed', 'subscribed']);
  });

  test('client reaction: a gap the history no longer holds: recovered false, what is left replayed once', async () => {
    const c = makeClient(server.wsUrl, 'websocket');
    await connected(c);
    const ch = await subscribed(c, unique('tiny.'));
    const { got, offsets } = await stream(c, ch, [1, 2, 3, 4, 5, 6, 7], [2, 3, 4, 5, 6]);
    const from = offsets.get(1) + 1;
    const answer = waitEvent(ch, 'subscription.succeeded', { timeout: 10000 });
    await server.publish(ch.name, 'messages.lost', { count: 5, epoch: ch.epoch, from, to: from + 4 });
    const [data] = await answer;
    assert.equal(data.recovered, false);
    assert.equal(ch.recovered, false);
    assert.equal(ch.recovering, false);
    const eight = waitEvent(ch, 'n', { filter: (d) => d === 8 });
    await server.publish(ch.name, 'n', 8);
    await eight;
    // the stream keeps 3 (6, 7 and the notice): 6 is what is left of the gap
    assert.deepEqual(got, [1, 7, 6, 8]);
  });
});

describe('server restart', () => {
  for (const [transport, signal] of TRANSPORTS.flatMap((t) => [
    [t, 'SIGKILL'],
    [t, 'SIGTERM'],
  ])) {
    test(`${transport}: reconnects and resubscribes after the server is stopped (${signal}) and restarted; fresh token`, async () => {
      const server = await startRealtimeServer();
      try {
        let calls = 0;
        const c = makeClient(server.wsUrl, transport, {
          auth: {
            token: () => {
              calls++;
              return userToken(server, 'erin');
            },
          },
        });
        await connected(c);
        assert.equal(calls, 1);
        const first = c.connectionId;
        const news = await subscribed(c, 'news');
        const room = c.subscribe('presence-room.restart');
        await waitEvent(room, 'presence.sync');

        const reconnecting = waitState(c, 'reconnecting', 8000);
        await server.kill(signal);
        await reconnecting;
        assert.equal(c.connectionId, null);

        const resubscribed = Promise.all([
          waitEvent(news, 'subscription.succeeded', { timeout: 20000 }),
          waitEvent(room, 'presence.sync', { timeout: 20000 }),
        ]);
        await server.start();
        const [, [members]] = await resubscribed;
        assert.equal(c.state, 'connected');
        assert.notEqual(c.connectionId, first);
        assert.ok(calls >= 2, `token function called ${calls} times`);
        assert.deepEqual(
          members.map((m) => m.user_id),
          ['erin'],
        );

        const got = waitEvent(news, 'after.restart');
        await server.publish('news', 'after.restart', { ok: true });
        assert.deepEqual((await got)[0], { ok: true });
        c.disconnect();
      } finally {
        await server.kill('SIGTERM');
      }
    });
  }
});

describe('Node without a WebSocket implementation', () => {
  // A fresh Node process (the warning is said once per process) with no global
  // WebSocket and no `WebSocket` option: two clients connect, and reconnect once.
  const script = `
    delete globalThis.WebSocket;
    const { RealtimeClient } = await import(process.env.CLIENT_URL);
    const warnings = [];
    console.warn = (...args) => warnings.push(args.join(' '));
    const connected = (c) => new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('not connected: ' + c.state)), 8000);
      c.once('connected', () => { clearTimeout(t); resolve(); });
    });
    const a = new RealtimeClient(process.env.SERVER_URL, { reconnectDelay: 10 });
    await connected(a);
    const b = new RealtimeClient(process.env.SERVER_URL);
    await connected(b);
    a.disconnect();
    a.connect();
    await connected(a);
    const news = a.subscribe('news');
    await new Promise((resolve) => news.once('subscription.succeeded', resolve));
    const got = new Promise((resolve) => news.once('fallback', resolve));
    await fetch(process.env.SERVER_URL + '/api/publish', {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + process.env.API_KEY, 'Content-Type': 'application/json' },
      body: JSON.stringify({ channel: 'news', event: 'fallback', data: { ok: true } }),
    });
    const data = await got;
    a.disconnect();
    b.disconnect();
    console.log(JSON.stringify({ transports: [a.transport, b.transport], warnings, data }));
  `;

  test('connects with SSE and says once how to add ws', async () => {
    const server = await startRealtimeServer();
    try {
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        env: {
          ...process.env,
          CLIENT_URL: pathToFileURL(CLIENT_PATH).href,
          SERVER_URL: server.httpUrl,
          API_KEY: server.apiKey,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (err += d));
      const [code] = await withTimeout(once(child, 'exit'), 30000, 'the Node process').catch((e) => {
        child.kill('SIGKILL');
        throw e;
      });
      assert.equal(code, 0, err);
      const result = JSON.parse(out.trim().split('\n').at(-1));
      assert.deepEqual(result.data, { ok: true });
      assert.equal(result.warnings.length, 1, result.warnings.join('\n'));
      assert.match(result.warnings[0], /fell back to Server-Sent Events/);
      assert.match(result.warnings[0], /npm install ws/);
      assert.match(result.warnings[0], /new RealtimeClient\(url, \{ WebSocket \}\)/);
    } finally {
      await server.kill('SIGTERM');
    }
  });
});

describe('a busy server (503 with Retry-After before the upgrade)', () => {
  test('is not asked again on the other transports; the retry waits Retry-After plus the backoff', async () => {
    const server = await startRealtimeServer({ extraArgs: ['--max-handshakes-per-second', '0.5'] });
    try {
      const first = makeClient(server.wsUrl, null, { transports: ['websocket'] });
      await connected(first); // takes the second's only token
      const second = makeClient(server.wsUrl, null, { transports: ['websocket', 'sse', 'polling'] });
      const reconnecting = new Promise((resolve) => {
        second.on('state', (state, previous, info) => {
          if (state === 'reconnecting') resolve(info);
        });
      });
      const info = await withTimeout(reconnecting, 8000, 'the refusal');
      assert.equal(info.status, 503);
      assert.equal(info.retryAfter, 2); // a token every 2 s
      assert.ok(info.delay >= 2000, `waited ${info.delay} ms`);
      await connected(second, 15000);
      assert.equal(second.transport, 'websocket');
      const metrics = await (await fetch(`${server.httpUrl}/metrics`)).text();
      // one refusal: the WebSocket's; SSE and long-polling were not tried
      assert.match(metrics, /realtime_connections_refused_total\{[^}]*limit="handshakes"[^}]*\} 1\n/);
    } finally {
      closeAll();
      await server.kill('SIGTERM');
    }
  });
});
