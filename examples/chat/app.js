// The example chat. Messages, typing indicators (`typing`) and read receipts
// (`read`, data {position: message id}) are client events on
// `private-room.NAME`; who is online is `presence-room.NAME`. The server
// coalesces `typing` and keeps each user's read position.
// Authors come from `message.user_id`, which the server sets: `data` is
// whatever the sender wrote and is never trusted for identity.
import { RealtimeClient } from '/realtime.js';

const DEFAULT_ROOMS = ['general', 'random', 'dev'];
const MAX_MESSAGES = 500; // per room, in memory
const HISTORY = 50; // recent messages asked for on joining, when the server keeps history
const TYPING_EVERY = 2000; // ms between our `typing` events while typing
const TYPING_SHOWN = 4000; // ms a `typing` event keeps someone "typing"
const GROUP_WINDOW = 5 * 60 * 1000; // consecutive messages of one author within this share a header

const $ = (id) => document.getElementById(id);
const el = {
  login: $('login'),
  loginForm: $('login-form'),
  nameInput: $('name-input'),
  loginError: $('login-error'),
  app: $('app'),
  connection: $('connection'),
  connectionLabel: $('connection-label'),
  connectionTransport: $('connection-transport'),
  retry: $('retry-button'),
  roomList: $('room-list'),
  newRoomForm: $('new-room-form'),
  newRoomInput: $('new-room-input'),
  meAvatar: $('me-avatar'),
  meName: $('me-name'),
  logout: $('logout-button'),
  roomTitle: $('room-title'),
  roomMeta: $('room-meta'),
  messages: $('messages'),
  typing: $('typing'),
  composer: $('composer'),
  input: $('composer-input'),
  offlineHint: $('offline-hint'),
  memberList: $('member-list'),
  memberCount: $('member-count'),
  memberBadge: $('member-badge'),
  toggleRooms: $('toggle-rooms'),
  toggleMembers: $('toggle-members'),
  backdrop: $('backdrop'),
  toasts: $('toasts'),
};

const STATE_LABELS = {
  connecting: 'Connecting…',
  connected: 'Connected',
  reconnecting: 'Reconnecting…',
  disconnected: 'Offline',
  failed: 'Connection failed',
};

/** @type {{name: string|null, key: string|null, client: RealtimeClient|null, rooms: Map<string, any>, current: any, presence: any}} */
const app = { name: null, key: null, client: null, rooms: new Map(), current: null, presence: null };

// ---------------------------------------------------------------------------
// helpers

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svgIcon(d) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', d);
  svg.append(path);
  return svg;
}

function randomId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

function hue(text) {
  let x = 0;
  for (const ch of text) x = (x * 31 + ch.codePointAt(0)) >>> 0;
  return x % 360;
}

function initials(name) {
  const parts = name.trim().split(/\s+/).filter(Boolean);
  const letters = parts.length > 1 ? [parts[0], parts[parts.length - 1]] : [name.trim()];
  return letters
    .map((p) => [...p][0] ?? '?')
    .join('')
    .slice(0, 2)
    .toUpperCase();
}

function avatar(name, extraClass = '') {
  return h('span', {
    class: `avatar ${extraClass}`.trim(),
    style: `--hue:${hue(name)}`,
    text: initials(name),
    'aria-hidden': 'true',
  });
}

function setAvatar(node, name) {
  node.textContent = initials(name);
  node.style.setProperty('--hue', hue(name));
}

