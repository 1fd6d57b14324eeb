// Browser benchmarks (issue 7, figures 3 and 4), Ackline against Socket.IO 4,
// both with their clients in the same headless Chromium on the same machine:
//   3. browser to browser: one sender page, one receiver page, N messages:
//      throughput until the receiver has them all, and (Ackline) until the
//      sender has seen every one `delivered`; p50/p99 send->surfaced at 100 msg/s;
//   4. catch-up: the receiver page offline while M messages are sent, then back
//      online: time until all are surfaced (Ackline: stored in IndexedDB first).
//   5. window-1 round trip: send, wait for the server's confirmation, send the next;
//   6. (Ackline) time to first render: the demo page loaded over 10,000 stored
//      messages, until it shows the latest 50;
//   7. the raw IndexedDB ceiling of this browser (batched strict-durability puts),
//      IndexedDB records written per message at each end, and the edge's CPU time.
// Not part of the tests. Usage:
//   node tests/browser/bench/run.mjs [--runs 3] [--quick] [--out target/bench/browser.json]
//     [--stack ackline|socket.io] [--only throughput|latency|rtt|catchup|render|ceiling]
//     [--window 100] [--profile] [--debug]
import { spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Edge, freePort, freshStorage, repoRoot } from '../lib/edge.mjs';
import { launchBrowser } from '../lib/browser.mjs';

const args = process.argv.slice(2);
const opt = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : fallback;
};
const quick = args.includes('--quick');
const RUNS = Number(opt('--runs', quick ? 1 : 3));
const OUT = opt('--out', join(repoRoot, 'target', 'bench', 'browser.json'));
const N_THROUGHPUT = quick ? 2_000 : 10_000;
const N_LATENCY = quick ? 300 : 1_000;
const N_CATCHUP = quick ? 5_000 : 20_000;
const N_RTT = quick ? 300 : 1_000;
const N_RENDER = quick ? 2_000 : 10_000;
const LATENCY_RATE = 100; // msg/s
const WARMUP = 100; // messages at LATENCY_RATE before latencies count
// For profiling: --only throughput|latency|catchup runs one kind of figure,
// --stack ackline|socket.io one stack, --profile saves CPU profiles of the pages.
const ONLY = opt('--only', null);
const STACK = opt('--stack', null);
const PROFILE = args.includes('--profile');
const DEBUG = args.includes('--debug');
const TIMEOUT = 10 * 60_000;
// The sender keeps at most this many sends unconfirmed by the server (an app-level
// window: the next send starts when one resolves); 0 sends everything at once.
const WINDOW = Number(opt('--window', 100));

const say = (...a) => console.error(`[${new Date().toISOString().slice(11, 19)}]`, ...a);

