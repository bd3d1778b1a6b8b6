#!/usr/bin/env bash
# The main job: build Vigil, generate synthetic telemetry (with rings, an incident and drift)
# and run every stage on it, ending with demo/report.html. Extra args go to `vigil demo`
# (e.g. --events 1000000, --out DIR, --profile notebook).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p vigil
exec target/release/vigil demo "$@"
