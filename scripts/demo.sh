#!/usr/bin/env bash
# The main job: generate 1M synthetic events, then run the whole pipeline on them.
# Outputs land in ./demo/out (override with DEMO_DIR=...). Extra args go to `vigil generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${DEMO_DIR:-demo}"
cargo build --release --locked -p vigil
bin=target/release/vigil
"$bin" generate --events "${DEMO_EVENTS:-1000000}" --incident-day 9 --drift --rings 12 --out "$dir/events.csv" "$@"
rm -rf "$dir/out"
"$bin" run --input "$dir/events.csv" --out "$dir/out"
echo "done: see $dir/out (run.json lists every file)"
