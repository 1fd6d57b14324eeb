// Shared machinery of the browser scenarios: a world (edge + optional chaos
// proxy + Chromium), member devices (one browser context each, so each has its
// own IndexedDB and localStorage), bulk sending through the page's own
// `room.send`, convergence waits and the end-state checks, which read only
// what the pages show (DOM) and store (IndexedDB).
import assert from 'node:assert/strict';
import { Edge, freshStorage } from './edge.mjs';
import { ChaosProxy } from './chaos-proxy.mjs';
import { launchBrowser, saveArtifacts } from './browser.mjs';

export const CONVERSATION = 'team';

/** The usual cast: ann on two devices, bob, cat. */
export const CAST = [
  { user: 'ann', device: 'ann-laptop' },
  { user: 'ann', device: 'ann-phone' },
  { user: 'bob', device: 'bob-desk' },
  { user: 'cat', device: 'cat-tablet' },
];

export function log(...args) {
  if (process.env.ACKLINE_TEST_QUIET !== '1') console.log(`[${new Date().toISOString().slice(11, 23)}]`, ...args);
}

export class World {
  /** Starts a fresh edge (and, with `proxy: true`, a chaos proxy in front of it) and Chromium. */
  static async start(name, { proxy = false } = {}) {
    const world = new World(name);
    world.edge = await Edge.start(freshStorage(name));
    if (proxy) world.proxy = await ChaosProxy.start(world.edge.port);
    world.browser = await launchBrowser();
    world.base = world.proxy ? world.proxy.url : world.edge.url;
    return world;
  }

  constructor(name) {
    this.name = name;
    this.devices = [];
    this.startedAt = Date.now();
  }

  /** Opens a device in its own browser context (own IndexedDB) and waits until it is online. */
  async open({ user, device }, { conversation = CONVERSATION, viewport = { width: 420, height: 760 } } = {}) {
    const context = await this.browser.newContext({ viewport });
    const d = new Device(this, context, user, device, conversation);
    this.devices.push(d);
    await d.openPage();
    return d;
  }

  async openCast(cast = CAST) {
    const devices = [];
    for (const member of cast) devices.push(await this.open(member));
    return devices;
  }

  /** Saves a screenshot and the console log of every open page. */
  async saveArtifacts(t) {
    for (const d of this.devices) {
      if (!d.page || d.page.isClosed()) continue;
      const dir = await saveArtifacts(d.page, `${this.name}-${d.device}`, d.logs);
      t?.diagnostic(`artifacts of ${d.device} in ${dir}`);
    }
    t?.diagnostic(`edge log: ${this.edge?.log}`);
  }

  async close() {
    await this.browser?.close().catch(() => {});
    await this.proxy?.close().catch(() => {});
    await this.edge?.kill();
  }
}

export class Device {
  constructor(world, context, user, device, conversation) {
    this.world = world;
    this.context = context;
    this.user = user;
    this.device = device;
    this.conversation = conversation;
    this.dbName = `ackline-demo-${user}-${device}`;
    this.logs = [];
    this.page = null;
    /** Bodies this device queued in earlier incarnations of its tab. */
    this.queuedBefore = [];
  }

  get url() {
    return `${this.world.base}/?c=${this.conversation}&user=${this.user}&device=${this.device}`;
  }

