#!/bin/sh
# The image's entrypoint. `llamaserve` inside a container listens on 0.0.0.0:8080 and opens no browser;
# the arguments given to `docker run IMAGE ...` (or a pod's `args`) follow and win over these.
# `rpc-worker ...` runs an RPC worker instead, with only its own flags (it takes no --port 8080).
set -eu
if [ "${1:-}" = "rpc-worker" ]; then
  exec python -m server "$@"
fi
exec python -m server --host 0.0.0.0 --port 8080 --no-browser "$@"