// ---------------------------------------------------------------- page code
// Installed into every page; `window.B` is the page's side of the benchmark.
// Timestamps are performance.timeOrigin + performance.now(): the same clock in
// every page of the browser, with sub-millisecond resolution.
function installPageHarness({ debug }) {
  const now = () => performance.timeOrigin + performance.now();
  const B = {
    now,
    count: 0,
    target: Infinity,
    doneAt: 0,
    latencies: [],
    delivered: 0,
    sentOk: 0,
    failures: [],
    state: 'connecting',
    expect(target) {
      this.count = 0;
      this.target = target;
      this.doneAt = 0;
      this.firstAt = 0;
      this.latencies = [];
    },
    // Called for every message surfaced to the app, once each.
    surfaced(body) {
      const t = now();
      this.count += 1;
      const stamp = Number(body.split(' ')[1]);
      if (body.startsWith('lat ')) this.latencies.push(t - stamp);
      if (this.count === 1) this.firstAt = t;
      if (this.count === this.target) this.doneAt = t;
    },
  };

  // IndexedDB records written by this page (puts, adds, deletes per object
  // store) and read-write transactions, counted by wrapping the prototypes
  // before the client loads: writes per message, whatever the client does inside.
  B.idb = { records: 0, transactions: 0, byStore: {} };
  for (const op of ['put', 'add', 'delete']) {
    const orig = IDBObjectStore.prototype[op];
    IDBObjectStore.prototype[op] = function (...a) {
      B.idb.records += 1;
      const key = `${this.name}.${op}`;
      B.idb.byStore[key] = (B.idb.byStore[key] || 0) + 1;
      return orig.apply(this, a);
    };
  }
  const origTx = IDBDatabase.prototype.transaction;
  IDBDatabase.prototype.transaction = function (names, mode, ...rest) {
    if (mode === 'readwrite') B.idb.transactions += 1;
    return origTx.call(this, names, mode, ...rest);
  };
  B.resetIdb = () => { B.idb = { records: 0, transactions: 0, byStore: {} }; };

  B.openAckline = async ({ user, device, conversation, dbName }) => {
    const mod = await import('/pkg/ackline.js');
    await mod.default();
    const res = await fetch('/v1/dev/token', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user, device, conversations: [conversation] }),
    });
    const { token } = await res.json();
    B.client = await mod.Ackline.open({ url: location.origin, token, dbName });
    B.client.on('status', (s) => { B.state = s.state; });
    B.client.on('error', (e) => B.failures.push(`${e.code}: ${e.message}`));
    B.room = await B.client.conversation(conversation);
    B.room.on('message', (m) => { if (!m.mine) B.surfaced(m.body); });
    B.pendingAt = new Map();
    B.room.on('update', (u) => {
      if (debug && u.status === 'pending') B.pendingAt.set(u.id, now());
      if (u.status === 'delivered') B.delivered += 1;
      if (u.status === 'failed') B.failures.push(`${u.id}: ${u.code}`);
    });
    // A send needs the connection's welcome; wait until the session is open.
    const t0 = now();
    while (B.state !== 'open') {
      if (now() - t0 > 30_000) throw new Error(`not open after 30 s: ${B.state}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    // With --debug, each send's times to `pending` (outbox durable) and `sent`.
    B.sentLat = [];
    B.pendingLat = [];
    const noteTimes = debug
      ? (t, r) => {
        B.pendingLat.push((B.pendingAt.get(r.id) ?? NaN) - t);
        B.lastSentAt = now();
        B.sentLat.push(B.lastSentAt - t);
      }
      : () => {};
    // Resolves once the edge stored the message (the send's promise).
    B.send = (body) => {
      const t = now();
      return B.room.send(body).then(
        (r) => { B.sentOk += 1; noteTimes(t, r); },
        (e) => B.failures.push(`${e.code}: ${e.message}`),
      );
    };
    B.setOnline = (online) => B.client.setOnline(online);
    B.isOnline = () => B.state === 'open';
  };

  B.openSocketIo = async ({ room, retries }) => {
    // eslint-disable-next-line no-undef
    const socket = io({
      transports: ['websocket'],
      auth: { room },
      ackTimeout: 10_000,
      retries: retries ? 3 : 0,
    });
    B.socket = socket;
    socket.on('msg', (_seq, body) => B.surfaced(body));
    socket.on('connect', () => { B.state = 'open'; B.recovered = socket.recovered; });
    socket.on('disconnect', () => { B.state = 'offline'; });
    const t0 = now();
    while (!socket.connected) {
      if (now() - t0 > 30_000) throw new Error('socket.io not connected after 30 s');
      await new Promise((r) => setTimeout(r, 20));
    }
    // With `retries`, the client queues packets and sends the next only once the
    // previous is acknowledged (that is how it keeps order); without, acks are
    // concurrent and a packet in flight during a disconnect is lost. Resolves
    // on the server's ack (the message is in the relay's log).
    B.send = (body) => new Promise((resolve) => {
      const done = (err) => { if (err) B.failures.push(String(err)); else B.sentOk += 1; resolve(); };
      if (retries) socket.emit('send', body, done);
      else socket.timeout(10_000).emit('send', body, done);
    });
    B.setOnline = (online) => {
      if (online) {
        socket.io.reconnection(true);
        socket.connect();
      } else {
        // An unexpected transport close (not socket.disconnect(), which
        // discards the session): the case connectionStateRecovery is for.
        socket.io.reconnection(false);
        socket.io.engine.close();
      }
    };
    B.isOnline = () => socket.connected;
  };

  // Sends `n` messages: paced at `rate` msg/s, or as fast as a window of
  // `window` unconfirmed sends allows (0: all at once).
  B.sendMany = async (n, prefix, rate, window = 0) => {
    B.sentOk = 0;
    B.delivered = 0;
    let inFlight = 0;
    let wake = null;
    const release = () => {
      inFlight -= 1;
      if (wake) { const w = wake; wake = null; w(); }
    };
    const t0 = now();
    for (let i = 0; i < n; i += 1) {
      if (rate) {
        const due = t0 + (i * 1000) / rate;
        const wait = due - now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      }
      while (window && !rate && inFlight >= window) await new Promise((r) => { wake = r; });
      inFlight += 1;
      B.send(`${prefix} ${now()} ${i}`).finally(release);
    }
    return t0;
  };

  // Window 1: each send waits for the previous one's confirmation. Returns the
  // send -> confirmed times in ms.
  B.roundTrips = async (n, prefix) => {
    const out = [];
    for (let i = 0; i < n; i += 1) {
      const t = now();
      await B.send(`${prefix} ${t} ${i}`);
      out.push(now() - t);
    }
    return out;
  };

  // The raw IndexedDB ceiling: puts of ~150-byte records into a fresh database,
  // one strict-durability transaction per batch, each awaited before the next.
  B.idbCeiling = async (batches) => {
    const name = `ceiling-${now()}`;
    const db = await new Promise((resolve, reject) => {
      const req = indexedDB.open(name, 1);
      req.onupgradeneeded = () => req.result.createObjectStore('r', { keyPath: ['c', 'k'] });
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    const out = {};
    let k = 0;
    for (const [batch, total] of batches) {
      const t0 = now();
      for (let done = 0; done < total; done += batch) {
        const tx = db.transaction('r', 'readwrite', { durability: 'strict' });
        const store = tx.objectStore('r');
        for (let j = 0; j < batch; j += 1) {
          k += 1;
          store.put({ c: 'bench', k, user: 'ceiling-user', device: 'ceiling-dev', id: `01JCEILING${k}`, body: 'x'.repeat(60), at: Date.now() });
        }
        await new Promise((resolve, reject) => { tx.oncomplete = resolve; tx.onabort = () => reject(tx.error); });
      }
      out[batch] = total / ((now() - t0) / 1000);
    }
    db.close();
    indexedDB.deleteDatabase(name);
    return out;
  };

  // Main-thread tasks over 50 ms (for --debug).
  B.longTasks = [];
  if (debug) {
    new PerformanceObserver((list) => {
      for (const e of list.getEntries()) B.longTasks.push([Math.round(e.startTime), Math.round(e.duration)]);
    }).observe({ type: 'longtask', buffered: true });
  }

  window.B = B;
}

// ---------------------------------------------------------------- drivers
async function openPage(browser, url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`pageerror: ${e.message}`));
  await page.goto(url);
  await page.evaluate(installPageHarness, { debug: DEBUG });
  return { context, page, logs };
}

async function waitFor(page, fn, arg, what) {
  try {
    await page.waitForFunction(fn, arg, { timeout: TIMEOUT, polling: 250 });
  } catch (e) {
    const state = await page.evaluate(() => ({ count: B.count, target: B.target, sentOk: B.sentOk, delivered: B.delivered, state: B.state, failures: B.failures.slice(0, 5) })).catch(() => ({}));
    throw new Error(`timed out waiting for ${what}: ${JSON.stringify(state)}`);
  }
}

class Stack {
  static async ackline(browser) {
    const edge = await Edge.start(freshStorage('bench-browser'), { vars: { ACKLINE_RATE_PER_SEC: '1000000' } });
    const stack = new Stack('ackline', browser, edge.url, edge, () => edge.kill());
    // workerd, in the process group `wrangler dev` was started in.
    stack.serverCpu = () => cpuSeconds((p) => p.pgrp === edge.child.pid && p.comm === 'workerd');
    return stack;
  }

  static async socketio(browser, retries) {
    const port = await freePort();
    const child = spawn(process.execPath, [join(repoRoot, 'tests', 'browser', 'bench', 'socketio-server.mjs'), String(port)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise((resolve, reject) => {
      child.stdout.on('data', (d) => { if (String(d).includes('ready')) resolve(); });
      child.once('exit', (code) => reject(new Error(`socket.io server exited with ${code}`)));
    });
    const name = retries ? 'socket.io (acks + retries)' : 'socket.io (acks, no retries)';
    const stack = new Stack(name, browser, `http://127.0.0.1:${port}`, null, () => child.kill('SIGKILL'));
    stack.retries = retries;
    stack.serverCpu = () => cpuSeconds((p) => p.pid === child.pid);
    return stack;
  }

  constructor(name, browser, url, edge, stop) {
    Object.assign(this, { name, browser, url, edge, stop, runs: 0 });
  }

  /** A fresh sender page and receiver page on a fresh conversation. */
  async pair({ receiverDb } = {}) {
    this.runs += 1;
    const conversation = `bench-${Date.now()}-${this.runs}`;
    const pages = [];
    for (const role of ['sender', 'receiver']) {
      const p = await openPage(this.browser, this.name === 'ackline' ? `${this.url}/healthz` : this.url);
      Object.assign(p, { user: `${role}-user`, device: `${role}-device`, conversation });
      if (this.name === 'ackline') {
        const dbName = role === 'receiver' && receiverDb ? receiverDb(p.user, p.device) : `bench-${conversation}-${role}`;
        await p.page.evaluate((o) => B.openAckline(o), { user: p.user, device: p.device, conversation, dbName });
      } else {
        await p.page.evaluate((o) => B.openSocketIo(o), { room: conversation, retries: this.retries });
      }
      pages.push(p);
    }
    return { sender: pages[0], receiver: pages[1], close: () => Promise.all(pages.map((p) => p.context.close())) };
  }
}

