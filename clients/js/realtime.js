// realtime.js — JavaScript client for realtime_proto (see docs/protocol.md).
//
// One ES module, no build step, no runtime dependencies. Works in browsers
// (<script type="module">) and in Node >= 20 (pass a WebSocket implementation,
// e.g. the `ws` package, as the `WebSocket` option; SSE and long-polling use
// the global fetch and need nothing else).
//
// Transports: 'websocket' (GET /ws), 'sse' (GET /sse, read with fetch
// streaming and a small SSE parser, so the HTTP status of a refused stream is
// visible and no EventSource is needed) and 'polling' (GET /poll). SSE and
// polling connections send through POST /send?connection_id=ID.

export const VERSION = '0.1.0';

export const STATES = Object.freeze(['connecting', 'connected', 'reconnecting', 'disconnected', 'failed']);

export const TRANSPORTS = Object.freeze(['websocket', 'sse', 'polling']);

export const DEFAULT_OPTIONS = Object.freeze({
  transports: TRANSPORTS,
  autoConnect: true,
  reconnectDelay: 500, // first backoff ceiling (ms); full jitter: delay = random(0, ceiling)
  maxReconnectDelay: 20000, // backoff ceiling cap (ms)
  maxReconnectAttempts: Infinity, // consecutive failed attempts before 'failed'
  maxAuthFailures: 3, // consecutive 401 / 4001 refusals before 'failed'
  connectTimeout: 10000, // ms for one transport to deliver connection.established
  heartbeatGrace: 5000, // dead connection = nothing received for 2 × heartbeat + grace
  deadTimeout: null, // ms; overrides the computation above when set
  transportMemory: 300000, // ms a transport that worked is tried first on reconnects
  maxQueueSize: 1000, // queued client events while not connected; oldest dropped
  pollRequestTimeout: 40000, // ms before an unanswered long-poll is abandoned and retried
  pollRetries: 3, // consecutive failed polls (same cursor) before the connection counts as lost
  pollRetryDelay: 500, // ms, multiplied by the failure count
  sendRetries: 2, // POST /send retries on network / 5xx errors
  sendRetryDelay: 500, // ms
  clientPing: true, // send {"type":"ping"} after `heartbeat` s without receiving anything
  maxBatchBytes: 32768, // POST /send: bytes of JSON per request
  autoRecover: true, // on messages.lost in a channel with history, resubscribe and replay the gap
});

const decoder = typeof TextDecoder !== 'undefined' ? new TextDecoder() : null;

function now() {
  return Date.now();
}

// Said once per process: the runtime (Node 20, say) has no WebSocket, so the client
// connected with a fallback transport.
let toldNoWebSocket = false;

function tellNoWebSocket(transport) {
  if (toldNoWebSocket) return;
  toldNoWebSocket = true;
  const used = transport === 'sse' ? 'Server-Sent Events' : 'long-polling';
  try {
    console.warn(
      `realtime: no WebSocket implementation here, so the client fell back to ${used}. ` +
        "For WebSocket in Node, install the ws package (npm install ws) and pass it: " +
        "import WebSocket from 'ws'; new RealtimeClient(url, { WebSocket }).",
    );
  } catch {
    /* no console */
  }
}

function reportListenerError(err) {
  try {
    console.error('realtime: a listener threw', err);
  } catch {
    /* ignore */
  }
}

// ---------------------------------------------------------------------------
// Event emitter

class Emitter {
  constructor() {
    this._listeners = new Map();
  }

  /** Add a listener; returns this. */
  on(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    let list = this._listeners.get(event);
    if (!list) this._listeners.set(event, (list = []));
    list.push(fn);
    return this;
  }

  /** Add a listener that is removed after its first call. */
  once(event, fn) {
    if (typeof fn !== 'function') throw new TypeError('listener must be a function');
    const wrapper = (...args) => {
      this.off(event, wrapper);
      fn.apply(this, args);
    };
    wrapper._original = fn;
    return this.on(event, wrapper);
  }

  /** off() removes every listener, off(event) those of one event, off(event, fn) one. */
  off(event, fn) {
    if (event === undefined) {
      this._listeners.clear();
      return this;
    }
    if (fn === undefined) {
      this._listeners.delete(event);
      return this;
    }
    const list = this._listeners.get(event);
    if (!list) return this;
    const i = list.findIndex((l) => l === fn || l._original === fn);
    if (i >= 0) list.splice(i, 1);
    if (!list.length) this._listeners.delete(event);
    return this;
  }

  listenerCount(event) {
    return this._listeners.get(event)?.length ?? 0;
  }

  _emit(event, ...args) {
    const list = this._listeners.get(event);
    if (!list) return;
    for (const fn of list.slice()) {
      try {
        fn.apply(this, args);
      } catch (err) {
        reportListenerError(err);
      }
    }
  }
}

// ---------------------------------------------------------------------------
// URLs

function resolveUrls(url) {
  const loc = globalThis.location;
  if (url == null || url === '') {
    if (!loc) throw new TypeError('RealtimeClient: a server URL is required outside browsers');
    url = loc.origin;
  }
  const u = new URL(String(url), loc ? loc.href : undefined);
  const secure = u.protocol === 'wss:' || u.protocol === 'https:';
  if (!['ws:', 'wss:', 'http:', 'https:'].includes(u.protocol)) {
    throw new TypeError(`RealtimeClient: unsupported URL scheme ${u.protocol}`);
  }
  const base = u.host + u.pathname.replace(/\/+$/, '');
  return {
    ws: (secure ? 'wss://' : 'ws://') + base,
    http: (secure ? 'https://' : 'http://') + base,
    params: [...u.searchParams.entries()],
  };
}

function buildUrl(base, path, params, extra) {
  const q = new URLSearchParams(extra);
  for (const [k, v] of Object.entries(params)) {
    if (v !== null && v !== undefined) q.set(k, String(v));
  }
  const s = q.toString();
  return base + path + (s ? `?${s}` : '');
}

