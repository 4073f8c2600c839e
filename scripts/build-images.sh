#!/usr/bin/env bash
# Build the five Cryptex images with buildah, no Docker engine and no registry needed.
#
#   scripts/build-images.sh [--base-only] [component ...]     (components: api engine wsgateway dbproc operator)
#
# 1. The base: the official python image cannot be pulled here, so a Debian bookworm root
#    filesystem with python3 and python3-venv is made with debootstrap (about 2 minutes) and
#    committed as $CRYPTEX_PYTHON_BASE (default localhost/cryptex-python-base:bookworm).
#    Skipped when that image exists (`podman rmi` it to remake it).
# 2. Each image: `buildah bud --pull=never --build-arg PYTHON_IMAGE=$CRYPTEX_PYTHON_BASE`,
#    tagged $CRYPTEX_IMAGE_PREFIX/<component>:$CRYPTEX_IMAGE_TAG (default localhost/cryptex/<c>:dev).
#    Unchanged layers come from buildah's cache; the image a rebuilt tag replaced is removed.
# Prints each image's build time and size. Needs root and scripts/install-container-tools.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASE=${CRYPTEX_PYTHON_BASE:-localhost/cryptex-python-base:bookworm}
PREFIX=${CRYPTEX_IMAGE_PREFIX:-localhost/cryptex}
TAG=${CRYPTEX_IMAGE_TAG:-dev}
SUITE=bookworm

base_only=0; components=()
for arg in "$@"; do
  case "$arg" in
    --base-only) base_only=1 ;;
    api|engine|wsgateway|dbproc|operator) components+=("$arg") ;;
    *) echo "usage: $0 [--base-only] [api|engine|wsgateway|dbproc|operator ...]" >&2; exit 2 ;;
  esac
done
[ ${#components[@]} -gt 0 ] || components=(api engine wsgateway dbproc operator)

# The Debian mirror this machine's apt uses (deb822 `URIs:` or one-line `deb` entries).
mirror() {
  if [ -n "${CRYPTEX_DEBIAN_MIRROR:-}" ]; then echo "$CRYPTEX_DEBIAN_MIRROR"; return; fi
  local m
  m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
  echo "${m:-http://deb.debian.org/debian}"
}

make_base() {
  if podman image exists "$BASE"; then
    echo "base $BASE exists (cached)" >&2; return
  fi
  local t0=$SECONDS dir
  dir=$(mktemp -d /var/tmp/cryptex-base.XXXXXX)
  trap 'rm -rf "$dir"' RETURN
  echo "debootstrap $SUITE from $(mirror) into $dir ..." >&2
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$dir/rootfs" "$(mirror)" > "$dir/debootstrap.log" 2>&1 \
    || { tail -n 30 "$dir/debootstrap.log" >&2; rm -rf "$dir"; exit 1; }
  # This machine reaches PyPI through an egress proxy with its own CA: the local anchors
  # (/usr/local/share/ca-certificates) go into the base so pip inside `buildah bud` trusts it.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$dir/rootfs/usr/local/share/ca-certificates/"
    chroot "$dir/rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$dir"/rootfs/var/cache/apt/archives/*.deb "$dir"/rootfs/var/lib/apt/lists/* \
    "$dir"/rootfs/usr/share/doc/* "$dir"/rootfs/usr/share/man/* "$dir"/rootfs/usr/share/info/* \
    "$dir"/rootfs/var/log/* "$dir"/rootfs/tmp/*
  find "$dir/rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
  # proc/sys/dev stay empty directories: the runtime mounts them. Copied with `cp -a` into
  # the mounted container (owners, groups and modes as debootstrap made them: /etc/shadow
  # stays root:shadow); `buildah copy` (everything owned by root) where mounting fails.
  local ctr mnt
  ctr=$(buildah from scratch)
  if mnt=$(buildah mount "$ctr" 2>/dev/null); then
    cp -a "$dir/rootfs/." "$mnt/"
    buildah umount "$ctr" >/dev/null
  else
    buildah copy --quiet "$ctr" "$dir/rootfs" / >/dev/null
  fi
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    --cmd python3 --label org.opencontainers.image.title=cryptex-python-base \
    --label org.opencontainers.image.description="Debian $SUITE minbase + python3, python3-venv (debootstrap)" "$ctr"
  buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
  echo "base $BASE made in $((SECONDS - t0)) s, $(podman image inspect --format '{{.Size}}' "$BASE") bytes" >&2
}

dockerfile() { if [ "$1" = operator ]; then echo operator/Dockerfile; else echo "apps/$1/Dockerfile"; fi; }

make_base
[ "$base_only" -eq 0 ] || exit 0
cd "$ROOT"
printf '%-10s %8s %10s  %s\n' image seconds MB name
for c in "${components[@]}"; do
  t0=$SECONDS
  previous=$(podman image inspect --format '{{.Id}}' "$PREFIX/$c:$TAG" 2>/dev/null || true)
  buildah bud --quiet --pull=never --isolation chroot --network host --layers \
    --build-arg "PYTHON_IMAGE=$BASE" -f "$(dockerfile "$c")" -t "$PREFIX/$c:$TAG" . >/dev/null
  size=$(podman image inspect --format '{{.Size}}' "$PREFIX/$c:$TAG")
  # The image this tag named before (rebuilt after a source change): remove it, so repeated
  # test runs do not pile up a /venv layer each. Skipped if a container still uses it.
  current=$(podman image inspect --format '{{.Id}}' "$PREFIX/$c:$TAG")
  if [ -n "$previous" ] && [ "$previous" != "$current" ]; then podman rmi "$previous" >/dev/null 2>&1 || true; fi
  printf '%-10s %8d %10.1f  %s\n' "$c" $((SECONDS - t0)) "$(awk -v s="$size" 'BEGIN { print s / 1e6 }')" "$PREFIX/$c:$TAG"
done
