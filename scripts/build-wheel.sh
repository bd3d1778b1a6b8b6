#!/usr/bin/env bash
# Builds the Python wheel (package `vigil`, module `vigil_sentinel`) into target/wheels/ with
# maturin from PyPI (installed into .venv-build when absent). Then, in any virtual environment:
#   pip install target/wheels/vigil-*.whl
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-build/bin/maturin ]; then
  echo "installing maturin (PyPI) into .venv-build..." >&2
  python3 -m venv .venv-build
  .venv-build/bin/pip install --quiet "maturin>=1.7,<2"
fi
.venv-build/bin/maturin build --release --strip --manifest-path crates/python/Cargo.toml \
  --interpreter python3 --locked "$@"