async function readHttpError(res) {
  let body = null;
  try {
    body = await res.json();
  } catch {
    /* not JSON */
  }
  const e = (body && typeof body === 'object' && body.error) || {};
  let code = typeof e.code === 'number' ? e.code : 0;
  if (!code && res.status === 401) code = 4001;
  if (!code && res.status === 404) code = 4022;
  const message = e.message || res.statusText || `HTTP ${res.status}`;
  return { status: res.status, code, message, retryAfter: retryAfterSeconds(res.headers?.get?.('retry-after')) };
}

// The seconds of a Retry-After header given in seconds (an HTTP date is not used here).
function retryAfterSeconds(value) {
  const seconds = Number(value);
  return value && Number.isFinite(seconds) && seconds > 0 ? seconds : undefined;
}

// The close code of a connection the application closed (disconnect_user): not retried.
export const DISCONNECTED_CODE = 4010;
// The close code of a connection replaced by a newer one of the same user: not retried
// either (it would replace the next one in turn).
export const REPLACED_CODE = 4013;

function isAuthFailure(info) {
  return !!info && (info.code === 4001 || info.status === 401);
}

// The server refused the connection because it is busy (a reconnect storm, a full node:
// 503 or 429 with Retry-After): the other transports would be refused too, so the client
// waits and retries later. A 503 without Retry-After (a proxy that does not pass
// WebSocket through, say) still falls back to the next transport.
function isOverloaded(info) {
  return !!info && (info.status === 503 || info.status === 429) && info.retryAfter > 0;
}

function sleep(ms, transport) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    transport._sleepers.add(() => {
      clearTimeout(t);
      resolve();
    });
  });
}

// ---------------------------------------------------------------------------
// SSE parser (https://html.spec.whatwg.org/multipage/server-sent-events.html)

export class SseParser {
  constructor(onData) {
    this._onData = onData;
    this._buf = '';
    this._data = [];
  }

  push(chunk) {
    this._buf += chunk;
    let start = 0;
    const buf = this._buf;
    for (;;) {
      let i = start;
      while (i < buf.length && buf[i] !== '\n' && buf[i] !== '\r') i++;
      if (i >= buf.length) break;
      if (buf[i] === '\r' && i === buf.length - 1) break; // maybe \r\n split across chunks
      const line = buf.slice(start, i);
      start = i + (buf[i] === '\r' && buf[i + 1] === '\n' ? 2 : 1);
      this._line(line);
    }
    this._buf = buf.slice(start);
  }

  _line(line) {
    if (line === '') {
      if (this._data.length) {
        const data = this._data.join('\n');
        this._data = [];
        this._onData(data);
      }
      return;
    }
    if (line[0] === ':') return; // comment (heartbeat)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'data') this._data.push(value);
    // `id`, `event` and `retry` are not needed: reconnection is the client's own.
  }
}

// ---------------------------------------------------------------------------
// Transports. Each one: start(handlers) with handlers {onMessage(obj),
// onActivity(), onClose(info)}; send(items) with items [{msg, channel?}];
// close(). onClose is called at most once and never after close().

class WebSocketTransport {
  constructor(client, token) {
    this.name = 'websocket';
    this.client = client;
    this.token = token;
    this.closed = false;
    this.ws = null;
    this._error = '';
    this._refusal = null; // a refused handshake's status and Retry-After (the ws package)
    this.connectionId = null;
  }

  start(h) {
    this.h = h;
    const WS = this.client._WebSocket;
    if (typeof WS !== 'function') {
      queueMicrotask(() => this._finish({ code: 1006, reason: 'no WebSocket implementation' }));
      return;
    }
    const c = this.client;
    // heartbeat=json: the server's keepalive as JSON pings, which the dead-connection
    // check sees (a browser answers protocol Pings without telling the page)
    const url = buildUrl(c._urls.ws, '/ws', { token: this.token, heartbeat: 'json' }, c._urls.params);
    let ws;
    try {
      ws = new WS(url);
    } catch (err) {
      queueMicrotask(() => this._finish({ code: 1006, reason: String(err && err.message) }));
      return;
    }
    this.ws = ws;
    if (typeof ws.on === 'function') {
      // the `ws` package shows a refused handshake's response (browsers do not): keep its
      // status and Retry-After, then end the attempt as it would have
      ws.on('unexpected-response', (req, res) => {
        this._refusal = { status: res.statusCode, retryAfter: retryAfterSeconds(res.headers['retry-after']) };
        res.resume();
        ws.terminate();
      });
    }
    try {
      ws.binaryType = 'arraybuffer';
    } catch {
      /* ignore */
    }
    ws.onmessage = (ev) => {
      if (this.closed) return;
      let text = ev.data;
      if (typeof text !== 'string') {
        try {
          text = decoder.decode(text);
        } catch {
          return;
        }
      }
      h.onActivity();
      let msg;
      try {
        msg = JSON.parse(text);
      } catch {
        return;
      }
      h.onMessage(msg);
    };
    ws.onerror = (ev) => {
      this._error = String((ev && (ev.message || (ev.error && ev.error.message))) || '');
    };
    ws.onclose = (ev) => {
      let code = ev && typeof ev.code === 'number' ? ev.code : 1006;
      // The `ws` package reports a refused handshake as "Unexpected server
      // response: 401"; browsers hide the status (the SSE fallback sees it).
      let status = this._refusal && this._refusal.status;
      const m = /Unexpected server response: (\d{3})/.exec(this._error);
      if (m) status = Number(m[1]);
      if (status === 401) code = 4001;
      const retryAfter = this._refusal && this._refusal.retryAfter;
      const reason = (ev && ev.reason) || this._error || (status ? `HTTP ${status}` : '');
      this._finish({ code, status, retryAfter, reason });
    };
  }