/**
 * Has the sender send `n` messages (all at once, or paced at `rate` msg/s) and
 * waits until the receiver surfaced them; returns when the first was sent.
 */
async function deliver({ sender, receiver }, n, prefix, rate = 0, window = 0) {
  await receiver.page.evaluate((n) => B.expect(n), n);
  const t0 = await sender.page.evaluate((o) => B.sendMany(o.n, o.prefix, o.rate, o.window), { n, prefix, rate, window });
  await waitFor(receiver.page, () => B.count >= B.target, null, `receiver to surface ${n} '${prefix}' messages`);
  return t0;
}

/** Latencies over 30 ms as "index:ms" (for --debug). */
function slowOnes(latencies) {
  return latencies.map((l, i) => (l > 30 ? `${i}:${l.toFixed(0)}` : null)).filter(Boolean).join(' ');
}

/**
 * CPU seconds (user + system) used so far by the processes `match` picks
 * from /proc (`{pid, comm, pgrp}`).
 */
function cpuSeconds(match) {
  let ticks = 0;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat;
    try { stat = readFileSync(`/proc/${name}/stat`, 'utf8'); } catch { continue; }
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(stat.indexOf('(') + 1, close);
    const f = stat.slice(close + 2).split(' ');
    // Fields after the comm: state ppid pgrp ... utime (14th of the line) stime (15th).
    if (match({ pid: Number(name), comm, pgrp: Number(f[2]) })) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks / 100; // USER_HZ
}