function formatTime(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function listNames(names) {
  if (names.length <= 1) return names.join('');
  if (names.length === 2) return `${names[0]} and ${names[1]}`;
  if (names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]}`;
  return `${names[0]}, ${names[1]} and ${names.length - 2} others`;
}

function validName(name) {
  const n = name.trim();
  // eslint-disable-next-line no-control-regex
  return n.length >= 1 && n.length <= 32 && !/[\u0000-\u001f\u007f]/.test(n);
}

function normalizeRoom(name) {
  return name
    .trim()
    .toLowerCase()
    .replace(/\s+/g, '-')
    .replace(/[^a-z0-9_-]/g, '')
    .slice(0, 32);
}

function toast(text, kind = 'error') {
  const node = h('div', { class: `toast ${kind}`, role: 'status', text });
  el.toasts.append(node);
  setTimeout(() => node.classList.add('leaving'), 4500);
  setTimeout(() => node.remove(), 5000);
}

function connected() {
  return app.client?.state === 'connected';
}

function pageVisible() {
  return document.visibilityState === 'visible';
}

function displayName(userId) {
  const m = app.presence?.member(userId);
  return (m?.info && typeof m.info.name === 'string' && m.info.name) || userId;
}

// ---------------------------------------------------------------------------
// rooms

function storedRooms() {
  try {
    const list = JSON.parse(localStorage.getItem('chat.rooms') || '[]');
    return Array.isArray(list) ? list.map(normalizeRoom).filter(Boolean) : [];
  } catch {
    return [];
  }
}

function saveRooms() {
  const custom = [...app.rooms.keys()].filter((r) => !DEFAULT_ROOMS.includes(r));
  try {
    localStorage.setItem('chat.rooms', JSON.stringify(custom));
  } catch {
    /* private mode */
  }
}

function addRoom(name) {
  if (app.rooms.has(name)) return app.rooms.get(name);
  const channel = app.client.subscribe(`private-room.${name}`, { history: HISTORY });
  const room = {
    name,
    channel,
    messages: [],
    keys: new Set(),
    readBy: new Map(), // user id → key of the last message they saw
    typing: new Map(), // user id → timer
    unread: 0,
    lastReadSent: null,
    lastTypingSent: 0,
  };
  app.rooms.set(name, room);
  channel.on('message.sent', (data, message) => onChatMessage(room, data, message));
  channel.on('typing', (data, message) => onTyping(room, data, message));
  channel.on('read', (data, message) => onRead(room, data, message));
  channel.on('subscription.succeeded', () => {
    // The client flushed this channel's queued events just before this.
    let changed = false;
    for (const m of room.messages) {
      if (m.pending) {
        m.pending = false;
        changed = true;
      }
    }
    if (changed && room === app.current) renderMessages();
  });
  channel.on('subscription.error', (err) => toast(`Cannot join #${name}: ${err.message || 'refused'} (${err.code})`));
  renderRooms();
  saveRooms();
  return room;
}

function selectRoom(name) {
  const room = app.rooms.get(name) ?? addRoom(name);
  if (app.current === room) return;
  app.current = room;
  room.unread = 0;
  if (location.hash !== `#${name}`) history.replaceState(null, '', `#${name}`);
  try {
    sessionStorage.setItem('chat.room', name);
  } catch {
    /* ignore */
  }

  // Presence is per room: we are "online" in the room we look at.
  if (app.presence) app.client.unsubscribe(app.presence.name);
  const presence = app.client.subscribe(`presence-room.${name}`);
  app.presence = presence;
  const refresh = () => {
    if (app.presence === presence) {
      renderMembers();
      renderTyping();
    }
  };
  presence.on('presence.sync', refresh);
  presence.on('user.joined', refresh);
  presence.on('user.left', (member) => {
    if (member) clearTyping(room, member.user_id);
    refresh();
  });

  el.roomTitle.textContent = name;
  el.input.placeholder = `Message #${name}`;
  document.title = `#${name} · realtime chat`;
  renderRooms();
  renderMessages();
  renderMembers();
  renderTyping();
  closeDrawers();
  sendRead(room);
}

// ---------------------------------------------------------------------------
// incoming events

function onChatMessage(room, data, message) {
  const userId = message.user_id ?? null;
  const system = userId === null; // published by a backend through the HTTP API
  const own = !system && userId === app.client.userId; // ours, back from history or recovery
  const text =
    data && typeof data === 'object' && typeof data.text === 'string'
      ? data.text
      : typeof data === 'string'
        ? data
        : JSON.stringify(data);
  const clientId = !system && data && typeof data.id === 'string' && data.id.length <= 64 ? data.id : null;
  const key = clientId ?? message.id ?? randomId();
  if (room.keys.has(key)) return; // delivered twice (at-least-once), or our own
  clearTyping(room, userId);
  addMessage(room, {
    key,
    userId,
    system,
    own,
    text: String(text ?? ''),
    ts: message.timestamp ?? Date.now(),
    pending: false,
  });
}

function onTyping(room, data, message) {
  const userId = message.user_id;
  if (!userId || userId === app.client.userId) return;
  clearTyping(room, userId);
  if (!(data && data.typing === false)) {
    room.typing.set(
      userId,
      setTimeout(() => {
        room.typing.delete(userId);
        if (room === app.current) renderTyping();
      }, TYPING_SHOWN),
    );
  }
  if (room === app.current) renderTyping();
}

