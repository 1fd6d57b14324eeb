#!/usr/bin/env bash
# Installs what Ackline needs to build and test, skipping whatever is already there.
# Only package registries are used: crates.io (cargo), npm, Debian (apt).
# Safe to run any number of times; `make dev` and `make test` both run it.
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned tool versions. WASM_BINDGEN_VERSION must equal the `wasm-bindgen` crate
# pinned in Cargo.toml (=0.2.130), or worker-build and wasm-pack refuse it.
WASM_BINDGEN_VERSION=0.2.130
WORKER_BUILD_VERSION=0.8.7
WASM_PACK_VERSION=0.15.1

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

command -v cargo >/dev/null || die "cargo not found. Install Rust with rustup (https://rustup.rs) and re-run."
command -v rustup >/dev/null || die "rustup not found: the wasm32 target is added with rustup. Install Rust with rustup."
command -v node >/dev/null || die "node not found. Install Node.js >= 20 (Debian: apt-get install nodejs npm)."
command -v npm >/dev/null || die "npm not found. Install npm (Debian: apt-get install npm)."
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js >= 20 is required, found $(node --version)."

if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  say "wasm32-unknown-unknown target: present"
else
  say "adding the wasm32-unknown-unknown target"
  rustup target add wasm32-unknown-unknown || die "could not add the wasm32 target (rustup target add wasm32-unknown-unknown)"
fi

# cargo_tool BIN CRATE VERSION: installs CRATE@VERSION unless BIN --version reports it.
cargo_tool() {
  local bin=$1 crate=$2 version=$3
  if command -v "$bin" >/dev/null && "$bin" --version 2>/dev/null | grep -qE "(^| )$version\b"; then
    say "$crate $version: present"
    return
  fi
  say "installing $crate $version with cargo (takes a few minutes on 2 cores)"
  if ! cargo install --locked "$crate" --version "$version" --quiet; then
    # A crate's published lock file can name a dependency version that the
    # registry no longer serves (yanked); then resolve afresh within semver.
    say "$crate: --locked install failed; retrying with a fresh dependency resolution"
    cargo install "$crate" --version "$version" --quiet ||
      die "could not install $crate $version from crates.io (cargo install $crate --version $version)"
  fi
}
cargo_tool wasm-bindgen wasm-bindgen-cli "$WASM_BINDGEN_VERSION"
cargo_tool worker-build worker-build "$WORKER_BUILD_VERSION"
cargo_tool wasm-pack wasm-pack "$WASM_PACK_VERSION"

# npm dev tools (wrangler + workerd, esbuild, binaryen, playwright-core), pinned by
# package-lock.json. A stamp records which lock file node_modules was built from.
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ -f node_modules/.ackline-lock ] && [ "$(cat node_modules/.ackline-lock)" = "$lock_sum" ]; then
  say "npm dependencies: present"
else
  say "installing npm dependencies (npm ci)"
  npm ci --no-audit --no-fund --loglevel=error || die "npm ci failed: check the npm registry is reachable"
  echo "$lock_sum" > node_modules/.ackline-lock
fi

# Debian's Chromium and ChromeDriver for the browser tests.
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  say "chromium + chromedriver: present"
else
  say "installing Debian's chromium and chromium-driver with apt-get"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "chromium is missing and this user is not root: run 'apt-get install -y chromium chromium-driver' as root"
    sudo_cmd=(sudo)
  fi
  command -v apt-get >/dev/null || die "chromium is missing and apt-get is not available: install Chromium and ChromeDriver so that /usr/bin/chromium and /usr/bin/chromedriver exist"
  "${sudo_cmd[@]}" apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq chromium chromium-driver >/dev/null ||
    die "apt-get install chromium chromium-driver failed"
fi
say "done"