async function throughput(stack, n) {
  const { sender, receiver, close } = await stack.pair();
  try {
    const profiles = PROFILE ? await startProfiles({ sender, receiver }) : null;
    for (const p of [sender, receiver]) await p.page.evaluate(() => B.resetIdb());
    const cpu0 = stack.serverCpu();
    const t0 = await deliver({ sender, receiver }, n, 'tp', 0, WINDOW);
    if (profiles) await stopProfiles(profiles);
    const doneAt = await receiver.page.evaluate(() => B.doneAt);
    const out = { surfaced: n / ((doneAt - t0) / 1000) };
    if (DEBUG) out.allSentAfterMs = (await sender.page.evaluate(() => B.lastSentAt)) - t0;
    if (stack.name === 'ackline') {
      await waitFor(sender.page, (n) => B.delivered >= n, n, 'sender to see all delivered');
      const deliveredAt = await sender.page.evaluate(() => B.now());
      out.delivered = n / ((deliveredAt - t0) / 1000);
    }
    // After `delivered`: the sender's outbox clean-up is part of a message's cost.
    await new Promise((r) => setTimeout(r, 500));
    out.serverCpuPer10k = ((stack.serverCpu() - cpu0) * 10_000) / n;
    const idb = await Promise.all([sender, receiver].map((p) => p.page.evaluate(() => B.idb)));
    out.idbPerMessage = { sender: idb[0].records / n, receiver: idb[1].records / n };
    out.idbTransactions = { sender: idb[0].transactions, receiver: idb[1].transactions };
    if (DEBUG) say(`IndexedDB writes: sender ${JSON.stringify(idb[0])} receiver ${JSON.stringify(idb[1])}`);
    await assertClean(sender, receiver, n);
    return out;
  } finally {
    await close();
  }
}

