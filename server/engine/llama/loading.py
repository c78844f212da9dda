"""Loading a model's weights: where its layers go (CPU, a GPU, RPC workers) and what each device got.

llama.cpp says how many bytes of the model each buffer holds only in its load log
(``RPC0[127.0.0.1:50052] model buffer size = 52.41 MiB``), so the load runs under a log capture
and those lines become :attr:`LoadedWeights.placement`.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from server.engine.base import EngineError
from server.engine.llama.cpp_log import captured_c_log, route_c_log
from server.engine.llama.rpc import add_servers

log = logging.getLogger(__name__)

_BUFFER_SIZE = re.compile(r"(\S+) model buffer size =\s*([\d.]+) MiB")
_LAYER_DEVICE = re.compile(r"layer\s+\d+ assigned to device (\S+?),")


@dataclass(frozen=True)
class LoadedWeights:
    model: Any  # llama_model_p; the engine frees it
    placement: dict[str, int] = field(default_factory=dict)  # buffer name -> bytes of the model in it
    rpc_endpoints: tuple[str, ...] = ()


def parse_placement(lines: Sequence[str]) -> dict[str, int]:
    """``{buffer: bytes}`` from llama.cpp's load log (sizes are printed in MiB, two decimals)."""
    out: dict[str, int] = {}
    for line in lines:
        m = _BUFFER_SIZE.search(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + round(float(m.group(2)) * 2**20)
    return out


def parse_layers(lines: Sequence[str]) -> dict[str, int]:
    """``{device: layers}`` from llama.cpp's load log (``layer  3 assigned to device RPC0, ...``)."""
    out: dict[str, int] = {}
    for line in lines:
        m = _LAYER_DEVICE.search(line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0) + 1
    return out


def _tensor_split(proportions: Sequence[float]) -> Any:
    n = int(llama_cpp.llama_max_devices())
    if len(proportions) > n:
        raise EngineError(f"--tensor-split names {len(proportions)} devices; this llama.cpp takes at most {n}")
    if any(p < 0 for p in proportions) or (proportions and sum(proportions) <= 0):
        raise EngineError("--tensor-split takes non-negative proportions that do not all add up to 0")
    return (ctypes.c_float * n)(*proportions)


def load_weights(
    path: str, *, n_gpu_layers: int, rpc_servers: Sequence[str] = (), tensor_split: Sequence[float] = ()
) -> LoadedWeights:
    route_c_log()
    llama_cpp.llama_backend_init()
    if rpc_servers:
        for d in add_servers(rpc_servers):
            log.info("RPC device %s at %s: %.0f MiB free of %.0f", d.name, d.description,
                     d.free_bytes / 2**20, d.total_bytes / 2**20)  # fmt: skip
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = n_gpu_layers
    split = _tensor_split(tensor_split) if tensor_split else None
    if split is not None:
        mparams.tensor_split = split  # llama.cpp reads it during the load only; `split` outlives that
    with captured_c_log() as lines:
        model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        raise EngineError(f"llama.cpp could not load the model {path!r}")
    placement = parse_placement(lines)
    for buffer, size in placement.items():
        log.info("model weights on %s: %.1f MiB", buffer, size / 2**20)
    if rpc_servers:
        log.info("layers per device: %s", ", ".join(f"{d} {n}" for d, n in parse_layers(lines).items()))
    return LoadedWeights(model, placement, tuple(rpc_servers))
