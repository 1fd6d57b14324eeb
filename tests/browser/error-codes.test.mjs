// The npm package's error codes: the `AcklineErrorCode` union in the shipped
// ackline.d.ts lists exactly the codes of the Rust enum (client-wasm/src/errors.rs,
// read at run time through the package's own `errorCodes()`), and the union
// is what TypeScript checks `code` fields against. Reads the package as
// scripts/build.sh unpacked it from the tarball (build/unpacked/package).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { repoRoot } from './lib/edge.mjs';

const pkgDir = join(repoRoot, 'build', 'unpacked', 'package');

function requirePackage() {
  assert.ok(existsSync(join(pkgDir, 'ackline.d.ts')), `${pkgDir} is missing: run scripts/build.sh`);
}

/** The string literals of `export type AcklineErrorCode = ...;` in the .d.ts. */
function unionInTypings() {
  const dts = readFileSync(join(pkgDir, 'ackline.d.ts'), 'utf8');
  const match = dts.match(/export type AcklineErrorCode\s*=([^;]*);/);
  assert.ok(match, 'ackline.d.ts declares AcklineErrorCode');
  const literals = [...match[1].matchAll(/"([^"]*)"/g)].map((m) => m[1]);
  const leftover = match[1].replace(/"[^"]*"/g, '').replace(/[|\s]/g, '');
  assert.equal(leftover, '', 'the union holds string literals only');
  return literals;
}

test('the AcklineErrorCode union of ackline.d.ts equals the Rust enum', async () => {
  requirePackage();
  const glue = await import(pathToFileURL(join(pkgDir, 'ackline.js')).href);
  glue.initSync({ module: readFileSync(join(pkgDir, 'ackline_bg.wasm')) });
  const rust = glue.errorCodes();
  assert.ok(rust.length > 20, `errorCodes() returned ${rust.length} codes`);
  assert.equal(new Set(rust).size, rust.length, 'codes are unique');
  assert.deepEqual(unionInTypings(), rust);
  // The shell's, the store's, the core's and the server's codes are all there.
  for (const code of ['closed', 'crypto_unavailable', 'store_quota', 'diverged', 'chain_mismatch', 'rate_limited', 'out_of_order']) {
    assert.ok(rust.includes(code), `${code} is listed`);
  }
  const dts = readFileSync(join(pkgDir, 'ackline.d.ts'), 'utf8');
  assert.match(dts, /export interface AcklineError extends Error \{ code: AcklineErrorCode; \}/);
});

test('TypeScript checks code fields against the union (and types resetInbox/diverged)', () => {
  requirePackage();
  const scratch = join(repoRoot, 'target', 'error-codes-check');
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(join(scratch, 'node_modules'), { recursive: true });
  cpSync(pkgDir, join(scratch, 'node_modules', 'ackline'), { recursive: true });
  writeFileSync(join(scratch, 'check.ts'), `
import { Ackline, Conversation, errorCodes, type AcklineError, type AcklineErrorCode, type Divergence } from 'ackline';

export function onError(e: AcklineError): AcklineErrorCode { return e.code; }
export const all: AcklineErrorCode[] = errorCodes();
export const known: AcklineErrorCode = 'diverged';
// @ts-expect-error: not a code
export const unknown: AcklineErrorCode = 'no_such_code';
export async function repair(room: Conversation): Promise<number | undefined> {
  room.on('diverged', (d: Divergence) => console.log(d.seq, d.serverHead));
  const done: Promise<void> = room.resetInbox();
  await done;
  return room.diverged?.serverHead;
}
export function listen(client: Ackline): void {
  client.on('error', (e) => { const c: AcklineErrorCode = e.code; console.log(c); });
  client.on('status', (s) => { const c: AcklineErrorCode | undefined = s.lastError?.code; console.log(c); });
}
`);
  writeFileSync(join(scratch, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      strict: true, noEmit: true, target: 'ES2022', module: 'ES2022', moduleResolution: 'bundler',
      lib: ['ES2022', 'ESNext.Disposable', 'DOM'], types: [], skipLibCheck: false,
    },
    files: ['check.ts'],
  }));
  const tsc = join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', scratch], { encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    assert.fail(`tsc failed:\n${e.stdout}${e.stderr}`);
  }
});
