// Scenario 4: a receiver's tab is reloaded mid-stream, and a sender's tab is
// closed with messages still queued in its outbox and reopened later: the
// queued messages go out from IndexedDB, nothing is shown twice or lost.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runScenario, waitConverged, assertConverged, log } from './lib/scenario.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function untilNewest(device, seq) {
  while ((await device.progress()).newest < seq) await sleep(50);
}

/** Entries of the conversation in the page's IndexedDB outbox (the durable queue). */
function durableOutbox(device) {
  return device.page.evaluate(async (conversation) => {
    const req = (r) => new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });
    const db = await req(indexedDB.open(window.ackline.app.dbName));
    const all = await req(db.transaction('outbox', 'readonly').objectStore('outbox').getAll());
    db.close();
    return all.filter((e) => e.conversation === conversation).map((e) => ({ id: e.id, seq: e.seq ?? null }));
  }, device.conversation);
}

test('a receiver reloads mid-stream; a sender closes its tab with queued messages and comes back', { timeout: 300_000 }, async (t) => {
  await runScenario(t, 'scenario-4-reload-close', {}, async (world) => {
    const [annLaptop, annPhone, bob, cat] = await world.openCast();
    const started = Date.now();
    const steady = Promise.all([annLaptop, cat].map((d) => d.send(200, { chunk: 2, pauseMs: 50 })));

    // The receiver bob reloads while messages stream in.
    await untilNewest(bob, 80);
    log(`reloading bob at seq ${(await bob.progress()).newest}`);
    await bob.reload();
    log(`bob is back, showing ${(await bob.progress()).rows} rows`);

    // ann's phone queues a burst and its tab is closed as soon as the burst is
    // durably in its outbox, before the edge has stored any of it: the phone's
    // connection is cut first (bundled sends reach the edge faster than this
    // test can close a tab, so racing the close against them is no test).
    await annPhone.page.evaluate(() => window.ackline.client.setOnline(false));
    await annPhone.send(150, { prefix: 'burst', chunk: 150, pauseMs: 0 });
    while ((await durableOutbox(annPhone)).length < 150) await sleep(10);
    const atClose = await annPhone.progress();
    await annPhone.closeTab();
    log(`closed ann-phone's tab with ${atClose.unsent} of 150 unsent (${atClose.outbox} undelivered)`);
    assert.ok(atClose.unsent > 0, 'the tab should close with messages still queued');

    // bob reloads again while ann's phone is away, then the others finish.
    await sleep(1500);
    await bob.reload();
    await steady;
    log(`ann-laptop and cat queued 400 by ${Date.now() - started} ms`);
    await sleep(2000);

    // ann's phone comes back later: the queued messages go out.
    await annPhone.reopenTab();
    const back = await annPhone.progress();
    log(`ann-phone reopened: ${back.unsent} unsent, ${back.outbox} undelivered, showing ${back.rows} rows`);
    await annPhone.send(10, { prefix: 'after', chunk: 10 });

    await waitConverged([annLaptop, annPhone, bob, cat], 560, { label: 'reload-close' });
    log(`all shown and delivered ${Date.now() - started} ms after the first send`);
    await assertConverged([annLaptop, annPhone, bob, cat]);
  });
});
