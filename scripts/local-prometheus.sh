#!/usr/bin/env bash
# Run a real Prometheus (Debian package) on 127.0.0.1:9090 that scrapes the Cryptex services
# running locally, with the alert and recording rules of monitoring/prometheus/rules.
#
#   scripts/local-prometheus.sh                 # install if missing, write config, run
#   scripts/local-prometheus.sh --write-config  # only write config + targets, then exit
#
# Targets: one per api.port / wsgateway.port / engine-*.port / dbproc.port file in
# .cryptex/ports/ (written by the launcher, each holding that process's ops port: /metrics is
# served there only, never on the API's or the gateway's public port). The target lists are
# rewritten every 5 s while Prometheus runs, so restarted services are followed. A job with
# no port file has no target (nothing is guessed). Data: .cryptex/prometheus/data.
#
# Environment (all optional):
#   CRYPTEX_STATE_DIR   default <repo>/.cryptex
#   CRYPTEX_API_TARGET  host:port of the API's ops port (instead of .cryptex/ports/api.port)
#   CRYPTEX_WS_TARGET   host:port of the gateway's ops port (instead of wsgateway.port)
#   PROMETHEUS_LISTEN   default 127.0.0.1:9090
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${CRYPTEX_STATE_DIR:-$REPO/.cryptex}"
PORTS_DIR="$STATE/ports"
PROM_DIR="$STATE/prometheus"
TARGETS_DIR="$PROM_DIR/targets"
CONFIG="$PROM_DIR/prometheus.yml"
API_TARGET="${CRYPTEX_API_TARGET:-}"
WS_TARGET="${CRYPTEX_WS_TARGET:-}"
LISTEN="${PROMETHEUS_LISTEN:-127.0.0.1:9090}"

install_prometheus() {
  command -v prometheus >/dev/null 2>&1 && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  echo "prometheus not found: installing Debian's package" >&2
  $sudo apt-get install -y --no-install-recommends prometheus \
    || { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends prometheus; }
}

# One file_sd JSON list per job from .cryptex/ports/<job>*.port (or the job's override
# target); written atomically.
write_targets() {
  mkdir -p "$TARGETS_DIR"
  local job file name port entries sep tmp override
  for job in api wsgateway engine dbproc; do
    entries="" sep=""
    case "$job" in
      api) override="$API_TARGET" ;;
      wsgateway) override="$WS_TARGET" ;;
      *) override="" ;;
    esac
    if [ -n "$override" ]; then
      entries="{\"targets\": [\"$override\"], \"labels\": {\"process\": \"$job\"}}"
    fi
    for file in "$PORTS_DIR/$job"*.port; do
      [ -z "$override" ] && [ -e "$file" ] || continue
      name="$(basename "$file" .port)"
      port="$(tr -dc '0-9' < "$file")"
      [ -n "$port" ] || continue
      entries="$entries$sep{\"targets\": [\"127.0.0.1:$port\"], \"labels\": {\"process\": \"$name\"}}"
      sep=", "
    done
    tmp="$(mktemp "$TARGETS_DIR/.$job.XXXXXX")"
    printf '[%s]\n' "$entries" > "$tmp"
    mv "$tmp" "$TARGETS_DIR/$job.json"
  done
}

write_config() {
  mkdir -p "$PROM_DIR/data"
  cat > "$CONFIG" <<YAML
# Written by scripts/local-prometheus.sh; edit monitoring/prometheus/prometheus.yml instead.
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - $REPO/monitoring/prometheus/rules/*.yaml
scrape_configs:
  - job_name: api
    file_sd_configs:
      - files: ["$TARGETS_DIR/api.json"]
        refresh_interval: 5s
  - job_name: wsgateway
    file_sd_configs:
      - files: ["$TARGETS_DIR/wsgateway.json"]
        refresh_interval: 5s
  - job_name: engine
    file_sd_configs:
      - files: ["$TARGETS_DIR/engine.json"]
        refresh_interval: 5s
  - job_name: dbproc
    file_sd_configs:
      - files: ["$TARGETS_DIR/dbproc.json"]
        refresh_interval: 5s
YAML
  write_targets
}

write_config
if [ "${1:-}" = "--write-config" ]; then
  echo "$CONFIG"
  exit 0
fi

install_prometheus
echo "Prometheus on http://$LISTEN (config $CONFIG, data $PROM_DIR/data)" >&2

# Follow services that restart on a new port; stops when Prometheus ($$ after exec) exits.
(
  while kill -0 $$ 2>/dev/null; do
    sleep 5
    write_targets || true
  done
) &

exec prometheus \
  --config.file="$CONFIG" \
  --storage.tsdb.path="$PROM_DIR/data" \
  --web.listen-address="$LISTEN" \
  --web.enable-lifecycle
