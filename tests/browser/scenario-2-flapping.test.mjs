// Scenario 2: every connection between the browsers and the edge is cut every
// 200-400 ms (seeded, through the chaos proxy) while 1,000 messages are sent.
import { test } from 'node:test';
import { runScenario, waitConverged, assertConverged, log } from './lib/scenario.mjs';

const SEED = Number(process.env.ACKLINE_CHAOS_SEED || 20261122);

test('connections cut every 200-400 ms while 1,000 messages are sent', { timeout: 300_000 }, async (t) => {
  t.diagnostic(`flapping seed ${SEED} (replay with ACKLINE_CHAOS_SEED=${SEED})`);
  await runScenario(t, 'scenario-2-flapping', { proxy: true }, async (world) => {
    const devices = await world.openCast();
    const started = Date.now();
    world.proxy.startFlapping(200, 400, SEED);
    await Promise.all(devices.map((d) => d.send(250, { chunk: 5, pauseMs: 40 })));
    log(`queued 1000 in ${Date.now() - started} ms`);
    // Keep flapping until every message is stored at least once.
    const deadline = Date.now() + 120_000;
    for (;;) {
      const p = await Promise.all(devices.map((d) => d.progress()));
      if (p.every((x) => x.outbox === 0)) break;
      if (Date.now() > deadline) throw new Error(`outboxes not drained under flapping: ${JSON.stringify(p)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    world.proxy.stopFlapping();
    log(`all stored after ${Date.now() - started} ms and ${world.proxy.cuts} cuts`);
    await waitConverged(devices, 1000, { label: 'flapping' });
    log(`1000 messages shown and delivered everywhere ${Date.now() - started} ms after the first send`);
    await assertConverged(devices);
  });
});
