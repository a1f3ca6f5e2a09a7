// Shared helpers for the JavaScript tests: spawn the real Python server on a
// free port, sign JWTs, call the HTTP API, wait for events with timeouts, and
// a small TCP proxy that can refuse WebSocket upgrades or cut connections.
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const CLIENT_PATH = path.join(ROOT, 'clients', 'js', 'realtime.js');

/** The `realtime` console script (JS_TEST_REALTIME_BIN overrides). */
export function realtimeBin() {
  return process.env.JS_TEST_REALTIME_BIN || path.join(ROOT, '.venv', 'bin', 'realtime');
}

/** The Python interpreter that has realtime_proto installed (JS_TEST_PYTHON overrides). */
export function pythonBin() {
  return process.env.JS_TEST_PYTHON || path.join(ROOT, '.venv', 'bin', 'python');
}

// Servers still running when this process exits (a crash, a cancelled run) are killed.
const running = new Set();
process.on('exit', () => {
  for (const proc of running) {
    try {
      proc.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
});

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function randomKey(prefix) {
  return `${prefix}-${crypto.randomBytes(12).toString('hex')}`;
}

/** Reject after `ms` with a helpful message unless `promise` settles first. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Wait for `event` on an emitter with on/off (RealtimeClient, Channel).
 * `filter(...args)` selects the wanted call; resolves with the args array.
 */
export function waitEvent(emitter, event, { timeout = 5000, filter = () => true } = {}) {
  let listener;
  const p = new Promise((resolve) => {
    listener = (...args) => {
      if (filter(...args)) resolve(args);
    };
    emitter.on(event, listener);
  });
  return withTimeout(p, timeout, `event "${event}"`).finally(() => emitter.off(event, listener));
}

/** Wait for a client state. */
export function waitState(client, state, timeout = 5000) {
  if (client.state === state) return Promise.resolve();
  return waitEvent(client, 'state', { timeout, filter: (s) => s === state });
}

/** Poll `predicate` (sync or async) until it is truthy; for conditions with no event to await. */
export async function until(predicate, { timeout = 5000, interval = 25, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await predicate();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

function b64url(buf) {
  return Buffer.from(buf).toString('base64url');
}

/** An HS256 JWT signed with node:crypto. */
export function signJwt(secret, claims) {
  const header = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const payload = b64url(JSON.stringify(claims));
  const sig = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${sig}`;
}

/**
 * A running server process. start() spawns it and waits for GET /health 200 (under
 * `prefix` when the server is mounted there); kill() ends it (SIGKILL by default, as a
 * crash); start() again reuses the port.
 */
export class ServerProcess {
  constructor({ command, args, port, apiKey, jwtSecret, cwd = ROOT, env = {}, prefix = '' }) {
    this.command = command;
    this.argsFor = args;
    this.port = port;
    this.prefix = prefix;
    this.apiKey = apiKey;
    this.jwtSecret = jwtSecret;
    this.cwd = cwd;
    this.env = env;
    this.proc = null;
    this.output = '';
  }

  /** The host application's root (the same as httpUrl without a prefix). */
  get origin() {
    return `http://127.0.0.1:${this.port}`;
  }

  get httpUrl() {
    return `${this.origin}${this.prefix}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}${this.prefix}`;
  }

  async start(timeout = 20000) {
    if (!fs.existsSync(this.command)) {
      throw new Error(`server executable not found: ${this.command} (install the project into .venv first)`);
    }
    const proc = spawn(this.command, this.argsFor(this.port), {
      cwd: this.cwd,
      env: { ...process.env, PYTHONUNBUFFERED: '1', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    running.add(proc);
    proc.once('exit', () => running.delete(proc));
    const keep = (d) => {
      this.output = (this.output + d.toString()).slice(-20000);
    };
    proc.stdout.on('data', keep);
    proc.stderr.on('data', keep);
    let exited = null;
    proc.once('exit', (code, signal) => {
      exited = { code, signal };
    });
    await until(
      async () => {
        if (exited) {
          throw new Error(`server exited early (${JSON.stringify(exited)}):\n${this.output}`);
        }
        try {
          const res = await fetch(`${this.httpUrl}/health`, { signal: AbortSignal.timeout(1000) });
          await res.arrayBuffer();
          return res.status === 200;
        } catch {
          return false;
        }
      },
      { timeout, interval: 50, what: `GET /health on port ${this.port}\n${this.output}` },
    );
    return this;
  }

  async kill(signal = 'SIGKILL') {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const gone = new Promise((r) => proc.once('exit', r));
    proc.kill(signal);
    await withTimeout(gone, 10000, 'the server process to exit').catch(() => proc.kill('SIGKILL'));
  }

  /** Call the HTTP API with the server's API key. */
  async api(method, pathname, body) {
    const res = await fetch(this.httpUrl + pathname, {
      method,
      headers: { Authorization: `Bearer ${this.apiKey}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    if (!res.ok) throw new Error(`${method} ${pathname} → ${res.status} ${text}`);
    return json;
  }

  publish(channel, event, data) {
    return this.api('POST', '/api/publish', { channel, event, data });
  }
}

/** `realtime serve` with the memory broker, a random port, API key and JWT secret. */
export async function startRealtimeServer({ staticDir = null, extraArgs = [], port = null } = {}) {
  const apiKey = randomKey('key');
  const jwtSecret = randomKey('secret');
  const server = new ServerProcess({
    command: realtimeBin(),
    port: port ?? (await freePort()),
    apiKey,
    jwtSecret,
    args: (p) => [
      'serve',
      '--host',
      '127.0.0.1',
      '--port',
      String(p),
      '--api-key',
      apiKey,
      '--jwt-secret',
      jwtSecret,
      ...(staticDir ? ['--static-dir', staticDir] : []),
      ...extraArgs,
    ],
  });
  return server.start();
}

/** examples/chat/server.py on a random port. */
export async function startChatServer({ port = null } = {}) {
  const apiKey = randomKey('key');
  const server = new ServerProcess({
    command: pythonBin(),
    port: port ?? (await freePort()),
    apiKey,
    args: (p) => [path.join(ROOT, 'examples', 'chat', 'server.py'), '--port', String(p), '--api-key', apiKey],
  });
  return server.start();
}

/** examples/fastapi_app under uvicorn on a random port: the server mounted under /rt. */
export async function startFastApiExample({ port = null } = {}) {
  const server = new ServerProcess({
    command: pythonBin(),
    port: port ?? (await freePort()),
    prefix: '/rt',
    args: (p) => [
      '-m',
      'uvicorn',
      'app:app',
      '--app-dir',
      path.join(ROOT, 'examples', 'fastapi_app'),
      '--host',
      '127.0.0.1',
      '--port',
      String(p),
      '--log-level',
      'warning',
    ],
    env: { PYTHONDONTWRITEBYTECODE: '1' },
  });
  return server.start();
}

/**
 * A TCP proxy in front of the server. Options (changeable at any time):
 * refusePaths: request paths (e.g. ['/ws']) whose connections get 503 and are
 * closed; down: refuse every new connection; stalled: keep connections open but
 * forward nothing (a dead network path). cut() closes every open
 * connection (the client sees its connection drop).
 */
export class TcpProxy {
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.refusePaths = [];
    this.down = false;
    this.stalled = false;
    this.sockets = new Set();
    this.refused = [];
    this.server = net.createServer((client) => this._onConnection(client));
  }

  async listen() {
    await new Promise((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = this.server.address().port;
    return this;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.port}`;
  }

  _onConnection(client) {
    if (this.down) {
      client.destroy();
      return;
    }
    this.sockets.add(client);
    client.on('close', () => this.sockets.delete(client));
    client.on('error', () => {});
    client.once('data', (first) => {
      const line = first.toString('latin1').split('\r\n', 1)[0];
      const target = line.split(' ')[1] || '';
      const p = target.split('?')[0];
      if (this.refusePaths.includes(p)) {
        this.refused.push(p);
        client.end('HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n');
        return;
      }
      const upstream = net.connect(this.targetPort, '127.0.0.1');
      this.sockets.add(upstream);
      upstream.on('close', () => {
        this.sockets.delete(upstream);
        client.destroy();
      });
      upstream.on('error', () => client.destroy());
      client.on('close', () => upstream.destroy());
      if (!this.stalled) upstream.write(first);
      // Forward chunk by chunk so that `stalled` can swallow traffic both ways.
      client.on('data', (d) => {
        if (!this.stalled) upstream.write(d);
      });
      upstream.on('data', (d) => {
        if (!this.stalled) client.write(d);
      });
    });
  }

  /** Close every open connection through the proxy. */
  cut() {
    for (const s of this.sockets) s.destroy();
    this.sockets.clear();
  }

  async close() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
