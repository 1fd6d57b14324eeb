// Starts `wrangler dev` (real workerd, local mode) on a free port with its own
// storage folder, for browser tests; can SIGKILL and restart it on the same storage.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdirSync, openSync, rmSync, existsSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

/** The JWT secret test edges run with (the demo gets tokens from the dev endpoint). */
export const TEST_SECRET = 'ackline-test-secret-not-for-production';

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export function freshStorage(name) {
  const dir = join(repoRoot, 'target', 'edge-storage', `${name}-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  return dir;
}

export class Edge {
  /** `vars`: extra Worker variables, e.g. `{ ACKLINE_RATE_PER_SEC: '100000' }` for load tests. */
  static async start(storage, { vars = {} } = {}) {
    const edge = new Edge(storage, await freePort());
    edge.vars = vars;
    await edge.spawn();
    return edge;
  }

  constructor(storage, port) {
    this.storage = storage;
    this.port = port;
    this.url = `http://127.0.0.1:${port}`;
    this.log = `${storage}.log`;
    this.child = null;
    this.vars = {};
  }

  async spawn() {
    const wrangler = join(repoRoot, 'node_modules', '.bin', 'wrangler');
    if (!existsSync(wrangler)) throw new Error(`${wrangler} is missing: run scripts/setup.sh`);
    if (!existsSync(join(repoRoot, 'edge-worker', 'build', 'index.js'))) {
      throw new Error('the edge worker is not built: run scripts/build.sh');
    }
    const out = openSync(this.log, 'a');
    this.child = spawn(wrangler, [
      'dev', '--local', '--ip', '127.0.0.1', '--port', String(this.port),
      '--persist-to', this.storage, '--live-reload=false', '--show-interactive-dev-session=false',
      '--inspector-port', String(await freePort()),
      '--var', `ACKLINE_JWT_SECRET:${TEST_SECRET}`, '--var', 'ACKLINE_DEV_TOKENS:1',
      ...Object.entries(this.vars).flatMap(([k, v]) => ['--var', `${k}:${v}`]),
    ], {
      cwd: repoRoot,
      // Own process group, so a kill reaches workerd too.
      detached: true,
      stdio: ['ignore', out, out],
      env: { ...process.env, WRANGLER_SEND_METRICS: 'false', CLOUDFLARE_CF_FETCH_ENABLED: 'false' },
    });
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.exited = exited;
    const deadline = Date.now() + 90_000;
    while (Date.now() < deadline) {
      try {
        const res = await fetch(`${this.url}/healthz`);
        if (res.ok) return;
      } catch { /* not up yet */ }
      const done = await Promise.race([exited.then(() => true), new Promise((r) => setTimeout(() => r(false), 200))]);
      if (done) throw new Error(`wrangler dev exited early; log: ${this.log}`);
    }
    throw new Error(`wrangler dev not ready after 90 s; log: ${this.log}`);
  }

  /** SIGKILLs wrangler and workerd together. */
  async kill() {
    if (!this.child) return;
    try { process.kill(-this.child.pid, 'SIGKILL'); } catch { /* already gone */ }
    await this.exited;
    this.child = null;
  }

  async restart() {
    await this.kill();
    await this.spawn();
  }
}