async function latency(stack, n) {
  const { sender, receiver, close } = await stack.pair();
  try {
    // The first message of a fresh conversation pays for cold starts (the
    // Durable Object's first write, JIT warm-up): measured on its own, then a
    // warm-up of WARMUP messages at the same rate, then the steady state.
    await deliver({ sender, receiver }, 1, 'lat');
    const first = (await receiver.page.evaluate(() => B.latencies))[0];
    await deliver({ sender, receiver }, WARMUP, 'warm', LATENCY_RATE);
    const frames = [];
    if (DEBUG) {
      // The sender's WebSocket frames with their times, to tell a slow page from a slow server.
      const cdp = await sender.context.newCDPSession(sender.page);
      await cdp.send('Network.enable');
      const note = (dir) => (e) => frames.push([e.timestamp * 1000, dir, e.response.payloadData.slice(0, 60)]);
      cdp.on('Network.webSocketFrameSent', note('>'));
      cdp.on('Network.webSocketFrameReceived', note('<'));
    }
    await deliver({ sender, receiver }, n, 'lat', LATENCY_RATE);
    const raw = await receiver.page.evaluate(() => B.latencies);
    const lat = [...raw].sort((a, b) => a - b);
    if (DEBUG) {
      // Indices count every send of this pair: 1 first message, then the warm-up.
      const { sentRaw, pendingRaw, longTasks } = await sender.page.evaluate(() => ({ sentRaw: B.sentLat, pendingRaw: B.pendingLat, longTasks: B.longTasks }));
      const sl = [...sentRaw].sort((a, b) => a - b);
      say(`send->sent p50 ${quantile(sl, 0.5)} p90 ${quantile(sl, 0.9)} p99 ${quantile(sl, 0.99)}; send->surfaced p90 ${quantile(lat, 0.9)} max ${lat.at(-1)}`);
      say(`surfaced latencies over 30 ms at message index: ${slowOnes(raw)}`);
      say(`long tasks: sender ${JSON.stringify(longTasks)} receiver ${JSON.stringify(await receiver.page.evaluate(() => B.longTasks))}`);
      const t0 = frames[0]?.[0] ?? 0;
      for (const [t, dir, text] of frames.slice(0, 90)) say(`  ${(t - t0).toFixed(1).padStart(8)} ${dir} ${text}`);
      say(`send->pending (outbox durable) over 30 ms at message index: ${slowOnes(pendingRaw)}`);
      say(`send->sent over 30 ms at message index: ${slowOnes(sentRaw)}`);
    }
    await assertClean(sender, receiver, n);
    return { first, p50: quantile(lat, 0.5), p99: quantile(lat, 0.99) };
  } finally {
    await close();
  }
}

/** Window 1: send, wait for the server's confirmation, send the next. */
async function roundTrip(stack, n) {
  const { sender, receiver, close } = await stack.pair();
  try {
    await sender.page.evaluate(() => B.roundTrips(100, 'rtwarm'));
    const lat = (await sender.page.evaluate((n) => B.roundTrips(n, 'rt'), n)).sort((a, b) => a - b);
    return { p50: quantile(lat, 0.5), p99: quantile(lat, 0.99) };
  } finally {
    await close();
  }
}

/**
 * Time to first render (Ackline): a receiver stores `n` messages through the
 * client, closes, and the demo app (www/) is loaded on the same IndexedDB: the
 * time from navigation start until it shows the latest 50 messages.
 */
