// Peer: Node `ws` broadcasting. A connection that sends {"type":"subscribe",...} joins
// the subscriber set and gets {"type":"subscribed"}; every {"type":"publish",...} text
// message is sent as is to every subscriber (the `ws` README's broadcast loop).
// Usage: node ws_peer.js PORT
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2]);
const subscribers = new Set();
const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, backlog: 4096 });

wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => {
    const text = isBinary ? data.toString() : data.toString();
    if (text.startsWith('{"type":"publish"')) {
      for (const client of subscribers) client.send(text, { binary: false });
    } else if (text.startsWith('{"type":"subscribe"')) {
      subscribers.add(ws);
      ws.send('{"type":"subscribed"}');
    }
  });
  ws.on('close', () => subscribers.delete(ws));
  ws.on('error', () => subscribers.delete(ws));
});
wss.on('listening', () => console.log('ready'));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
