#!/usr/bin/env bash
# The Python package's tests: builds the wheel with maturin (the dev profile, so it reuses the
# crates `cargo test` compiled), installs it into a fresh virtual environment with only pytest
# beside it, and runs crates/python/tests. Called by ./scripts/test.sh, which sets VIGIL_SHARED,
# VIGIL_MODEL and VIGIL_MOTO_SERVER.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="${VIGIL_PY_TOOLS:-.venv-test}"
if [ ! -x "$tools/bin/maturin" ]; then
  echo "installing maturin (PyPI) into $tools..." >&2
  [ -x "$tools/bin/python" ] || python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet "maturin>=1.7,<2"
fi
wheels=target/wheels-test
rm -rf "$wheels"
"$tools/bin/maturin" build --profile dev --manifest-path crates/python/Cargo.toml \
  --features workspace-features \
  --interpreter python3 --out "$wheels" --compatibility linux --locked
venv=target/python-test-venv
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet "$wheels"/vigil-*.whl "pytest>=7" pyarrow pandas
# The pipeline tests compare with the CLI `cargo test` built.
export VIGIL_BIN="${VIGIL_BIN:-$(pwd)/target/debug/vigil}"
cd crates/python/tests
"../../../$venv/bin/python" -m pytest -q -p no:cacheprovider .
