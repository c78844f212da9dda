"""Checks before anything is allocated: every model file, its context, the KV cache's memory, RPC
workers, the state directory and the port, so bad configuration ends in one paragraph and exit code 2,
never a traceback."""

from __future__ import annotations

import errno
import importlib.util
import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from server.engine.llama.model_files import (
    GGUFSummary,
    check_split_model,
    default_model_id,
    format_bytes,
    mem_available_bytes,
    resolve_model_path,
)
from server.settings import ConfigError, Settings
from server.state import open_response_store

log = logging.getLogger("server")

EXIT_BAD_CONFIG = 2
# How often a head started with --rpc-wait probes a worker that does not answer yet.
RPC_WAIT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class CheckedModel:
    settings: Settings  # the model's own flat settings: resolved path, id and context size
    summary: GGUFSummary
    kv_bytes: int  # estimated KV cache for all its slots


def gpu_backends() -> list[str]:
    """GPU backends the installed llama.cpp was built with, seen from its libraries (no import)."""
    spec = importlib.util.find_spec("llama_cpp")
    found: set[str] = set()
    for location in (spec.submodule_search_locations or []) if spec else []:
        for lib in (Path(location) / "lib").glob("*ggml-*"):
            for backend in ("cuda", "metal", "vulkan", "hip", "sycl", "opencl", "musa", "cann"):
                if f"ggml-{backend}" in lib.name:
                    found.add(backend)
    return sorted(found)


def rpc_built_in() -> bool:
    """Whether the installed llama.cpp has its RPC backend, seen from its libraries (no import)."""
    spec = importlib.util.find_spec("llama_cpp")
    locations = (spec.submodule_search_locations or []) if spec else []
    return any(any((Path(loc) / "lib").glob("libggml-rpc.so*")) for loc in locations)


def check_model(s: Settings) -> CheckedModel:
    """Resolve and read one model's file; clamp its context to what it was trained for."""
    path = resolve_model_path(s.model)
    summary = check_split_model(path)
    trained = summary.n_ctx_train
    ctx = s.ctx_size
    if ctx == 0:
        if trained is None:
            raise ConfigError(
                f"--ctx-size 0 asks for the model's trained context, but {path.name} does not record one "
                f"({summary.architecture}.context_length); give --ctx-size N."
            )
        ctx = trained
    elif trained is not None and ctx > trained:
        # Documented choice: warn and clamp. Positions past the trained length give garbage without
        # RoPE scaling, which this server does not configure.
        log.warning(
            "--ctx-size %d is larger than the %d tokens %s was trained on; using %d per sequence",
            ctx,
            trained,
            path.name,
            trained,
        )
        ctx = trained
    if s.chat_template:
        from server.engine.llama.chat_builtin import LlamaNamedTemplates
        from server.prompting.chat_template import select_template

        # Raises for an unknown name or an unreadable file.
        select_template(None, override=s.chat_template, named=LlamaNamedTemplates())
    per_token = summary.kv_bytes_per_token() or 0
    resolved = s.model_copy(update={"model": str(path), "alias": s.alias or default_model_id(path), "ctx_size": ctx})
    return CheckedModel(resolved, summary, per_token * ctx * s.parallel)


