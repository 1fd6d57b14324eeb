// Scenario 5: cat switches her tab offline (the demo's switch), the others
// send 5,000 messages, cat comes back: she catches up, and only then do the
// senders' ticks turn to delivered.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runScenario, waitConverged, assertConverged, log } from './lib/scenario.mjs';

const TOTAL = Number(process.env.ACKLINE_SCENARIO5_TOTAL || 5000);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test(`a member is offline while ${TOTAL} messages are sent, then comes back`, { timeout: 540_000 }, async (t) => {
  await runScenario(t, 'scenario-5-offline-member', {}, async (world) => {
    const [annLaptop, annPhone, bob, cat] = await world.openCast();
    const senders = [annLaptop, annPhone, bob];

    await cat.page.click('label.switch');
    await cat.page.waitForSelector('#status[data-state=offline]');
    await cat.page.waitForSelector('#banner[data-kind=offline]');
    log('cat is offline');

    const started = Date.now();
    const per = Math.ceil(TOTAL / senders.length);
    const counts = senders.map((_, i) => (i < senders.length - 1 ? per : TOTAL - per * (senders.length - 1)));
    await Promise.all(senders.map((d, i) => d.send(counts[i], { chunk: 10, pauseMs: 50 })));
    log(`queued ${TOTAL} in ${Date.now() - started} ms`);

    // Everything gets stored and shown on the online devices, but nothing can
    // be delivered while cat has not stored it.
    let lastLog = 0;
    for (;;) {
      const p = await Promise.all(senders.map((d) => d.progress()));
      if (p.every((x) => x.rows === TOTAL && x.unsent === 0)) {
        for (const [i, x] of p.entries()) {
          assert.equal(x.undelivered, counts[i], `${senders[i].device}: own messages must stay undelivered while cat is offline`);
        }
        break;
      }
      if (Date.now() - lastLog > 5000) {
        lastLog = Date.now();
        log(`stored so far: ${senders.map((d, i) => `${d.device} rows=${p[i].rows} unsent=${p[i].unsent}`).join(' | ')}`);
      }
      if (Date.now() - started > 360_000) throw new Error(`not all stored after 360 s: ${JSON.stringify(p)}`);
      await sleep(500);
    }
    const stored = Date.now() - started;
    log(`${TOTAL} stored and shown on the online devices after ${stored} ms`);
    const catWhileOff = await cat.progress();
    assert.equal(catWhileOff.rows, 0, 'cat received nothing while offline');

    await cat.page.click('label.switch');
    await cat.page.waitForSelector('#status[data-state=open]');
    const back = Date.now();
    await waitConverged([annLaptop, annPhone, bob, cat], TOTAL, { label: 'offline-member', timeoutMs: 300_000 });
    log(`cat caught up and every tick is delivered ${Date.now() - back} ms after she came back`);
    assert.ok(await cat.page.isHidden('#banner'), 'the banner goes away once online');
    await assertConverged([annLaptop, annPhone, bob, cat]);
  });
});
