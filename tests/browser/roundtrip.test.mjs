// The demo page in real headless Chromium against real workerd: a typed line
// comes back with the seq the Durable Object stored in SQLite, and the stored
// row survives a SIGKILL + restart of the edge.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Edge, freshStorage } from './lib/edge.mjs';
import { launchBrowser, saveArtifacts } from './lib/browser.mjs';

let edge;
let browser;

before(async () => {
  edge = await Edge.start(freshStorage('browser-roundtrip'));
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await edge?.kill();
});

async function sendLine(page, text) {
  await page.fill('#body', text);
  await page.click('#composer button[type=submit]');
  const item = page.locator('#messages li[data-seq]', { hasText: text });
  await item.waitFor({ timeout: 15_000 });
  return Number(await item.getAttribute('data-seq'));
}

test('a line round-trips through the Durable Object and survives a restart', async (t) => {
  const page = await browser.newPage();
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  try {
    await page.goto(`${edge.url}/?c=skeleton&user=ann&device=ann-web`);
    await page.waitForSelector('#status[data-state=open]', { timeout: 15_000 });
    assert.equal(await page.locator('#messages li').count(), 0);
    assert.equal(await sendLine(page, 'hello from chromium'), 1);
    assert.equal(await sendLine(page, 'second line'), 2);

    await edge.restart();
    await page.reload();
    await page.waitForSelector('#status[data-state=open]', { timeout: 15_000 });
    // Shown from the page's IndexedDB and checked against the restarted edge.
    await page.locator('#messages li[data-seq="2"]').waitFor({ timeout: 15_000 });
    assert.equal(await page.locator('#messages li[data-seq]').count(), 2);
    assert.equal(await sendLine(page, 'after restart'), 3, 'the edge kept seqs 1 and 2 across SIGKILL');
  } catch (err) {
    const dir = await saveArtifacts(page, 'roundtrip', consoleLines);
    t.diagnostic(`artifacts in ${dir}`);
    throw err;
  } finally {
    await page.close();
  }
});
