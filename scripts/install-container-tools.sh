#!/usr/bin/env bash
# Rootful buildah/podman for the image tier (tests/images): Debian's buildah, podman, runc,
# skopeo, umoci, catatonit (podman's pause process for pods and `kube play`), slirp4netns
# (a network namespace per rendered pod, reaching the host's loopback) and debootstrap (the
# local python base, since no registry can be pulled from). Idempotent: installs only what
# is missing and writes /etc/containers/containers.conf only when it does not exist.
# Exits 0 with a message on stderr when it cannot install (no apt, not root and no sudo):
# the tier then skips with that reason locally (and fails with CI=true).
set -euo pipefail
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"

need=()
for tool in buildah podman runc skopeo umoci slirp4netns debootstrap; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
[ -x /usr/bin/catatonit ] || [ -x /usr/libexec/podman/catatonit ] || need+=(catatonit)
if [ ${#need[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "install-container-tools: no apt-get; missing: ${need[*]}" >&2; exit 0
  fi
  if [ -n "$sudo" ] && ! sudo -n true 2>/dev/null; then
    echo "install-container-tools: not root and no sudo; missing: ${need[*]}" >&2; exit 0
  fi
  echo "installing container tools: ${need[*]} ..." >&2
  install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >&2; }
  install || { $sudo apt-get update -qq >&2 && install; } || {
    echo "install-container-tools: apt-get install ${need[*]} failed" >&2; exit 0; }
fi

# Containers inside this (unprivileged, cgroup-less) machine: cgroupfs, no journald, runc,
# the host network (no CNI/netavark needed), and ulimits at or below the hard limits here
# (podman's default nofile=1048576 fails with `setrlimit RLIMIT_NOFILE`).
conf=/etc/containers/containers.conf
if [ ! -e "$conf" ]; then
  $sudo mkdir -p /etc/containers
  $sudo tee "$conf" >/dev/null <<'CONF'
# Written by cryptex scripts/install-container-tools.sh (only when absent).
[containers]
netns = "host"
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
CONF
  echo "wrote $conf" >&2
fi
