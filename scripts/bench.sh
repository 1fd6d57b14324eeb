#!/usr/bin/env bash
# Benchmarks (not part of `make test`): builds, then runs the native benchmark
# through real workerd and the browser benchmark (Ackline vs Socket.IO 4 in
# headless Chromium) and prints the tables; JSON goes to target/bench/.
# Usage: scripts/bench.sh [--runs N] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
echo "machine: $(nproc) cores, $(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "versions: $(rustc --version), node $(node --version), wrangler $(node_modules/.bin/wrangler --version 2>/dev/null | tail -1)"
cargo run --release -q -p ackline-tests --bin bench -- --out target/bench/native.json "$@"
node tests/browser/bench/run.mjs --out target/bench/browser.json "$@"
for f in client-wasm/pkg/ackline_bg.wasm client-wasm/pkg/ackline.js; do
  printf '| size %s | %d bytes | %d bytes gzipped |\n' "$(basename "$f")" "$(wc -c < "$f")" "$(gzip -9 -c "$f" | wc -c)"
done
