#!/usr/bin/env bash
# System packages the test suite drives for real: promtool/prometheus (metrics) and chromium (web UI);
# with RUN_CONTAINER_TESTS=1 (.ci/run sets it) also podman with runc, iptables for its
# network, and debootstrap for the local base image (tests/container/). Installed only when
# missing, so repeated runs cost nothing.
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${RUN_CONTAINER_TESTS:-}" = 1 ]; then
  # netavark (with aardvark-dns) named, not left to apt: with --no-install-recommends apt may pick
  # the CNI plugins for podman's network stack instead, which is not the set-up checked here.
  command -v podman >/dev/null 2>&1 || need+=(podman netavark aardvark-dns)
  command -v runc >/dev/null 2>&1 || need+=(runc)
  command -v iptables >/dev/null 2>&1 || need+=(iptables)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "test-deps: missing ${need[*]} and cannot apt-get install them; those tests will be skipped" >&2
  fi
fi
