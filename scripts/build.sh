#!/usr/bin/env bash
# Builds the browser client (npm package in client-wasm/pkg), the demo app
# (build/www) and the edge worker (edge-worker/build). Run scripts/setup.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
say() { printf '[build] %s\n' "$*"; }

say "client-wasm -> client-wasm/pkg (wasm-pack, --target web)"
# --mode no-install: use the pinned wasm-bindgen on PATH, never download one.
# --profile client: the size-optimised profile of Cargo.toml.
wasm-pack --quiet build client-wasm --profile client --target web --mode no-install --out-dir pkg --out-name ackline >/dev/null
"$root/node_modules/.bin/wasm-opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals \
  client-wasm/pkg/ackline_bg.wasm -o client-wasm/pkg/ackline_bg.wasm

say "npm package -> build/ackline-<version>.tgz (npm pack)"
mkdir -p build
rm -f build/ackline-*.tgz
(cd client-wasm/pkg && npm pack --silent --pack-destination "$root/build" >/dev/null)

say "demo app -> build/www (the package taken from the tarball, as a user gets it)"
rm -rf build/www build/unpacked
mkdir -p build/www/pkg build/unpacked
cp www/*.html www/*.css www/*.js build/www/
tar -xzf build/ackline-*.tgz -C build/unpacked
cp build/unpacked/package/ackline.js build/unpacked/package/ackline_bg.wasm build/www/pkg/

say "edge-worker -> edge-worker/build (worker-build)"
(
  cd edge-worker
  WASM_BINDGEN_BIN=$(command -v wasm-bindgen) \
  ESBUILD_BIN="$root/node_modules/@esbuild/linux-x64/bin/esbuild" \
  WASM_OPT_BIN="$root/node_modules/.bin/wasm-opt" \
    worker-build --release >/dev/null
)
say "done"
