// The chaos proxy itself: forwards, cuts, blackholes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, connect } from 'node:net';
import { ChaosProxy, seededRandom } from './lib/chaos-proxy.mjs';

async function echoServer() {
  const server = createServer((s) => s.pipe(s));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return server;
}

function roundTrip(port, text, timeoutMs = 500) {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(text));
    const timer = setTimeout(() => { socket.destroy(); resolve({ data: null, closed: false }); }, timeoutMs);
    socket.on('data', (d) => { clearTimeout(timer); socket.destroy(); resolve({ data: d.toString(), closed: false }); });
    socket.on('close', () => { clearTimeout(timer); resolve({ data: null, closed: true }); });
    socket.on('error', () => {});
  });
}

test('forwards, blackholes and cuts connections', async () => {
  const echo = await echoServer();
  const proxy = await ChaosProxy.start(echo.address().port);
  try {
    assert.equal((await roundTrip(proxy.port, 'ping')).data, 'ping');
    proxy.setBlackhole(true);
    assert.deepEqual(await roundTrip(proxy.port, 'lost'), { data: null, closed: false });
    proxy.setBlackhole(false);
    const socket = connect(proxy.port, '127.0.0.1');
    await new Promise((r) => socket.once('connect', r));
    await new Promise((r) => setTimeout(r, 50));
    const closed = new Promise((r) => socket.once('close', r));
    socket.on('error', () => {});
    proxy.cutAll();
    await closed;
    assert.equal(proxy.cuts, 1);
  } finally {
    await proxy.close();
    echo.close();
  }
});

test('the flapping schedule is replayable from its seed', () => {
  const a = seededRandom(42);
  const b = seededRandom(42);
  const first = Array.from({ length: 5 }, a);
  assert.deepEqual(first, Array.from({ length: 5 }, b));
  assert.ok(first.every((x) => x >= 0 && x < 1));
});
