// Launches Debian's headless Chromium through playwright-core (never a downloaded browser).
import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from './edge.mjs';

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

export async function launchBrowser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic',
      '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
    ],
  });
}

/** Saves a screenshot and the console log of `page` under test-artifacts/ (for failures). */
export async function saveArtifacts(page, name, consoleLines) {
  const dir = join(repoRoot, 'test-artifacts');
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: join(dir, `${name}.png`) }).catch(() => {});
  const { writeFileSync } = await import('node:fs');
  writeFileSync(join(dir, `${name}.console.txt`), consoleLines.join('\n'));
  return dir;
}

export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), prefix));
}