  _finish(info) {
    if (this.closed) return;
    this.closed = true;
    this._detach();
    this.h.onClose(info);
  }

  _detach() {
    const ws = this.ws;
    if (!ws) return;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onopen = null;
    ws.onerror = () => {}; // the `ws` package throws on unhandled 'error'
  }

  send(items) {
    const ws = this.ws;
    if (this.closed || !ws || ws.readyState !== 1) return false;
    for (const item of items) ws.send(JSON.stringify(item.msg));
    return true;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this._detach();
    if (this.ws) {
      try {
        this.ws.close(1000);
      } catch {
        /* ignore */
      }
    }
  }
}

// POST /send?connection_id=ID, one request at a time so order is kept;
// whatever is sent while one is in flight goes into the next batch.
class HttpSender {
  constructor(transport) {
    this.t = transport;
    this.queue = [];
    this.busy = false;
    this.scheduled = false;
  }

  send(items) {
    this.queue.push(...items);
    if (!this.scheduled && !this.busy) {
      this.scheduled = true;
      queueMicrotask(() => {
        this.scheduled = false;
        this._flush();
      });
    }
  }

  async _flush() {
    const t = this.t;
    if (this.busy || !this.queue.length || t.closed || !t.connectionId) return;
    const c = t.client;
    const max = c.options.maxBatchBytes;
    const batch = [];
    const parts = [];
    let size = 2;
    while (this.queue.length) {
      const s = JSON.stringify(this.queue[0].msg);
      if (batch.length && size + s.length + 1 > max) break;
      batch.push(this.queue.shift());
      parts.push(s);
      size += s.length + 1;
    }
    const body = parts.length === 1 ? parts[0] : `[${parts.join(',')}]`;
    const url = buildUrl(c._urls.http, '/send', { connection_id: t.connectionId }, c._urls.params);
    this.busy = true;
    try {
      for (let attempt = 0; ; attempt++) {
        let res = null;
        try {
          res = await c._fetch(url, {
            method: 'POST',
            headers: { 'Content-Type': 'application/json' },
            body,
            cache: 'no-store',
          });
        } catch {
          res = null;
        }
        if (t.closed) return;
        if (res && res.ok) {
          res.body?.cancel?.().catch?.(() => {});
          return;
        }
        if (res && res.status < 500) {
          const err = await readHttpError(res);
          if (t.closed) return;
          if (err.code === 4022 || res.status === 404) {
            c._requeue(batch);
            t._fail({ code: 4022, status: res.status, reason: err.message });
            return;
          }
          // The body was refused whole (400 / 413): report it, drop it.
          c._emit('error', { code: err.code, message: err.message, status: res.status }, null);
          return;
        }
        if (attempt >= c.options.sendRetries) {
          c._requeue(batch);
          t._fail({ code: 1006, reason: 'POST /send failed' });
          return;
        }
        await sleep(c.options.sendRetryDelay * (attempt + 1), t);
        if (t.closed) return;
      }
    } finally {
      this.busy = false;
      if (this.queue.length && !t.closed) this._flush();
    }
  }
}

class HttpTransportBase {
  constructor(client, token) {
    this.client = client;
    this.token = token;
    this.closed = false;
    this.connectionId = null;
    this.sender = new HttpSender(this);
    this._sleepers = new Set();
    this._aborts = new Set();
  }

  _abortable() {
    const ctrl = new AbortController();
    this._aborts.add(ctrl);
    return ctrl;
  }

  send(items) {
    if (this.closed) return false;
    this.sender.send(items);
    return true;
  }

  _deliver(msg) {
    if (this.closed) return;
    if (msg && typeof msg === 'object' && msg.type === 'event' && msg.event === 'connection.established') {
      const id = msg.data && msg.data.connection_id;
      if (id) this.connectionId = id;
    }
    this.h.onMessage(msg);
  }

  _fail(info) {
    if (this.closed) return;
    this._teardown();
    this.h.onClose(info);
  }

  _teardown() {
    this.closed = true;
    for (const ctrl of this._aborts) {
      try {
        ctrl.abort();
      } catch {
        /* ignore */
      }
    }
    this._aborts.clear();
    for (const wake of this._sleepers) wake();
    this._sleepers.clear();
  }

  close() {
    if (this.closed) return;
    this._teardown();
  }
}

class SseTransport extends HttpTransportBase {
  constructor(client, token) {
    super(client, token);
    this.name = 'sse';
  }

  start(h) {
    this.h = h;
    this._run().catch((err) => this._fail({ code: 1006, reason: String(err && err.message) }));
  }

  async _run() {
    const c = this.client;
    if (typeof c._fetch !== 'function') throw new Error('no fetch implementation');
    const ctrl = this._abortable();
    const url = buildUrl(c._urls.http, '/sse', { token: this.token }, c._urls.params);
    let res;
    try {
      res = await c._fetch(url, {
        headers: { Accept: 'text/event-stream' },
        cache: 'no-store',
        signal: ctrl.signal,
      });
    } catch (err) {
      this._fail({ code: 1006, reason: String(err && err.message) });
      return;
    }
    if (this.closed) return;
    if (!res.ok) {
      const err = await readHttpError(res);
      this._fail({ code: err.code || 1006, status: err.status, retryAfter: err.retryAfter, reason: err.message });
      return;
    }
    if (!res.body || typeof res.body.getReader !== 'function') {
      this._fail({ code: 1006, reason: 'streaming fetch is not supported' });
      return;
    }
    const reader = res.body.getReader();
    const text = new TextDecoder();
    const parser = new SseParser((data) => {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      this._deliver(msg);
    });
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (this.closed) return;
        if (done) break;
        this.h.onActivity();
        parser.push(text.decode(value, { stream: true }));
        if (this.closed) return;
      }
    } catch (err) {
      if (this.closed) return;
      this._fail({ code: 1006, reason: String(err && err.message) });
      return;
    } finally {
      if (this.closed) reader.cancel().catch(() => {});
    }
    this._fail({ code: 1006, reason: 'event stream ended' });
  }

}