  async openPage() {
    this.page = await this.context.newPage();
    const tag = `[${this.device}]`;
    this.page.on('console', (m) => this.logs.push(`${new Date().toISOString()} ${tag} ${m.type()}: ${m.text()}`));
    this.page.on('pageerror', (e) => this.logs.push(`${new Date().toISOString()} ${tag} pageerror: ${e.stack || e.message}`));
    // Navigation and network events, so a hung reload or a crash leaves a trail.
    const note = (what) => this.logs.push(`${new Date().toISOString()} ${tag} ${what}`);
    this.page.on('crash', () => note('renderer crashed'));
    this.page.on('load', () => note('load'));
    this.page.on('domcontentloaded', () => note('domcontentloaded'));
    this.page.on('framenavigated', (f) => { if (f === this.page.mainFrame()) note(`navigated ${f.url()}`); });
    this.page.on('requestfailed', (r) => note(`request failed ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
    this.page.on('request', (r) => { if (r.isNavigationRequest()) note(`navigation request ${r.url()}`); });
    await this.page.goto(this.url);
    await this.ready();
  }

  async ready() {
    await this.page.waitForFunction(() => window.ackline?.room, null, { timeout: 30_000 });
    await this.page.waitForSelector('#status[data-state=open]', { timeout: 30_000 });
  }

  async reload() {
    this.queuedBefore.push(...(await this.queued()));
    await this.page.reload();
    await this.ready();
  }

  /** Closes the tab (the context, and so its IndexedDB, stays). */
  async closeTab() {
    this.queuedBefore.push(...(await this.queued()));
    await this.page.close();
    this.page = null;
  }

  async reopenTab() {
    await this.openPage();
  }

  /**
   * Queues `count` messages through `room.send`, `chunk` at a time with
   * `pauseMs` between chunks; resolves once all are handed to the client (not
   * once stored). Bodies are `${device}-${prefix}-${i}`.
   */
  send(count, { prefix = 'm', chunk = 5, pauseMs = 20 } = {}) {
    return this.page.evaluate(async ({ count, prefix, chunk, pauseMs, device }) => {
      const { room } = window.ackline;
      const s = (window.__sends ??= { queued: [], resolved: 0, rejected: [] });
      for (let i = 0; i < count; i += chunk) {
        for (let j = i; j < Math.min(count, i + chunk); j += 1) {
          const body = `${device}-${prefix}-${j}`;
          s.queued.push(body);
          room.send(body).then(() => { s.resolved += 1; }, (e) => { s.rejected.push([body, e.code, e.message]); });
        }
        if (pauseMs) await new Promise((r) => setTimeout(r, pauseMs));
      }
      return s.queued.length;
    }, { count, prefix, chunk, pauseMs, device: this.device });
  }

  /** Bodies queued by this tab so far. */
  async queued() {
    if (!this.page || this.page.isClosed()) return [];
    return this.page.evaluate(() => window.__sends?.queued ?? []);
  }

  /** Every body this device queued, across reloads. */
  async allQueued() {
    return [...this.queuedBefore, ...(await this.queued())];
  }

  /** A cheap summary of what the page shows. */
  progress() {
    return this.page.evaluate(() => {
      const rows = document.querySelectorAll('#messages li[data-seq]');
      const status = document.getElementById('status');
      return {
        rows: rows.length,
        oldest: rows.length ? Number(rows[0].dataset.seq) : 0,
        newest: rows.length ? Number(rows[rows.length - 1].dataset.seq) : 0,
        outgoing: document.querySelectorAll('#outgoing li').length,
        undelivered: document.querySelectorAll('#messages li[data-mine="1"]:not([data-state=delivered])').length,
        state: status.dataset.state,
        outbox: Number(status.dataset.outbox),
        unsent: Number(status.dataset.unsent),
        queued: window.__sends?.queued.length ?? 0,
        resolved: window.__sends?.resolved ?? 0,
      };
    });
  }

  /** Everything the checks need: the DOM rows, the app's event stats, IndexedDB. */
  snapshot() {
    return this.page.evaluate(async (conversation) => {
      const rows = [...document.querySelectorAll('#messages li')].map((li) => ({
        seq: Number(li.dataset.seq),
        id: li.dataset.id,
        user: li.dataset.user,
        mine: li.dataset.mine === '1',
        state: li.dataset.state,
        body: li.querySelector('.body').textContent,
      }));
      const outgoing = [...document.querySelectorAll('#outgoing li')].map((li) => ({ id: li.dataset.id, state: li.dataset.state }));
      const status = document.getElementById('status');
      const { app } = window.ackline;
      const req = (r) => new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });
      const db = await req(indexedDB.open(app.dbName));
      const tx = db.transaction(['pages', 'outbox'], 'readonly');
      // Page records in write order; a later copy of a seq wins (docs/ARCHITECTURE.md).
      const pages = await req(tx.objectStore('pages').index('by_bucket').getAll(IDBKeyRange.bound([conversation, 0], [conversation, Infinity])));
      const bySeq = new Map();
      for (const page of pages) for (const m of JSON.parse(page.messages)) bySeq.set(m.seq, m);
      const stored = [...bySeq.values()].sort((a, b) => a.seq - b.seq);
      const outbox = (await req(tx.objectStore('outbox').getAll())).filter((e) => e.conversation === conversation);
      db.close();
      return {
        rows,
        outgoing,
        stats: app.stats,
        status: { state: status.dataset.state, outbox: Number(status.dataset.outbox) },
        rejected: window.__sends?.rejected ?? [],
        idb: stored.map((m) => ({ seq: m.seq, id: m.id, body: m.body })),
        outbox: outbox.map((e) => ({ id: e.id, seq: e.seq ?? null })),
      };
    }, this.conversation);
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Waits until every device shows `total` stored messages, has nothing in its
 * outbox and every own message delivered (or `until` says so). Devices that
 * show only a recent page (after a reload) load older pages the way scrolling
 * does. Logs progress every few seconds.
 */
export async function waitConverged(devices, total, { timeoutMs = 120_000, delivered = true, label = 'converge' } = {}) {
  const start = Date.now();
  let lastLog = 0;
  let last;
  while (Date.now() - start < timeoutMs) {
    last = [];
    for (const d of devices) {
      let p = await d.progress();
      if (p.oldest > 1) {
        await d.page.evaluate(() => window.ackline.app.loadAll());
        p = await d.progress();
      }
      last.push(p);
    }
    const done = last.every((p) => p.rows === total && p.newest === total && p.outgoing === 0 && p.outbox === 0
      && (!delivered || p.undelivered === 0));
    if (done) {
      log(`${label}: converged in ${Date.now() - start} ms`);
      return Date.now() - start;
    }
    if (Date.now() - lastLog > 5_000) {
      lastLog = Date.now();
      log(`${label}: ${devices.map((d, i) => `${d.device} rows=${last[i].rows} out=${last[i].outbox} undelivered=${last[i].undelivered} ${last[i].state}`).join(' | ')}`);
    }
    await sleep(500);
  }
  throw new Error(`${label}: not converged after ${timeoutMs} ms (want ${total} rows): ${JSON.stringify(devices.map((d, i) => ({ device: d.device, ...last[i] })))}`);
}

/**
 * The end-state checks, from each page's DOM and IndexedDB: every queued body
 * is shown exactly once on every device, under the same seq and in the same
 * order everywhere; IndexedDB holds the same messages; the outbox is empty and
 * every sender's own rows are delivered; the `message` event stream had no
 * duplicate or out-of-order seq.
 */
export async function assertConverged(devices, { delivered = true } = {}) {
  const expected = new Set();
  const queuedBy = new Map();
  for (const d of devices) {
    const q = await d.allQueued();
    queuedBy.set(d.device, q);
    for (const b of q) {
      assert.ok(!expected.has(b), `body ${b} queued twice by the test`);
      expected.add(b);
    }
  }
  let reference = null;
  for (const d of devices) {
    const s = await d.snapshot();
    const where = `${d.device}`;
    assert.deepEqual(s.rejected, [], `${where}: send promises rejected`);
    assert.deepEqual(s.stats.outOfOrder, [], `${where}: 'message' events out of order or repeated`);
    assert.deepEqual(s.stats.conflicts, [], `${where}: one seq with two ids, or one id under two seqs`);
    assert.deepEqual(s.outgoing, [], `${where}: own messages never stored`);
    assert.equal(s.status.outbox, 0, `${where}: outbox not empty`);
    // Shown exactly once, contiguous from 1, in seq order.
    assert.equal(s.rows.length, expected.size, `${where}: shows ${s.rows.length} rows, ${expected.size} were sent`);
    s.rows.forEach((r, i) => assert.equal(r.seq, i + 1, `${where}: row ${i} has seq ${r.seq}`));
    const bodies = new Set(s.rows.map((r) => r.body));
    assert.equal(bodies.size, s.rows.length, `${where}: a body is shown twice`);
    assert.equal(new Set(s.rows.map((r) => r.id)).size, s.rows.length, `${where}: an id is shown twice`);
    const missing = [...expected].filter((b) => !bodies.has(b));
    assert.deepEqual(missing.slice(0, 10), [], `${where}: ${missing.length} sent messages missing`);
    // Own rows: exactly what this device queued, all with honest final ticks.
    const mine = s.rows.filter((r) => r.mine);
    assert.deepEqual(new Set(mine.map((r) => r.body)), new Set(queuedBy.get(d.device)), `${where}: own rows differ from what it sent`);
    if (delivered) {
      const notDelivered = mine.filter((r) => r.state !== 'delivered');
      assert.equal(notDelivered.length, 0, `${where}: ${notDelivered.length} own rows not delivered, e.g. ${JSON.stringify(notDelivered.slice(0, 3))}`);
      assert.deepEqual(s.outbox, [], `${where}: IndexedDB outbox not empty`);
    }
    for (const r of s.rows) {
      if (!r.mine) assert.equal(r.state, 'received', `${where}: row ${r.seq} of another device has state ${r.state}`);
    }
    // IndexedDB holds the same conversation.
    assert.equal(s.idb.length, s.rows.length, `${where}: IndexedDB holds ${s.idb.length} messages`);
    s.idb.forEach((m, i) => {
      const r = s.rows[i];
      assert.ok(m.seq === r.seq && m.id === r.id && m.body === r.body, `${where}: IndexedDB seq ${m.seq} differs from the page's row ${r.seq}`);
    });
    // The same order everywhere.
    const order = s.rows.map((r) => `${r.seq}:${r.id}:${r.body}`);
    if (!reference) reference = { device: d.device, order };
    else assert.deepEqual(order, reference.order, `${where} and ${reference.device} disagree on the order`);
  }
  return expected.size;
}

/** Runs `fn(world)` with a fresh world; on failure saves every page's screenshot and console log. */
export async function runScenario(t, name, opts, fn) {
  const world = await World.start(name, opts);
  const started = Date.now();
  try {
    await fn(world);
    t.diagnostic(`${name}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
    log(`${name}: done in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (err) {
    await world.saveArtifacts(t);
    throw err;
  } finally {
    await world.close();
  }
}
