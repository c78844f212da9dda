#!/usr/bin/env bash
# A local stand-in for python:3.11-slim-bookworm, for machines that reach no container registry:
# Debian bookworm (debootstrap minbase) with Debian's python3.11 and a venv at /usr/local, so that
# `python` and `pip` are on the PATH where the official image has them. The root filesystem is kept
# as a tarball under ~/.cache/llamaserve (built once, ~1 minute); the image is imported from it when
# the container store lacks it. Prints the image name on stdout; everything else goes to stderr.
#
#   scripts/container-base.sh            # -> localhost/llamaserve-base:bookworm-py3.11-v2
#   make image PYTHON_IMAGE=$(scripts/container-base.sh)
set -euo pipefail

# Bump VERSION when the recipe changes, so that no machine reuses a stale cached base.
VERSION=2
IMAGE=${BASE_IMAGE:-localhost/llamaserve-base:bookworm-py3.11-v$VERSION}
CACHE=${LLAMASERVE_CACHE:-$HOME/.cache/llamaserve}/container-base
TARBALL=$CACHE/bookworm-python3.11-v$VERSION.tar
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ENGINE=${CONTAINER_ENGINE:-podman}

if "$ENGINE" image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"
  exit 0
fi

if [ ! -s "$TARBALL" ]; then
  command -v debootstrap >/dev/null || { echo "container-base: debootstrap is not installed" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "container-base: debootstrap needs root" >&2; exit 1; }
  mkdir -p "$CACHE"
  root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "container-base: debootstrap bookworm into $root (about a minute)" >&2
  debootstrap --variant=minbase \
    --include=ca-certificates,netbase,tzdata,python3.11,python3-venv,python3-distutils \
    bookworm "$root" "$MIRROR" >&2
  # The venv's pip comes from Debian's own wheels (python3-pip-whl): no network needed here.
  chroot "$root" /usr/bin/python3.11 -m venv /usr/local >&2
  chroot "$root" /usr/local/bin/python -m pip --version >&2
  # As Debian's official images do: apt keeps no package caches (pkgcache.bin alone is ~40 MB a layer).
  printf '%s\n' 'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' \
    'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' \
    > "$root/etc/apt/apt.conf.d/docker-clean"
  # What a slim image leaves out: package caches and lists, docs, translations.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
    "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/tmp/* "$root"/root/.cache
  tar -C "$root" --numeric-owner -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
fi

echo "container-base: importing $TARBALL as $IMAGE" >&2
"$ENGINE" import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$TARBALL" "$IMAGE" >&2
echo "$IMAGE"
