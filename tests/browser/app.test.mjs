// The demo app's own behaviour: the join form, the error banner, and older
// history loaded by scrolling up on a phone-sized screen.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { World, log } from './lib/scenario.mjs';

let world;
before(async () => { world = await World.start('app'); });
after(async () => { await world?.close(); });

async function guarded(t, fn) {
  try {
    await fn();
  } catch (err) {
    await world.saveArtifacts(t);
    throw err;
  }
}

test('without ?user the join form asks for a name and opens the chat', async (t) => {
  await guarded(t, async () => {
    const context = await world.browser.newContext();
    const page = await context.newPage();
    await page.goto(`${world.base}/?c=joiners`);
    await page.waitForSelector('#join:not([hidden])');
    assert.equal(await page.inputValue('#join-c'), 'joiners');
    await page.fill('#join-user', 'dan');
    await page.press('#join-user', 'Enter');
    await page.waitForSelector('#status[data-state=open]');
    assert.match(page.url(), /user=dan/);
    assert.equal(await page.textContent('#room-name'), '#joiners · dan');
    await context.close();
  });
});

test('a refused token shows the error banner', async (t) => {
  await guarded(t, async () => {
    const context = await world.browser.newContext();
    const page = await context.newPage();
    // A conversation id the edge refuses (too long): the dev token request fails.
    await page.goto(`${world.base}/?c=${'x'.repeat(65)}&user=eve`);
    await page.waitForSelector('#banner[data-kind=error]');
    assert.match(await page.textContent('#banner .text'), /Error/);
    assert.notEqual(await page.getAttribute('#status', 'data-state'), 'open');
    assert.ok(await page.isHidden('#banner .dismiss'), 'a failed start cannot be dismissed');
    await context.close();
  });
});

test('scrolling up on a phone-sized screen loads older history down to #1', async (t) => {
  const ann = await world.open({ user: 'ann', device: 'ann-phone' }, { conversation: 'history', viewport: { width: 375, height: 667 } });
  await guarded(t, async () => {
    await ann.send(180, { chunk: 30, pauseMs: 0 });
    await ann.page.waitForFunction(() => document.querySelectorAll('#messages li[data-seq]').length === 180
      && !document.querySelector('#outgoing li'), null, { timeout: 60_000 });
    // A new device of bob sees only the latest page at first.
    const bob = await world.open({ user: 'bob', device: 'bob-phone' }, { conversation: 'history', viewport: { width: 375, height: 667 } });
    await bob.page.waitForSelector('#messages li[data-seq="180"]');
    const first = await bob.progress();
    log(`bob starts with ${first.rows} rows (#${first.oldest}..#${first.newest})`);
    assert.ok(first.oldest > 1, 'a fresh device starts with a recent page');
    // Scroll up like a user until #1 is there.
    for (let i = 0; i < 40 && (await bob.progress()).oldest !== 1; i += 1) {
      await bob.page.hover('#scroller');
      await bob.page.mouse.wheel(0, -5000);
      await bob.page.waitForTimeout(150);
    }
    const p = await bob.progress();
    assert.equal(p.oldest, 1, 'scrolling reached the first message');
    assert.equal(p.rows, 180);
    const seqs = await bob.page.$$eval('#messages li[data-seq]', (lis) => lis.map((li) => Number(li.dataset.seq)));
    assert.deepEqual(seqs, Array.from({ length: 180 }, (_, i) => i + 1));
    assert.equal(await bob.page.getAttribute('#older', 'data-state'), 'done');
    // The page does not scroll sideways on a phone.
    assert.ok(await bob.page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth));
    // ann's messages are delivered now that bob stored them all.
    await ann.page.waitForFunction(() => !document.querySelector('#messages li[data-mine="1"]:not([data-state=delivered])'), null, { timeout: 30_000 });
  });
});
