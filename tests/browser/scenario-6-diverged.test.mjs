// Scenario 6: the edge's Durable Object storage is restored from an older
// backup, so the server forgets messages both browsers stored. Each page gets
// `diverged` (the demo's banner), its inbox stays frozen, and `resetInbox()`
// (the banner's Reset button on ann, the app's function on bob) repairs it:
// the inbox is rebuilt from the server's history, the outbox is kept and sent,
// nothing is shown twice, and new messages flow. Checked in DOM and IndexedDB.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, rmSync } from 'node:fs';
import { runScenario, waitConverged, log, CAST } from './lib/scenario.mjs';

const ANN = CAST[0];
const BOB = CAST[2];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** What a page shows and stores, for the checks below. */
async function view(d) {
  const s = await d.snapshot();
  const banner = await d.page.evaluate(() => {
    const b = document.getElementById('banner');
    return { hidden: b.hidden, kind: b.dataset.kind, text: b.querySelector('.text').textContent };
  });
  return { ...s, banner, diverged: await d.page.evaluate(() => window.ackline.room.diverged) };
}

/** Types `body` into the composer and sends it, as a user does. */
async function type(d, body) {
  await d.page.fill('#body', body);
  await d.page.press('#body', 'Enter');
}

async function waitFor(what, fn, timeoutMs = 60_000) {
  const start = Date.now();
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

test('the edge is restored from an older backup: diverged, then resetInbox repairs it', { timeout: 300_000 }, async (t) => {
  await runScenario(t, 'scenario-6-diverged', {}, async (world) => {
    const ann = await world.open(ANN);
    const bob = await world.open(BOB);
    const devices = [ann, bob];

    // 1. Ten messages, stored and delivered everywhere; then a backup of the
    //    edge's storage (Durable Object SQLite files) taken while it is stopped.
    await ann.send(5, { prefix: 'kept' });
    await bob.send(5, { prefix: 'kept' });
    await waitConverged(devices, 10, { label: 'before the backup' });
    await world.edge.kill();
    const backup = `${world.edge.storage}-backup`;
    rmSync(backup, { recursive: true, force: true });
    cpSync(world.edge.storage, backup, { recursive: true });
    await world.edge.spawn();
    log(`backup of ${world.edge.storage} taken at seq 10`);

    // 2. Six more, stored by both browsers (and delivered, so they left the outboxes).
    await ann.send(3, { prefix: 'lost' });
    await bob.send(3, { prefix: 'lost' });
    await waitConverged(devices, 16, { label: 'after the backup' });
    const lostBodies = (await ann.snapshot()).rows.slice(10).map((r) => r.body);
    assert.equal(lostBodies.length, 6);

    // 3. Restore the backup: the server is back at seq 10.
    await world.edge.kill();
    rmSync(world.edge.storage, { recursive: true, force: true });
    cpSync(backup, world.edge.storage, { recursive: true });
    await world.edge.spawn();
    log('edge restarted on the backup');

    for (const d of devices) {
      await d.page.waitForSelector('#banner[data-kind=diverged]', { timeout: 60_000 });
      const v = await view(d);
      assert.equal(v.diverged.serverHead, 10, `${d.device}: the server's head after the restore`);
      assert.ok(v.diverged.seq <= 10, `${d.device}: diverged at ${v.diverged.seq}`);
      assert.match(v.banner.text, /differs from the server's/);
      assert.ok(await d.page.isVisible('#banner .reset'), `${d.device}: the banner offers Reset`);
      // Frozen, not wiped: the page still shows its 16 messages.
      assert.equal(v.rows.length, 16);
    }
    log('both pages report the divergence');

    // 4. While diverged, bob's outbox keeps working: his message is stored
    //    (seq 11) but not shown anywhere yet, the inboxes being frozen.
    await type(bob, 'bob-while-diverged');
    // Its tick leaves the clock (the server stored it) while it stays among the
    // outgoing rows. (It may even show ✓✓ at once: cursors learned before the
    // restore only ever go up in the core.)
    await bob.page.waitForSelector('#outgoing li:not([data-state=pending])', { timeout: 60_000 });
    assert.equal((await bob.snapshot()).rows.length, 16, 'bob\'s frozen inbox shows nothing new');

    // 5. ann goes offline, queues two messages, and resets while offline: the
    //    stored inbox goes, the outbox stays.
    await ann.page.click('label.switch');
    await ann.page.waitForSelector('#status[data-state=offline]');
    await type(ann, 'ann-queued-1');
    await type(ann, 'ann-queued-2');
    await waitFor('ann\'s two messages in the outbox', async () => (await ann.snapshot()).outbox.filter((e) => e.seq === null).length === 2);
    await ann.page.click('#banner .reset');
    await waitFor('ann\'s stored inbox cleared', async () => (await ann.snapshot()).idb.length === 0);
    let v = await view(ann);
    assert.equal(v.rows.length, 0, 'the reset view starts empty');
    assert.deepEqual(v.outgoing.length, 2, 'the queued messages stay on screen');
    assert.equal(v.outbox.filter((e) => e.seq === null).length, 2, 'the outbox is kept in IndexedDB');
    assert.equal(v.diverged, null);
    assert.notEqual(v.banner.kind, 'diverged');

    // 6. ann back online: rebuilt from the server's history, her queued messages sent.
    await ann.page.click('label.switch');
    await ann.page.waitForSelector('#status[data-state=open]', { timeout: 60_000 });
    // 7. bob resets through the app's API while online.
    await bob.page.evaluate(() => window.ackline.app.resetInbox());
    await waitFor('bob\'s banner gone', async () => (await view(bob)).banner.kind !== 'diverged');

    // 8. New messages flow both ways.
    await ann.send(2, { prefix: 'after' });
    await bob.send(2, { prefix: 'after' });
    const total = 10 + 1 + 2 + 4;
    await waitConverged(devices, total, { label: 'after the reset' });

    // The checks: both pages show exactly the server's history, each message
    // once and in the same order, IndexedDB holds the same, outboxes are empty
    // and the messages the restore lost are gone (not resurrected).
    const annQueued = await ann.queued();
    const bobQueued = await bob.queued();
    const expected = new Set([
      ...annQueued.filter((b) => !b.includes('-lost-')), 'ann-queued-1', 'ann-queued-2',
      ...bobQueued.filter((b) => !b.includes('-lost-')), 'bob-while-diverged',
    ]);
    assert.equal(expected.size, total);
    let reference = null;
    for (const d of devices) {
      v = await view(d);
      const where = d.device;
      assert.deepEqual(v.rejected, [], `${where}: send promises rejected`);
      assert.deepEqual(v.stats.outOfOrder, [], `${where}: 'message' events out of order or repeated after the reset`);
      assert.deepEqual(v.stats.conflicts, [], `${where}: one seq with two ids, or one id under two seqs`);
      assert.equal(v.stats.resets, 1, `${where}: one reset`);
      assert.equal(v.rows.length, total, `${where}: shows ${v.rows.length} rows`);
      v.rows.forEach((r, i) => assert.equal(r.seq, i + 1, `${where}: row ${i} has seq ${r.seq}`));
      const bodies = v.rows.map((r) => r.body);
      assert.equal(new Set(bodies).size, bodies.length, `${where}: a message is shown twice`);
      assert.deepEqual(new Set(bodies), expected, `${where}: shows other messages than the server's history`);
      for (const lost of lostBodies) assert.ok(!bodies.includes(lost), `${where}: ${lost} came back`);
      assert.deepEqual(bodies.slice(0, 10), (await ann.snapshot()).rows.slice(0, 10).map((r) => r.body));
      assert.equal(bodies[10], 'bob-while-diverged', `${where}: seq 11 is bob's message sent while diverged`);
      assert.deepEqual(v.outgoing, [], `${where}: own messages never stored`);
      assert.deepEqual(v.outbox, [], `${where}: IndexedDB outbox not empty`);
      const notDelivered = v.rows.filter((r) => r.mine && r.state !== 'delivered');
      assert.deepEqual(notDelivered, [], `${where}: own rows not delivered`);
      assert.equal(v.idb.length, total, `${where}: IndexedDB holds ${v.idb.length} messages`);
      v.idb.forEach((m, i) => assert.ok(m.seq === v.rows[i].seq && m.id === v.rows[i].id && m.body === v.rows[i].body,
        `${where}: IndexedDB seq ${m.seq} differs from the page's row ${v.rows[i].seq}`));
      assert.equal(v.diverged, null);
      assert.notEqual(v.banner.kind, 'diverged');
      const order = v.rows.map((r) => `${r.seq}:${r.id}`);
      if (!reference) reference = order;
      else assert.deepEqual(order, reference, 'ann and bob disagree on the order');
    }
    rmSync(backup, { recursive: true, force: true });
  });
});