class PollingTransport extends HttpTransportBase {
  constructor(client, token) {
    super(client, token);
    this.name = 'polling';
    this.selfMonitored = true; // dead connections are found by the poll timeouts
    this.cursor = null;
  }

  start(h) {
    this.h = h;
    this._run().catch((err) => this._fail({ code: 1006, reason: String(err && err.message) }));
  }

  async _get(url, timeout) {
    const ctrl = this._abortable();
    const timer = timeout ? setTimeout(() => ctrl.abort(), timeout) : null;
    try {
      return await this.client._fetch(url, { cache: 'no-store', signal: ctrl.signal });
    } finally {
      if (timer) clearTimeout(timer);
      this._aborts.delete(ctrl);
    }
  }

  async _run() {
    const c = this.client;
    if (typeof c._fetch !== 'function') throw new Error('no fetch implementation');
    const o = c.options;
    let res;
    try {
      res = await this._get(buildUrl(c._urls.http, '/poll', { token: this.token }, c._urls.params), o.connectTimeout);
    } catch (err) {
      this._fail({ code: 1006, reason: String(err && err.message) });
      return;
    }
    if (this.closed) return;
    if (!res.ok) {
      const err = await readHttpError(res);
      this._fail({ code: err.code || 1006, status: err.status, retryAfter: err.retryAfter, reason: err.message });
      return;
    }
    let body;
    try {
      body = await res.json();
    } catch {
      this._fail({ code: 1006, reason: 'bad /poll answer' });
      return;
    }
    if (this.closed) return;
    this.connectionId = body.connection_id;
    this.cursor = body.cursor;
    if (!this._deliverAll(body.messages)) return;

    let failures = 0;
    while (!this.closed) {
      const url = buildUrl(
        c._urls.http,
        '/poll',
        { connection_id: this.connectionId, cursor: this.cursor },
        c._urls.params,
      );
      let ok = false;
      try {
        res = await this._get(url, o.pollRequestTimeout);
        if (this.closed) return;
        if (res.status === 404) {
          const err = await readHttpError(res);
          this._fail({ code: err.code || 4022, status: 404, reason: err.message });
          return;
        }
        if (res.ok) {
          body = await res.json();
          ok = true;
        } else {
          res.body?.cancel?.().catch?.(() => {});
        }
      } catch {
        ok = false;
      }
      if (this.closed) return;
      if (!ok) {
        // Retry with the same cursor: the server answers the same messages again.
        failures++;
        if (failures > o.pollRetries) {
          this._fail({ code: 1006, reason: 'long-poll failed' });
          return;
        }
        await sleep(o.pollRetryDelay * failures, this);
        continue;
      }
      failures = 0;
      this.h.onActivity();
      if (body && body.cursor !== undefined && body.cursor !== null) this.cursor = body.cursor;
      if (!this._deliverAll(body && body.messages)) return;
    }
  }

  _deliverAll(messages) {
    if (!Array.isArray(messages)) return !this.closed;
    for (const msg of messages) {
      if (this.closed) return false;
      this._deliver(msg);
    }
    return !this.closed;
  }

  // On disconnect(): a long-poll connection has no socket to close, so tell
  // the server (POST /close) and presence members leave at once rather than
  // after the server's poll session timeout.
  leave() {
    if (this.closed || !this.connectionId) return;
    const c = this.client;
    const url = buildUrl(c._urls.http, '/close', { connection_id: this.connectionId }, c._urls.params);
    try {
      const p = c._fetch(url, { method: 'POST', keepalive: true, cache: 'no-store' });
      if (p && typeof p.then === 'function') {
        p.then((res) => res.body?.cancel?.()).catch(() => {});
      }
    } catch {
      /* ignore */
    }
  }
}

const TRANSPORT_CLASSES = {
  websocket: WebSocketTransport,
  sse: SseTransport,
  polling: PollingTransport,
};

// ---------------------------------------------------------------------------
// Channels

// The offsets delivered on a channel in its current epoch, as sorted disjoint
// ranges [first, last]: one range while nothing is missing, one more per gap.
// At most `limit` ranges are kept; the lowest are forgotten first.
class OffsetSet {
  constructor(limit = 64) {
    this.limit = limit;
    this.ranges = [];
  }

  clear() {
    this.ranges = [];
  }

  /** Add an offset; false when it was already there. */
  add(n) {
    const r = this.ranges;
    let i = r.length - 1; // the last range starting at or below n (offsets mostly grow)
    while (i >= 0 && r[i][0] > n) i--;
    if (i >= 0 && n <= r[i][1]) return false;
    const left = i >= 0 && r[i][1] === n - 1;
    const right = i + 1 < r.length && r[i + 1][0] === n + 1;
    if (left && right) {
      r[i][1] = r[i + 1][1];
      r.splice(i + 1, 1);
    } else if (left) {
      r[i][1] = n;
    } else if (right) {
      r[i + 1][0] = n;
    } else {
      r.splice(i + 1, 0, [n, n]);
      if (r.length > this.limit) r.shift();
    }
    return true;
  }
}

export class Channel extends Emitter {
  constructor(client, name, options = {}) {
    super();
    this.client = client;
    this.name = name;
    /** 'pending' | 'subscribed' | 'failed' | 'unsubscribed' */
    this.state = 'pending';
    this.error = null;
    /** Stream position on channels with history: the epoch and the last offset seen. */
    this.epoch = null;
    this.offset = null;
    /** After a resubscription that asked for recovery: whether nothing was missed. */
    this.recovered = null;
    this._history = Number.isInteger(options.history) && options.history > 0 ? options.history : 0;
    this._succeededOnce = false;
    this._seen = new OffsetSet();
    this._recoverAfter = null; // recovering a reported loss: replay what follows this offset
    this._recoverAgain = null; // a loss reported during that recovery, from before its start
    this._members = new Map();
    this._retryTimer = null;
  }

