// Peer: Node socket.io 4 with rooms, WebSocket transport only. `subscribe` joins the
// room and answers `subscribed`; `publish` emits `msg` with the data to the room.
// Usage: node socketio_peer.js PORT
'use strict';
const http = require('http');
const { Server } = require('socket.io');

const port = Number(process.argv[2]);
const httpServer = http.createServer();
const io = new Server(httpServer, {
  transports: ['websocket'],
  perMessageDeflate: false,
  httpCompression: false,
  pingInterval: 600000,
  pingTimeout: 600000,
  serveClient: false,
});
io.on('connection', (socket) => {
  socket.on('subscribe', (room) => {
    socket.join(room);
    socket.emit('subscribed', room);
  });
  socket.on('publish', (data) => {
    io.to('bench').emit('msg', data);
  });
});
httpServer.listen({ host: '127.0.0.1', port, backlog: 4096 }, () => console.log('ready'));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
