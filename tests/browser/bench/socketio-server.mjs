// The Socket.IO 4 side of the browser benchmarks: a chat relay configured at
// its best for reliability and speed (see docs/BENCHMARKS.md):
// - WebSocket transport only (no long-polling upgrade dance), no compression;
// - connectionStateRecovery, so a client that comes back within
//   maxDisconnectionDuration gets the packets it missed replayed;
// - `send` is acknowledged after the message is appended to the in-memory log
//   and broadcast to the room (Socket.IO has no storage of its own).
// Usage: node socketio-server.mjs <port>   (prints "ready <port>" when listening)
import { createServer } from 'node:http';
import { Server } from 'socket.io';

const port = Number(process.argv[2] || 0);
const http = createServer((req, res) => {
  // A blank same-origin page the benchmark loads the client into.
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end('<!doctype html><title>socket.io bench</title><script src="/socket.io/socket.io.min.js"></script>');
});
const io = new Server(http, {
  transports: ['websocket'],
  perMessageDeflate: false,
  serveClient: true,
  connectionStateRecovery: { maxDisconnectionDuration: 10 * 60 * 1000, skipMiddlewares: true },
});

const log = [];
io.on('connection', (socket) => {
  const room = String(socket.handshake.auth?.room ?? 'room');
  if (!socket.recovered) socket.join(room);
  socket.on('send', (body, ack) => {
    const seq = log.push(body);
    socket.to(room).emit('msg', seq, body);
    if (typeof ack === 'function') ack({ seq, at: Date.now() });
  });
});
http.listen(port, '127.0.0.1', () => console.log(`ready ${http.address().port}`));