  // The subscribe message: after a reconnect it asks for what was missed since
  // the last message seen (channels with history); the first time, for the
  // last `history` messages if asked.
  _subscribeMessage() {
    const msg = { type: 'subscribe', channel: this.name };
    if (this.epoch !== null && this.offset !== null) {
      msg.data = { recover: { epoch: this.epoch, offset: this._recoverAfter ?? this.offset } };
    } else if (this._history && !this._succeededOnce) {
      msg.data = { history: this._history };
    }
    return msg;
  }

  // Remember a message's stream position; false when its offset was delivered
  // already (a replay after a reported loss repeats what followed the gap).
  _track(msg) {
    const { epoch, offset } = msg;
    if (typeof epoch !== 'string' || !Number.isInteger(offset)) return true;
    if (epoch !== this.epoch) this._seen.clear();
    if (epoch !== this.epoch || this.offset === null || offset > this.offset) {
      this.epoch = epoch;
      this.offset = offset;
    }
    return this._seen.add(offset);
  }

  /** True while the channel resubscribes to replay messages the server reported lost. */
  get recovering() {
    return this._recoverAfter !== null;
  }

  // messages.lost: on a channel with history, when the lost offsets of this epoch
  // are known, resubscribe asking for everything after the one before them.
  _onLost(data) {
    const d = data && typeof data === 'object' ? data : {};
    const from = d.from;
    if (!this.client.options.autoRecover || this.epoch === null || d.epoch !== this.epoch) return;
    if (!Number.isInteger(from) || from < 1) return;
    if (this._recoverAfter !== null) {
      if (from - 1 < this._recoverAfter) this._recoverAgain = Math.min(this._recoverAgain ?? from, from);
    } else if (this.state === 'subscribed') {
      this._recover(from - 1);
    }
  }

  _recover(after) {
    this._recoverAfter = after;
    this.state = 'pending'; // client events wait for the replay
    this.client._sendSubscribe(this); // a subscribed connection asking again gets a replay
  }

  get isPrivate() {
    return this.name.startsWith('private-');
  }

  get isPresence() {
    return this.name.startsWith('presence-');
  }

  get subscribed() {
    return this.state === 'subscribed';
  }

  /** Presence members, [{user_id, info}], kept current. */
  get members() {
    return [...this._members.values()];
  }

  member(userId) {
    return this._members.get(userId) ?? null;
  }

  get me() {
    return this.client.userId == null ? null : this.member(this.client.userId);
  }

  /**
   * Send a client event to the other subscribers (private- and presence-
   * channels only). Sent at once when connected and subscribed, otherwise
   * queued and sent after (re)subscription. Returns true if sent at once.
   */
  send(event, data) {
    if (typeof event !== 'string' || !event) throw new TypeError('event name must be a non-empty string');
    if (this.state === 'unsubscribed') throw new Error(`not subscribed to ${this.name}`);
    const msg = { type: 'event', channel: this.name, event };
    if (data !== undefined) msg.data = data;
    return this.client._sendEvent(this, msg);
  }

  /**
   * Tell the others this user is typing. The server forwards at most one per
   * user and channel per second and keeps it out of history, so call it on
   * every keystroke if that is simpler.
   */
  typing(data = {}) {
    return this.send('typing', data);
  }

  /**
   * Move this user's read position: an offset (channels with history) or a
   * message id. The others get a `read` event; the server keeps the position
   * (GET /api/channels/{name}/reads) and never moves an offset backwards.
   */
  read(position) {
    return this.send('read', { position });
  }

  unsubscribe() {
    this.client.unsubscribe(this.name);
  }

  _clearRetry() {
    if (this._retryTimer) clearTimeout(this._retryTimer);
    this._retryTimer = null;
  }

  _handleError(err, msg) {
    if (this.state === 'pending') {
      const retryable = err.code === 4029 || err.code === 4012;
      this.error = err;
      if (retryable) {
        const after = Math.max(0.2, Number(err.retry_after) || 1) * 1000;
        this._clearRetry();
        this._retryTimer = setTimeout(() => {
          this._retryTimer = null;
          if (this.state === 'pending') this.client._sendSubscribe(this);
        }, after);
      } else {
        this.state = 'failed';
        this.client._dropQueued(this.name);
      }
      this._emit('subscription.error', err, msg);
    } else if (this.state !== 'unsubscribed') {
      this._emit('error', err, msg);
    }
  }

