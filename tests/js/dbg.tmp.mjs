import { chromium } from 'playwright-core';
import WebSocket from 'ws';
import { RealtimeClient } from '../../clients/js/realtime.js';
import { startChatServer, waitEvent } from './helpers.mjs';
const server = await startChatServer();
const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: ['--no-sandbox', '--disable-gpu'] });
async function join(name, q = '') {
  const ctx = await browser.newContext(); const page = await ctx.newPage();
  page.on('console', (m) => console.log(name, 'console:', m.text()));
  page.on('pageerror', (m) => console.log(name, 'pageerror:', m));
  await page.goto(`${server.httpUrl}/${q}#general`); await page.fill('#name-input', name); await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#connection[data-state="connected"]');
  return page;
}
const alice = await join('alice'); const bob = await join('bob', '?transports=polling');
const carol = new RealtimeClient(server.wsUrl, { WebSocket, auth: { token: 'carol' } });
const cr = carol.subscribe('private-room.general'); await waitEvent(cr, 'subscription.succeeded');
cr.send('message.sent', { id: 'carol-1', text: 'one' });
await new Promise((r) => setTimeout(r, 3000));
carol.disconnect(); await browser.close(); await server.kill();
