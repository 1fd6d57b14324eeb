#!/usr/bin/env bash
# Command 2: installs what is missing, builds, and runs every test suite:
#   1. native cargo tests: protocol unit/property tests, the fault simulator, and
#      integration tests that start real `wrangler dev` (workerd) themselves;
#   2. wasm-pack test --headless --chrome: the client in real Chromium;
#   3. the npm package: the packed tarball's contents and its TypeScript types;
#   4. browser end-to-end tests: Playwright + Debian Chromium via `node --test`.
# Every suite runs even if an earlier one failed; the exit code is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false

bash scripts/setup.sh || exit 1
bash scripts/build.sh || exit 1

failed=()
passed=()
suite() {
  local name=$1; shift
  local start=$SECONDS
  printf '\n==== %s: %s\n' "$name" "$*"
  if "$@"; then
    passed+=("$name")
    printf '==== %s passed in %ss\n' "$name" $((SECONDS - start))
  else
    failed+=("$name")
    printf '==== %s FAILED in %ss\n' "$name" $((SECONDS - start))
  fi
}

suite native cargo test --no-fail-fast
# The client's session tests talk to a real edge that this wrapper starts; its
# URL is compiled into the tests through ACKLINE_EDGE_URL.
export WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-600}
suite wasm-browser node tests/browser/lib/with-edge.mjs wasm-client -- \
  wasm-pack test --headless --chrome --mode no-install client-wasm
suite npm-package node --test tests/package/
suite e2e-browser node --test --test-concurrency=1 tests/browser/

printf '\n==== summary\n'
for s in "${passed[@]}"; do printf '  passed  %s\n' "$s"; done
for s in "${failed[@]}"; do printf '  FAILED  %s\n' "$s"; done
printf 'suites: %d passed, %d failed\n' "${#passed[@]}" "${#failed[@]}"
[ ${#failed[@]} -eq 0 ]