async function firstRender(stack, n) {
  const { sender, receiver, close } = await stack.pair({ receiverDb: (user, device) => `ackline-demo-${user}-${device}` });
  try {
    await deliver({ sender, receiver }, n, 'fr', 0, WINDOW);
    await receiver.page.evaluate(() => B.client.close());
    const { user, device, conversation } = receiver;
    await receiver.page.addInitScript((last) => {
      // Set when the newest message's row is in the list with 49 before it.
      const seen = () => {
        const rows = document.querySelectorAll('#messages > li');
        return rows.length >= 50 && [...rows].some((li) => li.textContent.includes(last));
      };
      new MutationObserver((_, obs) => {
        if (!window.__rendered && seen()) { window.__rendered = performance.now(); obs.disconnect(); }
      }).observe(document, { childList: true, subtree: true });
    }, `fr `);
    await receiver.page.goto(`${stack.url}/?c=${encodeURIComponent(conversation)}&user=${user}&device=${device}`);
    await waitFor(receiver.page, () => window.__rendered > 0, null, 'the demo to render the latest 50');
    const shown = await receiver.page.evaluate(() => [...document.querySelectorAll('#messages > li')].map((li) => li.textContent));
    if (!shown.some((t) => t.includes(`fr `) && t.includes(` ${n - 1}`))) throw new Error('the demo did not show the newest message');
    return { ms: await receiver.page.evaluate(() => window.__rendered) };
  } finally {
    await close();
  }
}

/** The raw IndexedDB ceiling of this browser (in a page of its own). */
async function idbCeiling(stack) {
  const p = await openPage(stack.browser, `${stack.url}/healthz`);
  try {
    return await p.page.evaluate(() => B.idbCeiling([[1, 1_000], [16, 8_000], [64, 16_000], [500, 20_000]]));
  } finally {
    await p.context.close();
  }
}

async function catchUp(stack, n) {
  const { sender, receiver, close } = await stack.pair();
  try {
    // One message seen before going offline: Socket.IO can only recover a
    // session from the offset of the last packet the client received.
    await deliver({ sender, receiver }, 1, 'warm');
    await waitFor(sender.page, () => B.sentOk >= 1, null, 'sender to have the warm-up confirmed');
    await receiver.page.evaluate(() => B.setOnline(false));
    await waitFor(receiver.page, () => !B.isOnline(), null, 'receiver to go offline');
    await receiver.page.evaluate((n) => B.expect(n), n);
    await sender.page.evaluate((n) => B.sendMany(n, 'cu', 0), n);
    await waitFor(sender.page, (n) => B.sentOk >= n, n, 'sender to have all stored by the server');
    const received = await receiver.page.evaluate(() => B.count);
    if (received !== 0) throw new Error(`the offline receiver got ${received} messages`);
    const profiles = PROFILE ? await startProfiles({ receiver }) : null;
    const t0 = await receiver.page.evaluate(() => { const t = B.now(); B.setOnline(true); return t; });
    await waitFor(receiver.page, () => B.count >= B.target, null, 'receiver to catch up');
    if (profiles) await stopProfiles(profiles);
    const { doneAt, firstAt } = await receiver.page.evaluate(() => ({ doneAt: B.doneAt, firstAt: B.firstAt }));
    const extra = stack.name.startsWith('socket.io') ? { recovered: await receiver.page.evaluate(() => B.recovered) } : {};
    if (extra.recovered === false) throw new Error('socket.io did not recover the session');
    await assertClean(sender, receiver, n);
    return { ms: doneAt - t0, firstMs: firstAt - t0, ...extra };
  } finally {
    await close();
  }
}

/** Exactly n surfaced (no duplicates on top) and no failures on either page. */
async function assertClean(sender, receiver, n) {
  await new Promise((r) => setTimeout(r, 300));
  const r = await receiver.page.evaluate(() => ({ count: B.count, failures: B.failures }));
  const s = await sender.page.evaluate(() => ({ failures: B.failures }));
  if (r.count !== n) throw new Error(`receiver surfaced ${r.count} messages, expected ${n}`);
  const failures = [...r.failures, ...s.failures];
  if (failures.length) throw new Error(`failures: ${failures.slice(0, 5).join('; ')}`);
}

// --profile: CPU profiles of the pages during the throughput and catch-up runs, with
// the top self-time functions printed (for finding where the time goes).
async function startProfiles(pages) {
  const out = [];
  for (const [role, p] of Object.entries(pages)) {
    const cdp = await p.context.newCDPSession(p.page);
    await cdp.send('Profiler.enable');
    await cdp.send('Profiler.setSamplingInterval', { interval: 200 });
    await cdp.send('Profiler.start');
    out.push({ role, cdp });
  }
  return out;
}

