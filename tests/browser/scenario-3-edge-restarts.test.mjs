// Scenario 3: the edge (wrangler + workerd) is SIGKILLed and restarted on the
// same storage and port twice while the members are sending.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runScenario, waitConverged, assertConverged, log } from './lib/scenario.mjs';

const TOTAL = 800;

/** Waits until some device shows seq `n` (so the edge was storing traffic). */
async function whenStored(devices, n) {
  for (;;) {
    const p = await Promise.all(devices.map((d) => d.progress()));
    if (Math.max(...p.map((x) => x.newest)) >= n) return p;
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('the edge is killed and restarted twice during sending', { timeout: 300_000 }, async (t) => {
  await runScenario(t, 'scenario-3-edge-restarts', {}, async (world) => {
    const devices = await world.openCast();
    const started = Date.now();
    const sending = Promise.all(devices.map((d) => d.send(TOTAL / devices.length, { chunk: 2, pauseMs: 50 })));
    // Kill while messages are in flight: once the edge has stored a quarter,
    // and again after it came back and stored up to half.
    for (const at of [TOTAL / 4, TOTAL / 2]) {
      const p = await whenStored(devices, at);
      const inFlight = p.reduce((n, x) => n + x.outbox, 0);
      log(`SIGKILL the edge with ${inFlight} messages in outboxes, newest shown seq ${Math.max(...p.map((x) => x.newest))}`);
      assert.ok(inFlight > 0, 'the kill should happen while messages are in flight');
      const down = Date.now();
      await world.edge.kill();
      await world.edge.spawn();
      log(`edge back after ${Date.now() - down} ms`);
    }
    await sending;
    log(`queued ${TOTAL} in ${Date.now() - started} ms`);
    await waitConverged(devices, TOTAL, { label: 'restarts' });
    log(`${TOTAL} messages shown and delivered everywhere ${Date.now() - started} ms after the first send`);
    await assertConverged(devices);
  });
});
