#!/usr/bin/env bash
# Command 1: builds everything and runs Ackline locally: the edge worker and its
# Durable Objects on real workerd (wrangler dev, local mode) and the demo app
# from the same origin. Storage persists in .state/dev (delete it to start over).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
port=${PORT:-8787}
mkdir -p .state/dev
# Local-only settings read by wrangler dev: a random JWT secret and the dev token
# endpoint the demo uses. Never commit this file (it is ignored).
if [ ! -f .dev.vars ]; then
  printf 'ACKLINE_JWT_SECRET=%s\nACKLINE_DEV_TOKENS=1\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" > .dev.vars
  echo "[dev] wrote .dev.vars (random local JWT secret, dev tokens enabled)"
fi
echo
echo "Ackline is starting on http://127.0.0.1:$port/  (open it in two windows; Ctrl-C stops)"
echo
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
exec node_modules/.bin/wrangler dev --local --ip 127.0.0.1 --port "$port" \
  --persist-to .state/dev --live-reload=false --show-interactive-dev-session=false