async function stopProfiles(profiles) {
  for (const { role, cdp } of profiles) {
    const { profile } = await cdp.send('Profiler.stop');
    const file = join(repoRoot, 'target', 'bench', `${role}.cpuprofile`);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, JSON.stringify(profile));
    const self = new Map();
    const byId = new Map(profile.nodes.map((n) => [n.id, n]));
    const dt = profile.timeDeltas;
    profile.samples.forEach((id, i) => {
      const f = byId.get(id).callFrame;
      const key = `${f.functionName || '(anon)'} ${f.url.split('/').pop()}:${f.lineNumber}`;
      self.set(key, (self.get(key) || 0) + (dt[i] || 0));
    });
    const total = [...self.values()].reduce((a, b) => a + b, 0);
    const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25);
    say(`${role} profile (${file}), total ${(total / 1000).toFixed(0)} ms:`);
    for (const [k, v] of top) say(`  ${((100 * v) / total).toFixed(1)}%  ${k}`);
  }
}

function quantile(sorted, q) {
  if (!sorted.length) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function summarize(figure, unit, runs) {
  const sorted = [...runs].sort((a, b) => a - b);
  return { figure, unit, median: sorted[Math.floor(sorted.length / 2)], min: sorted[0], max: sorted[sorted.length - 1], runs };
}

// ---------------------------------------------------------------- main
const figures = [];
const browser = await launchBrowser();
const planAll = [
  ['ackline', (b) => Stack.ackline(b)],
  ['socket.io (acks + retries)', (b) => Stack.socketio(b, true)],
  ['socket.io (acks, no retries)', (b) => Stack.socketio(b, false)],
];
const plan = STACK ? planAll.filter(([n]) => n.startsWith(STACK)) : planAll;
try {
  for (const [name, start] of plan) {
    const stack = await start(browser);
    try {
      const tp = [];
      const lat = [];
      const rtt = [];
      const cu = [];
      const fr = [];
      const ceiling = [];
      const wanted = (kind) => !ONLY || ONLY === kind;
      const isAckline = name === 'ackline';
      const step = async (kind, list, what, fn) => {
        if (!wanted(kind)) return;
        say(`${name}: ${what}`);
        list.push(await fn());
        say(`${name}:   ${JSON.stringify(list.at(-1))}`);
      };
      for (let run = 0; run < RUNS; run += 1) {
        const r = `run ${run + 1}/${RUNS}`;
        if (isAckline) await step('ceiling', ceiling, `${r}: raw IndexedDB ceiling`, () => idbCeiling(stack));
        await step('throughput', tp, `${r}: throughput, ${N_THROUGHPUT} messages, window ${WINDOW}`, () => throughput(stack, N_THROUGHPUT));
        await step('latency', lat, `${r}: latency at ${LATENCY_RATE} msg/s, ${N_LATENCY} messages`, () => latency(stack, N_LATENCY));
        await step('rtt', rtt, `${r}: window-1 round trip, ${N_RTT} messages`, () => roundTrip(stack, N_RTT));
        await step('catchup', cu, `${r}: catch-up of ${N_CATCHUP}`, () => catchUp(stack, N_CATCHUP));
        if (isAckline) await step('render', fr, `${r}: first render over ${N_RENDER} stored`, () => firstRender(stack, N_RENDER));
      }
      const add = (figure, unit, values) => figures.push(summarize(`${name}: ${figure}`, unit, values));
      if (tp.length) {
        add(`browser->browser, ${N_THROUGHPUT} msgs, window ${WINDOW}, until surfaced`, 'msgs/s', tp.map((x) => x.surfaced));
        if (isAckline) {
          add(`browser->browser, ${N_THROUGHPUT} msgs, window ${WINDOW}, until all delivered`, 'msgs/s', tp.map((x) => x.delivered));
          add('IndexedDB records written per message, sender', 'records', tp.map((x) => x.idbPerMessage.sender));
          add('IndexedDB records written per message, receiver', 'records', tp.map((x) => x.idbPerMessage.receiver));
          add('IndexedDB read-write transactions per 100 messages, sender', 'tx', tp.map((x) => (100 * x.idbTransactions.sender) / N_THROUGHPUT));
          add('IndexedDB read-write transactions per 100 messages, receiver', 'tx', tp.map((x) => (100 * x.idbTransactions.receiver) / N_THROUGHPUT));
          add('IndexedDB records written per second (both ends)', 'records/s', tp.map((x) => x.surfaced * (x.idbPerMessage.sender + x.idbPerMessage.receiver)));
          // Each end makes each message durable once, whatever the records.
          add('messages made durable per second (both ends)', 'msgs/s', tp.map((x) => 2 * x.surfaced));
        }
        add(`server CPU per 10,000 messages (${isAckline ? 'workerd' : 'node'})`, 'CPU-s', tp.map((x) => x.serverCpuPer10k));
      }
      if (lat.length) {
        add(`send->surfaced p50 at ${LATENCY_RATE} msg/s`, 'ms', lat.map((x) => x.p50));
        add(`send->surfaced p99 at ${LATENCY_RATE} msg/s`, 'ms', lat.map((x) => x.p99));
        add('send->surfaced, first message of a fresh conversation', 'ms', lat.map((x) => x.first));
      }
      if (rtt.length) {
        add('window-1 round trip (send -> confirmed) p50', 'ms', rtt.map((x) => x.p50));
        add('window-1 round trip (send -> confirmed) p99', 'ms', rtt.map((x) => x.p99));
      }
      if (cu.length) {
        add(`catch-up of ${N_CATCHUP}`, 'ms', cu.map((x) => x.ms));
        add(`catch-up of ${N_CATCHUP}: first message shown`, 'ms', cu.map((x) => x.firstMs));
      }
      if (fr.length) add(`time to first render: demo page load -> latest 50 shown, ${N_RENDER} stored`, 'ms', fr.map((x) => x.ms));
      for (const batch of ceiling.length ? Object.keys(ceiling[0]) : []) {
        add(`raw IndexedDB ceiling, strict puts of ~150 B in batches of ${batch}`, 'records/s', ceiling.map((x) => x[batch]));
      }
    } finally {
      await stack.stop();
    }
  }
} finally {
  await browser.close();
}

const chromiumVersion = await (async () => {
  const b = await launchBrowser();
  const v = b.version();
  await b.close();
  return v;
})();
const ceilingBest = figures.filter((f) => f.figure.includes('raw IndexedDB ceiling')).reduce((m, f) => Math.max(m, f.median), 0);
// Medians over medians: one number each, so no min or max.
const ratioOfCeiling = (label, match) => {
  const achieved = figures.find((f) => f.figure.includes(match))?.median;
  if (ceilingBest && achieved) figures.push({ figure: `ackline: ${label} / best raw ceiling (records/s)`, unit: 'ratio', median: achieved / ceilingBest, min: NaN, max: NaN, runs: [] });
};
ratioOfCeiling('IndexedDB records/s achieved', 'records written per second');
ratioOfCeiling('messages made durable per second, both ends,', 'messages made durable per second');
const report = { date: new Date().toISOString(), runs: RUNS, window: WINDOW, chromium: chromiumVersion, node: process.version, figures };
mkdirSync(dirname(OUT), { recursive: true });
writeFileSync(OUT, JSON.stringify(report, null, 2));

const fmt = (x) => (x >= 100 ? Math.round(x).toLocaleString('en-US') : x >= 10 ? x.toFixed(1) : x.toFixed(2));
console.log(`| browser figure (Chromium ${chromiumVersion}) | median | min | max | unit |`);
console.log('|---|---|---|---|---|');
for (const f of figures) console.log(`| ${f.figure} | ${fmt(f.median)} | ${fmt(f.min)} | ${fmt(f.max)} | ${f.unit} |`);
const pick = (prefix, suffix) => figures.find((f) => f.figure.startsWith(prefix) && f.figure.includes(suffix))?.median;
for (const other of ['socket.io (acks + retries)', 'socket.io (acks, no retries)']) {
  const ratios = [
    ['throughput (surfaced)', pick('ackline', 'until surfaced') / pick(other, 'until surfaced')],
    ['p99 latency', pick('ackline', 'send->surfaced p99') / pick(other, 'send->surfaced p99')],
    ['window-1 round trip p99', pick('ackline', 'round trip (send -> confirmed) p99') / pick(other, 'round trip (send -> confirmed) p99')],
    ['catch-up time', pick('ackline', 'catch-up') / pick(other, 'catch-up')],
    ['server CPU per message', pick('ackline', 'server CPU') / pick(other, 'server CPU')],
  ].filter(([, v]) => Number.isFinite(v));
  if (!ratios.length) continue;
  console.log(`ratio Ackline / ${other}: ${ratios.map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ')}`);
}
