"""llama.cpp's RPC backend: one model over several machines (ggml-rpc), reached through ctypes.

Workers expose a local device (CPU or GPU) over TCP; the head registers each worker as a device
before the model loads, and llama.cpp places layers on them (``n_gpu_layers`` > 0, split by
``tensor_split``). Two traps shape this module:

* ggml must be opened by the soname llama.cpp itself linked (``libggml.so.0``): llama-cpp-python's
  wheel holds ``libggml.so`` as a separate *copy*, and opening that maps a second ggml with its own
  device registry, so a worker registered there is silently never used.
* ggml aborts the whole process when it cannot reach an endpoint, so every endpoint is probed
  with a plain TCP connect first, and the head watches its workers (:class:`WorkerWatch`).

Registration is idempotent by asking ggml's own registry (a backend named ``RPC[host:port]``),
not by remembering it here: the registry is process-wide whatever we do.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp

from server.engine.base import EngineError

log = logging.getLogger(__name__)

PROBE_SECONDS = 2.0
GGML_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


class RpcError(EngineError):
    """An RPC endpoint that is malformed, unreachable, or a build without RPC."""


def rpc_supported() -> bool:
    return bool(llama_cpp.llama_supports_rpc())


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RpcError(f"{endpoint!r} is not an RPC endpoint: give HOST:PORT, e.g. 127.0.0.1:50052.")
    return host.strip("[]"), int(port)


def probe(endpoint: str, timeout: float = PROBE_SECONDS) -> str | None:
    """None when something listens at ``endpoint``; otherwise why not, in words."""
    host, port = parse_endpoint(endpoint)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


@dataclass(frozen=True)
class Device:
    name: str  # "CPU", "RPC0", ...
    description: str  # for an RPC device: its endpoint
    kind: str  # cpu, gpu, igpu, accel
    free_bytes: int
    total_bytes: int


class Ggml:
    """The few ggml backend-registry calls llama-cpp-python does not bind."""

    def __init__(self) -> None:
        lib_dir = Path(llama_cpp.__file__).resolve().parent / "lib"
        # By soname: the copy libllama.so is linked against (see the module docstring).
        self._lib = ctypes.CDLL(str(lib_dir / "libggml.so.0"), mode=ctypes.RTLD_GLOBAL)
        self._declare()

    def _declare(self) -> None:
        lib, p, c = self._lib, ctypes.c_void_p, ctypes.c_char_p
        for name, restype, argtypes in (
            ("ggml_backend_reg_by_name", p, [c]),
            ("ggml_backend_reg_get_proc_address", p, [p, c]),
            ("ggml_backend_register", None, [p]),
            ("ggml_backend_reg_count", ctypes.c_size_t, []),
            ("ggml_backend_reg_get", p, [ctypes.c_size_t]),
            ("ggml_backend_reg_name", c, [p]),
            ("ggml_backend_dev_count", ctypes.c_size_t, []),
            ("ggml_backend_dev_get", p, [ctypes.c_size_t]),
            ("ggml_backend_dev_name", c, [p]),
            ("ggml_backend_dev_description", c, [p]),
            ("ggml_backend_dev_type", ctypes.c_int, [p]),
            ("ggml_backend_dev_memory", None, [p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]),
        ):
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes

    def rpc_proc(self, name: str, prototype: Any) -> Any:
        reg = self._lib.ggml_backend_reg_by_name(b"RPC")
        if not reg:
            raise RpcError(
                "This llama.cpp build has no RPC backend: reinstall with `make install` (it builds with RPC)."
            )
        address = self._lib.ggml_backend_reg_get_proc_address(reg, name.encode())
        if not address:
            raise RpcError(f"llama.cpp's RPC backend has no {name}.")
        return prototype(address)

    def registered_backends(self) -> list[str]:
        lib = self._lib
        names = (lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)) for i in range(lib.ggml_backend_reg_count()))
        return [n.decode("utf-8", "replace") for n in names if n]

    def devices(self) -> list[Device]:
        lib, out = self._lib, []
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            out.append(
                Device(
                    name=(lib.ggml_backend_dev_name(dev) or b"?").decode("utf-8", "replace"),
                    description=(lib.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace"),
                    kind=GGML_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "?"),
                    free_bytes=free.value,
                    total_bytes=total.value,
                )
            )
        return out

    def device_handle(self, name: str) -> int:
        lib = self._lib
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            if (lib.ggml_backend_dev_name(dev) or b"").decode() == name:
                return int(dev)
        raise RpcError(f"no local device named {name!r}; this build has: {', '.join(d.name for d in self.devices())}")

    def register(self, reg: int) -> None:
        self._lib.ggml_backend_register(reg)


def add_servers(endpoints: Sequence[str]) -> list[Device]:
    """Probe and register every endpoint (once per process); return the RPC devices they give."""
    if not rpc_supported():
        raise RpcError("--rpc needs llama.cpp built with RPC, and this one is not: run `make install`.")
    for endpoint in endpoints:
        why = probe(endpoint)
        if why is not None:
            raise RpcError(f"The RPC worker {endpoint} cannot be reached ({why}). Start it first.")
    ggml = Ggml()
    add_server = ggml.rpc_proc("ggml_backend_rpc_add_server", ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p))
    known = set(ggml.registered_backends())
    for endpoint in endpoints:
        if f"RPC[{endpoint}]" in known:
            continue  # a model loaded before in this process registered it already
        reg = add_server(endpoint.encode())
        if not reg:
            raise RpcError(f"The RPC worker {endpoint} offers no device.")
        ggml.register(reg)
    wanted = set(endpoints)
    return [d for d in ggml.devices() if d.description in wanted]


def start_server(endpoint: str, *, threads: int, device: str | None, cache_dir: str | None) -> None:
    """Serve a local device at ``endpoint``: blocks for good; returns only when the server could not run."""
    ggml = Ggml()
    devices = ggml.devices()
    if device is None:
        # The best local device: a GPU when the build has one, else the CPU.
        best = next((d for d in devices if d.kind == "gpu"), None) or next(d for d in devices if d.kind == "cpu")
        device = best.name
    handle = ggml.device_handle(device)
    start = ggml.rpc_proc(
        "ggml_backend_rpc_start_server",
        ctypes.CFUNCTYPE(
            None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p)
        ),
    )
    handles = (ctypes.c_void_p * 1)(handle)
    log.info("rpc-worker serving %s on %s with %d threads", device, endpoint, threads)
    start(endpoint.encode(), cache_dir.encode() if cache_dir else None, threads, 1, handles)


class WorkerWatch:
    """The head's watch on its workers: a worker that disappears ends the process, naming it.

    llama.cpp aborts the head when a worker it is talking to is gone; between decodes nothing would
    notice until the next request hangs on it. So each endpoint is probed every ``period`` seconds,
    and ``on_lost(endpoint, why)`` is called for the first one that stops answering (the server
    exits then, so that an orchestrator restarts it and it reconnects to the workers that are back).
    """

    def __init__(self, endpoints: Sequence[str], *, on_lost: Callable[[str, str], None], period: float = 1.0) -> None:
        self.endpoints = list(endpoints)
        self.up = dict.fromkeys(self.endpoints, True)
        self._period = period
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llamaserve-rpc-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            for endpoint in self.endpoints:
                why = probe(endpoint, timeout=self._period)
                self.up[endpoint] = why is None
                if why is not None:
                    self._on_lost(endpoint, why)
                    return
