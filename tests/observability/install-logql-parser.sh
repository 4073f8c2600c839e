#!/usr/bin/env bash
# Install the LogQL parser Grafana itself uses (@grafana/lezer-logql) into
# <repo>/.tools/lezer-logql (git-ignored). Needs node and npm (Debian: apt-get install -y nodejs npm).
# Used by tests/observability/test_queries_parse.py through logql_parse.mjs.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$REPO/.tools/lezer-logql"
VERSION="0.4.2"
mkdir -p "$DEST"
if [ -f "$DEST/node_modules/@grafana/lezer-logql/package.json" ] \
   && grep -q "\"version\": \"$VERSION\"" "$DEST/node_modules/@grafana/lezer-logql/package.json"; then
  exit 0
fi
[ -f "$DEST/package.json" ] || echo '{"name": "cryptex-logql-tools", "private": true}' > "$DEST/package.json"
npm install --prefix "$DEST" --no-audit --no-fund --silent "@grafana/lezer-logql@$VERSION"
