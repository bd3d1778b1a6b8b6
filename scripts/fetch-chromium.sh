#!/usr/bin/env bash
# Makes sure a headless Chromium is available for the report rendering test: uses one on
# PATH (or $VIGIL_CHROMIUM), else installs Debian's `chromium` package with apt-get.
set -euo pipefail
if [ -n "${VIGIL_CHROMIUM:-}" ] && [ -x "$VIGIL_CHROMIUM" ]; then exit 0; fi
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then exit 0; fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: no Chromium found and no apt-get to install it; install Chromium and set VIGIL_CHROMIUM=/path/to/chromium" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "installing chromium (Debian package) for the report rendering test..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || {
  $SUDO apt-get update >/dev/null
  $SUDO apt-get install -y --no-install-recommends chromium >/dev/null
}
command -v chromium >/dev/null
