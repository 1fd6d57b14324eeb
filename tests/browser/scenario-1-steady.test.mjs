// Scenario 1: a steady conversation. Four devices (ann on two, bob, cat), 500
// messages from all of them, interleaved; no faults.
import { test } from 'node:test';
import { runScenario, waitConverged, assertConverged, log } from './lib/scenario.mjs';

test('steady conversation: 500 messages from all members', { timeout: 300_000 }, async (t) => {
  await runScenario(t, 'scenario-1-steady', {}, async (world) => {
    const devices = await world.openCast();
    const started = Date.now();
    await Promise.all(devices.map((d) => d.send(125, { chunk: 5, pauseMs: 25 })));
    log(`queued 500 in ${Date.now() - started} ms`);
    await waitConverged(devices, 500, { label: 'steady' });
    log(`500 messages shown and delivered everywhere ${Date.now() - started} ms after the first send`);
    await assertConverged(devices);
  });
});