function clearTyping(room, userId) {
  const t = room.typing.get(userId);
  if (t === undefined) return;
  clearTimeout(t);
  room.typing.delete(userId);
  if (room === app.current) renderTyping();
}

function onRead(room, data, message) {
  const userId = message.user_id;
  const position = data && typeof data === 'object' ? data.position : undefined;
  if (!userId || userId === app.client.userId || typeof position !== 'string') return;
  room.readBy.set(userId, position);
  if (room === app.current) renderSeen();
}

// ---------------------------------------------------------------------------
// outgoing events

function addMessage(room, m) {
  room.messages.push(m);
  room.keys.add(m.key);
  if (room.messages.length > MAX_MESSAGES) {
    const old = room.messages.shift();
    room.keys.delete(old.key);
  }
  if (room === app.current) {
    appendMessage(m);
    if (!m.own) sendRead(room);
  } else if (!m.own) {
    room.unread++;
    renderRooms();
  }
}

function sendMessage() {
  const room = app.current;
  const text = el.input.value.trim();
  if (!room || !text) return;
  const id = randomId();
  const sent = room.channel.send('message.sent', { id, text });
  room.lastTypingSent = 0;
  el.input.value = '';
  autosize();
  addMessage(room, { key: id, userId: app.client.userId ?? app.name, system: false, own: true, text, ts: Date.now(), pending: !sent });
}

function sendTyping() {
  const room = app.current;
  if (!room || !connected() || !room.channel.subscribed) return; // never queue stale typing
  const now = Date.now();
  if (!el.input.value.trim() || now - room.lastTypingSent < TYPING_EVERY) return;
  room.lastTypingSent = now;
  room.channel.typing({ typing: true });
}

let readTimer = null;
function sendRead(room) {
  clearTimeout(readTimer);
  readTimer = setTimeout(() => {
    if (room !== app.current || !pageVisible() || !connected() || !room.channel.subscribed) return;
    const last = [...room.messages].reverse().find((m) => !m.own);
    if (!last || last.key === room.lastReadSent) return;
    room.lastReadSent = last.key;
    room.channel.read(last.key);
  }, 250);
}

// ---------------------------------------------------------------------------
// rendering

function renderConnection() {
  const c = app.client;
  const state = c ? c.state : 'disconnected';
  el.connection.dataset.state = state;
  el.connectionLabel.textContent = STATE_LABELS[state] ?? state;
  el.connectionTransport.textContent = state === 'connected' && c.transport ? c.transport : '';
  el.retry.hidden = state !== 'failed';
  el.offlineHint.hidden = state === 'connected' || state === 'connecting';
}

function renderRooms() {
  el.roomList.replaceChildren(
    ...[...app.rooms.values()].map((room) =>
      h(
        'li',
        {},
        h(
          'button',
          {
            type: 'button',
            class: `room${room === app.current ? ' active' : ''}`,
            'aria-current': room === app.current ? 'page' : null,
            dataset: { room: room.name },
            onclick: () => selectRoom(room.name),
          },
          h('span', { class: 'hash', text: '#' }),
          h('span', { class: 'room-name', text: room.name }),
          room.unread ? h('span', { class: 'unread', text: room.unread > 99 ? '99+' : String(room.unread) }) : null,
        ),
      ),
    ),
  );
}

function renderMembers() {
  const members = app.presence ? app.presence.members : [];
  const me = app.client?.userId;
  members.sort((a, b) => (a.user_id === me ? -1 : b.user_id === me ? 1 : String(a.user_id).localeCompare(String(b.user_id))));
  el.memberList.replaceChildren(
    ...members.map((m) => {
      const name = (m.info && typeof m.info.name === 'string' && m.info.name) || String(m.user_id);
      return h(
        'li',
        { class: 'member', dataset: { user: m.user_id } },
        h('span', { class: 'avatar-wrap' }, avatar(name), h('span', { class: 'presence-dot', 'aria-hidden': 'true' })),
        h('span', { class: 'member-name', text: name }),
        m.user_id === me ? h('span', { class: 'you', text: 'you' }) : null,
      );
    }),
  );
  el.memberCount.textContent = String(members.length);
  el.memberBadge.textContent = String(members.length);
  el.roomMeta.textContent = members.length ? `${members.length} online` : '';
}

