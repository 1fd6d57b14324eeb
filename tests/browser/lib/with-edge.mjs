// Runs a command with a fresh edge (wrangler dev on workerd) started for it:
//   node tests/browser/lib/with-edge.mjs <name> -- <command> [args...]
// The command sees the edge's base URL in ACKLINE_EDGE_URL; the edge is killed
// afterwards and the command's exit code is passed on.
import { spawn } from 'node:child_process';
import { Edge, freshStorage } from './edge.mjs';

const sep = process.argv.indexOf('--');
if (sep < 3 || sep === process.argv.length - 1) {
  console.error('usage: with-edge.mjs <name> -- <command> [args...]');
  process.exit(2);
}
const name = process.argv[2];
const [command, ...args] = process.argv.slice(sep + 1);
const edge = await Edge.start(freshStorage(name));
console.log(`[with-edge] edge on ${edge.url} (log: ${edge.log})`);
const child = spawn(command, args, { stdio: 'inherit', env: { ...process.env, ACKLINE_EDGE_URL: edge.url } });
const code = await new Promise((resolve) => child.on('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0))));
await edge.kill();
process.exit(code);