  _handleEvent(msg) {
    const event = msg.event;
    const data = msg.data;
    if (this.state === 'unsubscribed') {
      if (event === 'unsubscription.succeeded') {
        this._emit(event, data ?? {}, msg);
        this._emit('*', event, data ?? {}, msg);
      }
      return;
    }
    if (event === 'subscription.revoked') {
      // the application ended the subscription: not resubscribed on reconnect
      this._clearRetry();
      this.state = 'failed';
      this.error = { code: 4003, message: (data && data.reason) || 'subscription revoked' };
      this.client._dropQueued(this.name);
      this._emit(event, data ?? {}, msg);
      this._emit('*', event, data ?? {}, msg);
      return;
    }
    if (event !== 'subscription.succeeded' && !this._track(msg)) return; // delivered already
    let again = null;
    if (event === 'subscription.succeeded') {
      this._clearRetry();
      this.state = 'subscribed';
      this.error = null;
      this._succeededOnce = true;
      const d = data && typeof data === 'object' ? data : {};
      this.recovered = typeof d.recovered === 'boolean' ? d.recovered : null;
      if (typeof d.epoch === 'string' && typeof d.offset === 'number') {
        // The missed (or history) messages follow, all at or below the stream's head
        // d.offset. After a recovery the position stays where the replay starts and
        // moves as it arrives, so a replay cut short is asked for again.
        const replay = this.recovered === true && d.epoch === this.epoch && this.offset !== null;
        if (d.epoch !== this.epoch) this._seen.clear();
        this.offset = replay ? (this._recoverAfter ?? this.offset) : d.offset;
        this.epoch = d.epoch;
      }
      if (this.recovered) again = this._recoverAgain;
      this._recoverAfter = null;
      this._recoverAgain = null;
      this.client._flushQueue(this.name);
      this._emit(event, data ?? {}, msg);
    } else if (this.isPresence && event === 'presence.sync') {
      const list = (data && Array.isArray(data.members) && data.members) || [];
      this._members = new Map(list.filter((m) => m && m.user_id != null).map((m) => [m.user_id, m]));
      this._emit(event, this.members, msg);
    } else if (this.isPresence && event === 'user.joined') {
      if (data && data.user_id != null) this._members.set(data.user_id, data);
      this._emit(event, data, msg);
    } else if (this.isPresence && event === 'user.left') {
      if (data && data.user_id != null) this._members.delete(data.user_id);
      this._emit(event, data, msg);
    } else {
      if (event === 'messages.lost') this._onLost(data);
      this._emit(event, data, msg);
    }
    this._emit('*', event, data, msg);
    if (event === 'messages.lost') this.client._emit('messages.lost', this.name, data, msg);
    if (again !== null && this.state === 'subscribed') this._recover(again - 1);
  }
}

// ---------------------------------------------------------------------------
// The client

export class RealtimeClient extends Emitter {
  /**
   * @param {string} [url] ws://, wss://, http:// or https:// URL of the server
   *   (a path prefix is kept). In browsers it defaults to the page's origin.
   * @param {object} [options] see README.md
   */
  constructor(url, options = {}) {
    super();
    this.options = { ...DEFAULT_OPTIONS, ...options };
    const known = this.options.transports.filter((t) => TRANSPORT_CLASSES[t]);
    if (!known.length) throw new TypeError('RealtimeClient: no known transport in `transports`');
    this.options.transports = known;
    this._urls = resolveUrls(url);
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    const f = options.fetch ?? globalThis.fetch;
    this._fetch = typeof f === 'function' ? (...a) => f.apply(globalThis, a) : null;

    this.state = 'disconnected';
    this.connectionId = null;
    this.userId = null;
    this.heartbeat = null;
    this.transport = null;

    this._channels = new Map();
    this._leaving = new Map();
    this._queue = [];
    this._transport = null;
    this._gen = 0;
    this._attempts = 0;
    this._authFailures = 0;
    this._remembered = null;
    this._reconnectTimer = null;
    this._deadTimer = null;
    this._lastActivity = 0;
    this._cancelAttempt = null;
    this._autoConnectPending = false;
    this._onOnline = () => {
      if (this.state === 'reconnecting' && this._reconnectTimer) {
        clearTimeout(this._reconnectTimer);
        this._reconnectTimer = null;
        this._round();
      }
    };

    if (this.options.autoConnect) {
      // Report 'connecting' now, emit it once listeners had a chance to attach.
      this.state = 'connecting';
      this._autoConnectPending = true;
      queueMicrotask(() => {
        if (!this._autoConnectPending) return;
        this._autoConnectPending = false;
        this._listenOnline(true);
        this._emit('state', 'connecting', 'disconnected');
        this._round();
      });
    }
  }

  /** Subscribed (or subscribing) channels. */
  get channels() {
    return [...this._channels.values()];
  }

  channel(name) {
    return this._channels.get(name) ?? null;
  }

  /** Number of client events waiting to be sent. */
  get queueSize() {
    return this._queue.length;
  }

  /** Start connecting (after autoConnect: false, disconnect() or 'failed'). */
  connect() {
    if (this._autoConnectPending) return this;
    if (this.state === 'connected' || this.state === 'connecting' || this.state === 'reconnecting') return this;
    this._attempts = 0;
    this._authFailures = 0;
    this._listenOnline(true);
    this._setState('connecting');
    this._round();
    return this;
  }

  /** Close the connection and stop reconnecting. Channels are kept: connect() resubscribes. */
  disconnect() {
    this._autoConnectPending = false;
    this._gen++;
    this._listenOnline(false);
    this._clearReconnect();
    this._clearDead();
    if (this._cancelAttempt) this._cancelAttempt();
    const t = this._transport;
    this._transport = null;
    if (t) {
      if (typeof t.leave === 'function') t.leave();
      t.close();
    }
    this._connectionLost();
    this._setState('disconnected');
    return this;
  }

  /**
   * Subscribe to a channel (or return the existing subscription).
   * options.history: on channels with history, also receive the last n messages.
   */
  subscribe(name, options = {}) {
    if (typeof name !== 'string' || !name) throw new TypeError('channel name must be a non-empty string');
    let ch = this._channels.get(name);
    if (ch && ch.state !== 'failed') return ch;
    if (!ch) {
      ch = new Channel(this, name, options);
      this._channels.set(name, ch);
    }
    ch.state = 'pending';
    ch.error = null;
    if (this._transport) this._sendSubscribe(ch);
    return ch;
  }

  /** Leave a channel. Its queued client events are dropped. */
  unsubscribe(name) {
    const ch = this._channels.get(name);
    if (!ch) return this;
    this._channels.delete(name);
    ch._clearRetry();
    const active = ch.state === 'subscribed' || ch.state === 'pending';
    ch.state = 'unsubscribed';
    ch._members.clear();
    this._dropQueued(name);
    if (this._transport && active) {
      this._leaving.set(name, ch);
      this._transport.send([{ msg: { type: 'unsubscribe', channel: name } }]);
    }
    return this;
  }