function renderTyping() {
  const room = app.current;
  const names = room ? [...room.typing.keys()].map(displayName) : [];
  if (!names.length) {
    el.typing.textContent = '';
    el.typing.classList.remove('active');
    return;
  }
  el.typing.replaceChildren(
    h('span', { class: 'dots', 'aria-hidden': 'true' }, h('i'), h('i'), h('i')),
    h('span', { text: `${listNames(names)} ${names.length === 1 ? 'is' : 'are'} typing…` }),
  );
  el.typing.classList.add('active');
}

function messageNode(m, previous) {
  if (m.system) {
    return h(
      'div',
      { class: 'message system', dataset: { key: m.key } },
      h('span', { class: 'system-label', text: 'server' }),
      h('span', { class: 'text', text: m.text }),
      h('time', { datetime: new Date(m.ts).toISOString(), text: formatTime(m.ts) }),
    );
  }
  const grouped = previous && !previous.system && previous.userId === m.userId && m.ts - previous.ts < GROUP_WINDOW;
  const name = m.own ? app.name : displayName(m.userId);
  return h(
    'div',
    {
      class: `message${m.own ? ' own' : ''}${grouped ? ' grouped' : ''}${m.pending ? ' pending' : ''}`,
      dataset: { key: m.key, user: m.userId },
    },
    grouped ? h('span', { class: 'avatar-spacer' }) : avatar(name),
    h(
      'div',
      { class: 'body' },
      grouped
        ? null
        : h(
            'div',
            { class: 'meta' },
            h('span', { class: 'author', text: m.own ? 'You' : name }),
            h('time', { datetime: new Date(m.ts).toISOString(), text: formatTime(m.ts) }),
          ),
      h('div', { class: 'bubble' }, h('span', { class: 'text', text: m.text }), m.pending ? h('span', { class: 'pending-mark', title: 'waiting for the connection', text: '◷' }) : null),
    ),
  );
}

function nearBottom() {
  const box = el.messages;
  return box.scrollHeight - box.scrollTop - box.clientHeight < 120;
}

function scrollToBottom() {
  el.messages.scrollTop = el.messages.scrollHeight;
}

function emptyState() {
  const name = app.current?.name ?? '';
  return h(
    'div',
    { class: 'empty' },
    h('div', { class: 'empty-icon', 'aria-hidden': 'true', text: '#' }),
    h('p', { class: 'empty-title', text: `Welcome to #${name}` }),
    h('p', { class: 'muted', text: 'This is the start of the room. Say hello: everyone here sees it at once.' }),
  );
}

function renderMessages() {
  const room = app.current;
  if (!room) return;
  el.messages.replaceChildren();
  if (!room.messages.length) el.messages.append(emptyState());
  let previous = null;
  for (const m of room.messages) {
    el.messages.append(messageNode(m, previous));
    previous = m;
  }
  renderSeen();
  scrollToBottom();
}

function appendMessage(m) {
  const stick = nearBottom() || m.own;
  const room = app.current;
  el.messages.querySelector('.empty')?.remove();
  const i = room.messages.indexOf(m);
  el.messages.append(messageNode(m, i > 0 ? room.messages[i - 1] : null));
  while (el.messages.querySelectorAll('.message').length > MAX_MESSAGES) el.messages.querySelector('.message').remove();
  renderSeen();
  if (stick) scrollToBottom();
}

function renderSeen() {
  el.messages.querySelector('.seen')?.remove();
  const room = app.current;
  const last = room?.messages[room.messages.length - 1];
  if (!last) return;
  const me = app.client?.userId;
  const readers = [...room.readBy]
    .filter(([user, key]) => key === last.key && user !== me && user !== last.userId)
    .map(([user]) => displayName(user));
  if (!readers.length) return;
  const stick = nearBottom();
  el.messages.append(
    h(
      'div',
      { class: `seen${last.own ? ' own' : ''}${last.system ? ' system' : ''}` },
      svgIcon('M2 12.5l4.5 4.5L15 8.5M9 15l2 2 10-10'),
      h('span', { text: `Seen by ${listNames(readers)}` }),
    ),
  );
  if (stick) scrollToBottom();
}

function autosize() {
  el.input.style.height = 'auto';
  el.input.style.height = `${Math.min(el.input.scrollHeight, 160)}px`;
}

function closeDrawers() {
  el.app.classList.remove('show-rooms', 'show-members');
  el.backdrop.hidden = true;
}

function toggleDrawer(which) {
  const cls = `show-${which}`;
  const open = !el.app.classList.contains(cls);
  closeDrawers();
  if (open) {
    el.app.classList.add(cls);
    el.backdrop.hidden = false;
  }
}

