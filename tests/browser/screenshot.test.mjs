// Takes the README's screenshot from the real demo: ann and bob chatting (cat
// is in the room too), ticks turning delivered, then ann flips the offline
// switch and her next message waits as pending. Always written to
// test-artifacts/screenshot.png; with ACKLINE_UPDATE_SCREENSHOT=1 also to
// docs/screenshot.png.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from './lib/edge.mjs';
import { runScenario } from './lib/scenario.mjs';

async function type(device, text) {
  await device.page.fill('#body', text);
  await device.page.press('#body', 'Enter');
}

async function allDelivered(device) {
  await device.page.waitForFunction(() => document.querySelectorAll('#outgoing li').length === 0
    && document.querySelectorAll('#messages li[data-mine="1"]:not([data-state=delivered])').length === 0, null, { timeout: 20_000 });
}

test('screenshot of the demo: two windows, ticks, offline switch', { timeout: 120_000 }, async (t) => {
  await runScenario(t, 'screenshot', {}, async (world) => {
    const size = { viewport: { width: 400, height: 640 } };
    const ann = await world.open({ user: 'ann', device: 'ann-laptop' }, { conversation: 'lobby', ...size });
    const bob = await world.open({ user: 'bob', device: 'bob-phone' }, { conversation: 'lobby', ...size });
    const cat = await world.open({ user: 'cat', device: 'cat-tablet' }, { conversation: 'lobby', ...size });
    const script = [
      [bob, 'Morning! Is the new edge build live?'],
      [ann, 'Yes, rolled out at 9:00 on every region'],
      [cat, 'Graphs look calm here'],
      [bob, 'Great, flipping the feature flag now'],
      [ann, 'Ping me if anything wiggles'],
    ];
    for (const [who, text] of script) {
      await type(who, text);
      await who.page.locator('#messages li[data-seq]', { hasText: text }).waitFor();
      await bob.page.locator('#messages li[data-seq]', { hasText: text }).waitFor();
    }
    await allDelivered(ann);
    await allDelivered(bob);

    // ann goes offline on purpose; her next message waits in the outbox.
    await ann.page.click('label.switch');
    await ann.page.waitForSelector('#status[data-state=offline]');
    await type(ann, 'Entering the tunnel, this one waits for me');
    await ann.page.waitForSelector('#outgoing li[data-state=pending]');
    await ann.page.waitForSelector('#banner[data-kind=offline]');
    assert.equal(await ann.page.getAttribute('#status', 'data-unsent'), '1');
    await bob.page.fill('#body', 'See you on the other side');

    // Both windows side by side on one image.
    const shots = [await ann.page.screenshot(), await bob.page.screenshot()];
    const frame = await world.browser.newPage({ viewport: { width: 860, height: 700 } });
    const imgs = shots.map((b) => `<figure><img src="data:image/png;base64,${b.toString('base64')}"><figcaption>${''}</figcaption></figure>`);
    await frame.setContent(`<body style="margin:0;background:linear-gradient(135deg,#dfe7ef,#c9d6e3);display:flex;gap:20px;justify-content:center;align-items:center;height:100vh">
      ${imgs.join('').replace(/<figure>/g, '<figure style="margin:0;border-radius:14px;overflow:hidden;box-shadow:0 10px 30px #0003;line-height:0">')}
    </body>`);
    await frame.waitForFunction(() => [...document.images].every((i) => i.complete));
    const dir = join(repoRoot, 'test-artifacts');
    mkdirSync(dir, { recursive: true });
    const out = join(dir, 'screenshot.png');
    await frame.screenshot({ path: out });
    t.diagnostic(`screenshot: ${out}`);
    if (process.env.ACKLINE_UPDATE_SCREENSHOT === '1') {
      copyFileSync(out, join(repoRoot, 'docs', 'screenshot.png'));
      t.diagnostic('docs/screenshot.png updated');
    }

    // Back online: the waiting message goes out and is delivered.
    await ann.page.click('label.switch');
    await allDelivered(ann);
    assert.ok(await ann.page.isHidden('#banner'));
  });
});