def check_memory(models: list[CheckedModel], max_loaded: int, available: int | None) -> None:
    """Refuse a KV cache that cannot fit in memory, before llama.cpp tries to allocate it."""
    if available is None:
        return
    sizes = sorted((m.kv_bytes for m in models), reverse=True)
    resident = sizes[:max_loaded] if max_loaded else sizes
    need = sum(resident)
    if need <= available:
        return
    biggest = max(models, key=lambda m: m.kv_bytes)
    b = biggest.settings
    shape = f"{b.parallel} slots x {b.ctx_size} tokens"
    if len(resident) > 1:
        what = (
            f"the {len(resident)} models kept loaded at once need about {format_bytes(need)} "
            f"(the largest, {b.alias}: {shape})"
        )
        lower = "Lower --ctx-size, --parallel or --max-loaded-models"
    else:
        what = f"{b.alias} needs about {format_bytes(need)} ({shape})"
        lower = "Lower --ctx-size or --parallel"
    raise ConfigError(
        f"Not enough memory for the KV cache: {what}, but only {format_bytes(available)} is available. {lower}."
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind now, so a taken port fails before the model loads; uvicorn serves on this socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
    # connections whose socket says TCP, and accepted connections inherit the listener's. With Nagle
    # on, a keep-alive client (the openai SDK) saw each stream's first chunks held back ~40 ms, until
    # its delayed ACK of the response headers came.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"Port {port} on {host} is already in use (another llamaserve?). "
                "Stop that program, or choose another port with --port N (--port 0 takes any free one)."
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"Not allowed to bind {host}:{port}; ports below 1024 need privileges.") from None
        raise ConfigError(f"Cannot listen on {host}:{port}: {exc.strerror}. Check --host.") from None
    sock.set_inheritable(True)
    return sock


def preflight(settings: Settings) -> tuple[Settings, list[CheckedModel]]:
    """Check every model; return the settings with resolved paths and clamped contexts."""
    checked = [check_model(s) for s in settings.model_settings()]
    ids = [c.settings.alias or "" for c in checked]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"Two models would both be called {dupes[0]!r}: give each [[models]] entry its own alias.")
    check_rpc(settings)
    offload = [c.settings for c in checked if c.settings.n_gpu_layers > 0 and not c.settings.rpc]
    backends = gpu_backends()
    if offload and not backends:
        log.info("-ngl %d accepted; this llama.cpp build is CPU-only, so every layer runs on the CPU",
                 offload[0].n_gpu_layers)  # fmt: skip
    if not (offload and backends):  # offloaded KV lives in GPU memory, which /proc/meminfo does not show
        check_memory(checked, settings.max_loaded_models, mem_available_bytes())
    if settings.models:
        entries = [
            m.model_copy(update={"path": c.settings.model, "alias": c.settings.alias, "ctx_size": c.settings.ctx_size})
            for m, c in zip(settings.models, checked, strict=True)
        ]
        return settings.model_copy(update={"models": entries}), checked
    return checked[0].settings, checked


def check_rpc(settings: Settings) -> None:
    """Every ``--rpc`` worker must answer before the load: llama.cpp aborts on one it cannot reach."""
    endpoints = {e for s in settings.model_settings() for e in s.rpc}
    if not endpoints:
        return
    from server.engine.llama.rpc import RpcError, probe, rpc_supported

    if not rpc_supported():
        raise ConfigError("--rpc needs llama.cpp built with its RPC backend, and this one is not: run `make install`.")
    # With --rpc-wait the head may start before its workers (a Kubernetes pod group starts all at once).
    deadline = time.monotonic() + settings.rpc_wait
    for endpoint in sorted(endpoints):
        while True:
            try:
                why = probe(endpoint)
            except RpcError as exc:
                raise ConfigError(str(exc)) from None
            if why is None:
                break
            if time.monotonic() >= deadline:
                waited = f" after waiting {settings.rpc_wait:g} s" if settings.rpc_wait else ""
                raise ConfigError(
                    f"The RPC worker {endpoint} cannot be reached ({why}){waited}. Start it there first "
                    f"(`llamaserve rpc-worker --host HOST --port PORT`), or correct --rpc."
                )
            log.info("waiting for the RPC worker %s (%s)", endpoint, why)
            time.sleep(RPC_WAIT_POLL_SECONDS)


def check_state(settings: Settings) -> Path | None:
    """Open the response store once, so a corrupt or unwritable ``--state-dir`` stops the start
    (StateStoreError, exit 2) before a model loads; the app opens it again when it starts.
    Returns the database file (None: in memory)."""
    store = open_response_store(settings)
    store.close()
    return store.path