// ---------------------------------------------------------------------------
// start and stop

/** A random key kept by this browser: the same person in two tabs is one user. */
function browserKey() {
  try {
    let key = localStorage.getItem('chat.key');
    if (!key) {
      key = randomId();
      localStorage.setItem('chat.key', key);
    }
    return key;
  } catch {
    app.key ??= randomId(); // private mode: this page only
    return app.key;
  }
}

function start(name) {
  app.name = name;
  try {
    localStorage.setItem('chat.name', name);
    sessionStorage.setItem('chat.name', name);
  } catch {
    /* ignore */
  }
  const params = new URLSearchParams(location.search);
  const transports = (params.get('transports') || '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  // The token is read again on every reconnect; here it is the name and this
  // browser's key, which the server uses to keep a name to one person at a time.
  const client = new RealtimeClient(location.origin, {
    auth: { token: () => JSON.stringify({ name: app.name, key: browserKey() }) },
    ...(transports.length ? { transports } : {}),
  });
  app.client = client;
  window.realtime = client; // handy in the devtools console
  client.on('state', (state, previous, info) => {
    // Refused: someone else is online with this name (it is free again once they leave).
    if (app.client !== client || !(info?.code === 4001 || info?.status === 401)) return;
    setTimeout(() => {
      // after the client has armed its retry, which stop() cancels
      if (app.client !== client) return;
      stop();
      el.loginError.textContent = `The name “${name}” is in use by someone online. Pick another one.`;
    }, 0);
  });
  client.on('state', renderConnection);
  client.on('state', (state) => {
    if (state === 'connected' && app.current) sendRead(app.current);
  });

  el.meName.textContent = name;
  setAvatar(el.meAvatar, name);
  el.login.hidden = true;
  el.app.hidden = false;
  renderConnection();

  for (const room of [...DEFAULT_ROOMS, ...storedRooms()]) addRoom(room);
  const wanted = normalizeRoom(decodeURIComponent(location.hash.slice(1))) || sessionStorage.getItem('chat.room') || 'general';
  selectRoom(normalizeRoom(wanted) || 'general');
  el.input.focus();
}

function stop() {
  if (app.client) app.client.disconnect();
  for (const room of app.rooms.values()) for (const t of room.typing.values()) clearTimeout(t);
  app.client = null;
  app.rooms.clear();
  app.current = null;
  app.presence = null;
  try {
    sessionStorage.removeItem('chat.name');
  } catch {
    /* ignore */
  }
  el.app.hidden = true;
  el.login.hidden = false;
  el.nameInput.focus();
}

// ---------------------------------------------------------------------------
// wiring

el.loginForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = el.nameInput.value.trim();
  if (!validName(name)) {
    el.loginError.textContent = 'A name is 1 to 32 characters.';
    return;
  }
  el.loginError.textContent = '';
  start(name);
});

el.composer.addEventListener('submit', (ev) => {
  ev.preventDefault();
  sendMessage();
});

el.input.addEventListener('keydown', (ev) => {
  if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
    ev.preventDefault();
    sendMessage();
  }
});

el.input.addEventListener('input', () => {
  autosize();
  sendTyping();
});

el.newRoomForm.addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = normalizeRoom(el.newRoomInput.value);
  if (!name) {
    toast('Room names use letters, digits, - and _.');
    return;
  }
  el.newRoomInput.value = '';
  selectRoom(name);
});

el.retry.addEventListener('click', () => app.client?.connect());
el.logout.addEventListener('click', stop);
el.toggleRooms.addEventListener('click', () => toggleDrawer('rooms'));
el.toggleMembers.addEventListener('click', () => toggleDrawer('members'));
el.backdrop.addEventListener('click', closeDrawers);

window.addEventListener('hashchange', () => {
  const name = normalizeRoom(decodeURIComponent(location.hash.slice(1)));
  if (app.client && name) selectRoom(name);
});

document.addEventListener('visibilitychange', () => {
  if (pageVisible() && app.current) sendRead(app.current);
});

// Leave at once when the page goes away (matters for long-polling, whose
// connection would otherwise linger until the server's poll session timeout).
window.addEventListener('pagehide', () => app.client?.disconnect());

{
  let saved = null;
  try {
    saved = sessionStorage.getItem('chat.name');
    el.nameInput.value = saved || localStorage.getItem('chat.name') || '';
  } catch {
    /* ignore */
  }
  if (saved && validName(saved)) start(saved);
}
