#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/browser), driven by Python Playwright with
# executable_path=/usr/bin/chromium; Playwright's own browser download is never used.
# Idempotent; quick when Chromium is present. sudo only when not root.
# Python Playwright itself is a pip package: .venv/bin/pip install playwright
set -euo pipefail
CHROMIUM=${CRYPTEX_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y -qq --no-install-recommends chromium >&2 || \
  { $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq --no-install-recommends chromium >&2; }
if [ ! -x "$CHROMIUM" ]; then
  echo "install-browser: chromium installed but $CHROMIUM is missing" >&2
  exit 1
fi
"$CHROMIUM" --version >&2 2>/dev/null || true
