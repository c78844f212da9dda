#!/usr/bin/env bash
# `make image`: the llamaserve image, built with podman (or docker where podman is missing).
#
# - The llama-cpp-python wheel `make install` built (with RPC) goes into docker/wheels/, so the build
#   does not compile llama.cpp a second time (~9 minutes on 2 cores). That wheel is built for this
#   machine's CPU; for an image to ship elsewhere, build with NO_PREBUILT_WHEEL=1 (compiled portable).
# - PYTHON_IMAGE=local (the default) builds on a stand-in for python:3.11-slim-bookworm made from
#   Debian packages (scripts/container-base.sh), for machines that reach no container registry;
#   PYTHON_IMAGE=python:3.11-slim-bookworm uses the official one.
# - With podman: --format docker (a HEALTHCHECK exists only in Docker's image format), our own
#   containers.conf (runc, ulimits the host allows), and the host's CA bundle and pip configuration
#   mounted into every RUN step, since pip reaches PyPI here only through them.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/llamaserve:latest}
if [ -z "${CONTAINER_ENGINE:-}" ]; then
  CONTAINER_ENGINE=$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)
fi
export CONTAINER_ENGINE
PYTHON_IMAGE=${PYTHON_IMAGE:-local}
WHEELHOUSE=${WHEELHOUSE:-$HOME/.cache/llamaserve/wheels/llama-cpp-python-0.3.36-rpc}

args=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
if [ "$CONTAINER_ENGINE" = podman ]; then
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
  args+=(--format docker)
  for f in /etc/pip.conf /etc/ssl/certs/ca-certificates.crt; do
    if [ -f "$f" ]; then args+=(-v "$f:$f:ro"); fi
  done
fi
if [ "$PYTHON_IMAGE" = local ]; then
  base=$(scripts/container-base.sh)
  args[0]=--build-arg
  args[1]="PYTHON_IMAGE=$base"
fi

rm -f docker/wheels/*.whl
if [ -z "${NO_PREBUILT_WHEEL:-}" ]; then
  for whl in "$WHEELHOUSE"/llama_cpp_python-0.3.36-*.whl; do
    if [ -f "$whl" ]; then cp -l "$whl" docker/wheels/ 2>/dev/null || cp "$whl" docker/wheels/; fi
  done
fi

start=$(date +%s)
"$CONTAINER_ENGINE" build "${args[@]}" -t "$IMAGE" . >&2
rm -f docker/wheels/*.whl
size=$("$CONTAINER_ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
echo "built $IMAGE with $CONTAINER_ENGINE in $(($(date +%s) - start)) s: $((size / 1000000)) MB" >&2
