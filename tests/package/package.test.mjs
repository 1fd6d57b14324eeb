// The npm package as a user gets it: `npm pack` output installed into a scratch
// project; its TypeScript types compile the README-style example under --strict.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const tarballs = readdirSync(join(root, 'build')).filter((f) => /^ackline-.*\.tgz$/.test(f));

test('the packed tarball has what the package.json promises', () => {
  assert.equal(tarballs.length, 1, `expected one build/ackline-*.tgz (run scripts/build.sh), found ${tarballs}`);
  const list = execFileSync('tar', ['-tzf', join(root, 'build', tarballs[0])], { encoding: 'utf8' });
  for (const file of ['package/package.json', 'package/ackline.js', 'package/ackline_bg.wasm', 'package/ackline.d.ts', 'package/README.md']) {
    assert.ok(list.includes(file), `${file} missing from the tarball`);
  }
});

test('the example type-checks against the installed package with --strict', () => {
  const scratch = join(root, 'target', 'package-check');
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(scratch, { recursive: true });
  cpSync(join(root, 'tests', 'package', 'example.ts'), join(scratch, 'example.ts'));
  cpSync(join(root, 'tests', 'package', 'tsconfig.json'), join(scratch, 'tsconfig.json'));
  // Unpack the tarball as node_modules/ackline, the way npm install lays it out.
  const modules = join(scratch, 'node_modules');
  mkdirSync(modules, { recursive: true });
  execFileSync('tar', ['-xzf', join(root, 'build', tarballs[0]), '-C', modules]);
  cpSync(join(modules, 'package'), join(modules, 'ackline'), { recursive: true });
  const pkg = JSON.parse(readFileSync(join(modules, 'ackline', 'package.json'), 'utf8'));
  assert.equal(pkg.name, 'ackline');
  assert.ok(existsSync(join(modules, 'ackline', pkg.types)));
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  try {
    execFileSync(process.execPath, [tsc, '-p', scratch], { encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    assert.fail(`tsc failed:\n${e.stdout}${e.stderr}`);
  }
});