  // -- internals -------------------------------------------------------------

  _setState(state, ...info) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    this._emit('state', state, previous, ...info);
  }

  _listenOnline(on) {
    const w = globalThis.window;
    if (!w || typeof w.addEventListener !== 'function') return;
    if (on) w.addEventListener('online', this._onOnline);
    else w.removeEventListener('online', this._onOnline);
  }

  async _resolveToken() {
    let t = this.options.getToken ?? (this.options.auth && this.options.auth.token);
    if (t === undefined) t = this.options.token;
    if (typeof t === 'function') t = await t();
    return t === null || t === undefined || t === '' ? null : String(t);
  }

  // The server asks for new credentials before the token expires: the token function's
  // next token goes to it. If the function fails, the server closes with 4001 at expiry.
  async _refreshToken() {
    const gen = this._gen;
    let token;
    try {
      token = await this._resolveToken();
    } catch (err) {
      this._emit('error', { code: 0, message: `token function failed: ${err && err.message}` }, null);
      return;
    }
    if (gen !== this._gen || !this._transport || token === null) return;
    this._transport.send([{ msg: { type: 'refresh', data: { token } } }]);
  }

  _transportOrder() {
    const list = this.options.transports;
    const r = this._remembered;
    if (r && r.until > now() && list.includes(r.name)) return [r.name, ...list.filter((n) => n !== r.name)];
    return list;
  }

  async _round() {
    const gen = ++this._gen;
    this._clearReconnect();
    let token;
    try {
      token = await this._resolveToken();
    } catch (err) {
      if (gen !== this._gen) return;
      this._emit('error', { code: 0, message: `token function failed: ${err && err.message}` }, null);
      this._authFailures++; // no token, no connection: 'failed' after maxAuthFailures
      this._scheduleReconnect({ code: 4001, reason: 'token function failed' });
      return;
    }
    if (gen !== this._gen) return;
    let last = null;
    for (const name of this._transportOrder()) {
      const result = await this._tryTransport(name, token, gen);
      if (gen !== this._gen) return;
      if (result.ok) return;
      last = result.info;
      if (isAuthFailure(result.info)) {
        this._authFailures++;
        break; // the same token is refused on every transport
      }
      if (isOverloaded(result.info)) break; // and so is a busy server's every transport
    }
    this._scheduleReconnect(last || { code: 1006 });
  }

  _tryTransport(name, token, gen) {
    return new Promise((resolve) => {
      const t = new TRANSPORT_CLASSES[name](this, token);
      let established = false;
      let done = false;
      const finish = (result) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (this._cancelAttempt === cancel) this._cancelAttempt = null;
        resolve(result);
      };
      const cancel = () => {
        t.close();
        finish({ ok: false, info: { code: 1000, reason: 'cancelled' } });
      };
      this._cancelAttempt = cancel;
      const timer = setTimeout(() => {
        t.close();
        finish({ ok: false, info: { code: 1006, reason: `${name}: no connection.established in time` } });
      }, this.options.connectTimeout);
      t.start({
        onMessage: (msg) => {
          if (gen !== this._gen && !established) {
            cancel();
            return;
          }
          if (!established) {
            if (msg && msg.type === 'event' && msg.event === 'connection.established') {
              established = true;
              finish({ ok: true });
              this._onEstablished(t, msg);
            } else if (msg && msg.type === 'error') {
              const code = msg.data && msg.data.code;
              t.close();
              finish({ ok: false, info: { code: typeof code === 'number' ? code : 1006, reason: msg.data && msg.data.message } });
            }
            return;
          }
          if (this._transport === t) this._handleMessage(msg);
        },
        onActivity: () => {
          if (this._transport === t) this._lastActivity = now();
        },
        onClose: (info) => {
          if (!established) {
            finish({ ok: false, info });
            return;
          }
          if (this._transport === t) this._lost(info);
        },
      });
    });
  }

  _onEstablished(t, msg) {
    const d = (msg.data && typeof msg.data === 'object' && msg.data) || {};
    this._transport = t;
    this.connectionId = d.connection_id ?? t.connectionId ?? null;
    this.userId = d.user_id ?? null;
    this.heartbeat = typeof d.heartbeat === 'number' ? d.heartbeat : null;
    this.transport = t.name;
    if (typeof this._WebSocket !== 'function' && this.options.transports.includes('websocket')) {
      tellNoWebSocket(t.name);
    }
    this._attempts = 0;
    this._authFailures = 0;
    this._remembered = { name: t.name, until: now() + this.options.transportMemory };
    this._lastActivity = now();
    this._armDead();

    const subs = [];
    for (const ch of this._channels.values()) {
      if (ch.state === 'pending' || ch.state === 'subscribed') {
        ch.state = 'pending';
        ch._clearRetry();
        subs.push({ msg: ch._subscribeMessage() });
      }
    }
    if (subs.length) t.send(subs);
    this._emit('message', msg);
    this._setState('connected');
    if (this._transport !== t) return; // a listener disconnected
    this._emit('connected', { connectionId: this.connectionId, userId: this.userId, transport: this.transport });
  }

  // Dead-connection detection (not for long-polling, which has its own
  // request timeouts): after `heartbeat` s without receiving anything, send a
  // ping (the server's pong proves the connection); after 2 × heartbeat +
  // grace without anything, drop the connection and reconnect.
  _armDead() {
    this._clearDead();
    const t = this._transport;
    if (!t || t.selfMonitored) return;
    const o = this.options;
    const hb = this.heartbeat > 0 ? this.heartbeat * 1000 : 0;
    const deadMs = o.deadTimeout || (hb ? 2 * hb + o.heartbeatGrace : 0);
    if (!deadMs) return;
    const pingMs = hb ? Math.min(hb, deadMs / 2) : deadMs / 2;
    let pingedAt = -1;
    const check = () => {
      this._deadTimer = null;
      if (this._transport !== t) return;
      const idle = now() - this._lastActivity;
      if (idle >= deadMs) {
        this._lost({ code: 1006, reason: 'no data from the server (heartbeat timeout)' });
        return;
      }
      if (idle >= pingMs && o.clientPing && pingedAt !== this._lastActivity) {
        pingedAt = this._lastActivity;
        t.send([{ msg: { type: 'ping' } }]);
      }
      const next = idle < pingMs ? pingMs - idle : deadMs - idle;
      this._deadTimer = setTimeout(check, Math.max(10, next));
    };
    this._deadTimer = setTimeout(check, pingMs);
  }

  _clearDead() {
    if (this._deadTimer) clearTimeout(this._deadTimer);
    this._deadTimer = null;
  }

  _clearReconnect() {
    if (this._reconnectTimer) clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
  }

  _connectionLost() {
    this.connectionId = null;
    this.transport = null;
    this._leaving.clear();
    for (const ch of this._channels.values()) {
      ch._clearRetry();
      if (ch.state === 'subscribed') ch.state = 'pending';
    }
  }

  _lost(info) {
    const t = this._transport;
    this._transport = null;
    this._clearDead();
    if (t) t.close();
    this._connectionLost();
    if (isAuthFailure(info)) this._authFailures++;
    this._emit('disconnected', info);
    if (info && (info.code === DISCONNECTED_CODE || info.code === REPLACED_CODE)) {
      this._fail({ ...info, reason: info.reason || 'disconnected by the server' }); // no reconnect
      return;
    }
    this._scheduleReconnect(info);
  }

  _scheduleReconnect(info) {
    const o = this.options;
    if (this._authFailures >= o.maxAuthFailures) {
      this._fail({ ...info, reason: 'authentication refused' });
      return;
    }
    if (this._attempts >= o.maxReconnectAttempts) {
      this._fail({ ...info, reason: 'too many reconnect attempts' });
      return;
    }
    const ceiling = Math.min(o.maxReconnectDelay, o.reconnectDelay * 2 ** Math.min(this._attempts, 30));
    // a busy server's Retry-After first, then the jittered backoff: the refused clients
    // do not all come back in the same second
    const wait = isOverloaded(info) ? info.retryAfter * 1000 : 0;
    const delay = wait + Math.floor(Math.random() * ceiling);
    this._attempts++;
    this._clearReconnect();
    this._setState('reconnecting', { delay, attempt: this._attempts, ...info });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      this._round();
    }, delay);
  }

  _fail(info) {
    this._gen++;
    this._clearReconnect();
    this._listenOnline(false);
    this._setState('failed', info);
  }

  _handleMessage(msg) {
    if (!msg || typeof msg !== 'object') return;
    this._emit('message', msg);
    switch (msg.type) {
      case 'ping':
        this._transport?.send([{ msg: { type: 'pong' } }]);
        return;
      case 'pong':
        return;
      case 'error': {
        const d = (msg.data && typeof msg.data === 'object' && msg.data) || {};
        const err = { ...d, code: d.code, message: d.message };
        if (msg.channel != null) {
          const ch = this._channels.get(msg.channel) ?? this._leaving.get(msg.channel);
          if (ch) {
            if (ch.state === 'unsubscribed' && err.code === 4010) this._leaving.delete(ch.name);
            ch._handleError(err, msg);
          }
        }
        this._emit('error', err, msg);
        return;
      }
      case 'event':
        break;
      default:
        return;
    }
    if (msg.channel == null) {
      if (msg.event === 'connection.closed') {
        const d = msg.data || {};
        this._lost({ code: typeof d.code === 'number' ? d.code : 1000, reason: d.reason || 'closed by the server' });
        return;
      }
      if (msg.event === 'connection.established') return;
      if (msg.event === 'connection.refresh_required') this._refreshToken();
      if (typeof msg.event === 'string') {
        if (msg.event === 'messages.lost') this._emit('messages.lost', null, msg.data, msg);
        else this._emit(msg.event, msg.data, msg);
        this._emit('*', msg.event, msg.data, msg);
      }
      return;
    }
    let ch = this._channels.get(msg.channel);
    if (msg.event === 'unsubscription.succeeded' && this._leaving.has(msg.channel)) {
      ch = this._leaving.get(msg.channel);
      this._leaving.delete(msg.channel);
    }
    if (ch) ch._handleEvent(msg);
  }

  _sendSubscribe(ch) {
    if (this._transport) this._transport.send([{ msg: ch._subscribeMessage() }]);
  }

  _sendEvent(ch, msg) {
    if (this._transport && ch.state === 'subscribed') {
      const item = { msg, channel: ch.name };
      if (this._transport.send([item])) return true;
    }
    this._enqueue([{ msg, channel: ch.name }], false);
    return false;
  }

  _enqueue(items, front) {
    if (front) this._queue.unshift(...items);
    else this._queue.push(...items);
    const over = this._queue.length - this.options.maxQueueSize;
    if (over > 0) {
      const dropped = this._queue.splice(0, over);
      this._emit('queue.dropped', dropped.map((i) => i.msg));
    }
  }

  _requeue(items) {
    const keep = items.filter((i) => i.channel && this._channels.has(i.channel));
    if (keep.length) this._enqueue(keep, true);
  }

  _dropQueued(name) {
    if (this._queue.some((i) => i.channel === name)) this._queue = this._queue.filter((i) => i.channel !== name);
  }

  _flushQueue(name) {
    const t = this._transport;
    if (!t || !this._queue.length) return;
    const out = [];
    const keep = [];
    for (const item of this._queue) (item.channel === name ? out : keep).push(item);
    if (!out.length) return;
    this._queue = keep;
    if (!t.send(out)) this._enqueue(out, true);
  }
}

export default RealtimeClient;
