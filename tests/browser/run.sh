#!/usr/bin/env bash
# Browser test of the web map against the real server binary:
#   GT06_BIN=target/debug/gt06 bash tests/browser/run.sh
# Optional: CHROMIUM (default /usr/bin/chromium), GT06_ARTIFACTS (where map.png goes).
set -euo pipefail
if [[ -z "${GT06_BIN:-}" ]]; then
  echo "run.sh: set GT06_BIN to the gt06 binary, e.g. GT06_BIN=target/debug/gt06 bash tests/browser/run.sh" >&2
  exit 2
fi
# A relative GT06_BIN is relative to where the caller stands, not to this directory.
if [[ "$GT06_BIN" != /* ]]; then
  GT06_BIN="$PWD/$GT06_BIN"
fi
export GT06_BIN
cd "$(dirname "${BASH_SOURCE[0]}")"
if [[ ! -d node_modules ]]; then
  npm ci --no-audit --no-fund
fi
exec node --test map.test.mjs
