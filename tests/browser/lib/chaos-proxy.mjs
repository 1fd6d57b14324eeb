// A small chaos TCP proxy between browsers and `wrangler dev`: it forwards bytes
// both ways and, on command or on a seeded schedule, cuts every connection
// (both sides see a reset) or blackholes them (sockets stay open, bytes vanish:
// a half-open connection that only a heartbeat can detect).
import { createServer, connect } from 'node:net';

/** mulberry32: a tiny seeded PRNG, so a schedule can be replayed from its seed. */
export function seededRandom(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class ChaosProxy {
  /** Listens on a free 127.0.0.1 port and forwards to `targetPort`. */
  static async start(targetPort) {
    const proxy = new ChaosProxy(targetPort);
    await new Promise((resolve, reject) => {
      proxy.server.once('error', reject);
      proxy.server.listen(0, '127.0.0.1', resolve);
    });
    proxy.port = proxy.server.address().port;
    proxy.url = `http://127.0.0.1:${proxy.port}`;
    return proxy;
  }

  constructor(targetPort) {
    this.targetPort = targetPort;
    this.pairs = new Set();
    this.blackholed = false;
    this.cuts = 0;
    this.timer = null;
    this.server = createServer((client) => this.accept(client));
  }

  accept(client) {
    const upstream = connect(this.targetPort, '127.0.0.1');
    const pair = { client, upstream };
    this.pairs.add(pair);
    const forward = (from, to) => from.on('data', (chunk) => {
      if (!this.blackholed && !to.destroyed) to.write(chunk);
    });
    forward(client, upstream);
    forward(upstream, client);
    const drop = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
  }

  /** Resets every open connection. */
  cutAll() {
    this.cuts += 1;
    for (const { client, upstream } of this.pairs) {
      client.resetAndDestroy?.() ?? client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }

  /** While on, bytes are swallowed in both directions and sockets stay open. */
  setBlackhole(on) {
    this.blackholed = on;
  }

  /** Cuts all connections every `minMs`..`maxMs` (seeded), until `stopFlapping`. */
  startFlapping(minMs, maxMs, seed) {
    const random = seededRandom(seed);
    const next = () => {
      this.timer = setTimeout(() => {
        this.cutAll();
        next();
      }, minMs + random() * (maxMs - minMs));
    };
    this.stopFlapping();
    next();
  }

  stopFlapping() {
    clearTimeout(this.timer);
    this.timer = null;
  }

  async close() {
    this.stopFlapping();
    this.cutAll();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
