"""Where a model's engine comes from: llama.cpp (the default), a given engine, a factory, or the test fake.

An :class:`EngineSource` names each configured model before it is loaded (the registry lists
and routes by those names) and loads it when the registry asks.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.engine.base import Engine
from server.engine.prompt_cache.cache import PromptCacheConfig
from server.prompting.named import NamedTemplates
from server.settings import Settings

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Engine]

# For tests only: tests/live/test_shutdown.py runs the real CLI (`python -m server`) as a subprocess
# and needs it to serve the fake engine. The value is a JSON object of FakeEngine arguments ("reply"
# a fixed string). Deliberately not a setting: it is in no --help, config file or README table.
FAKE_ENGINE_ENV = "_LLAMASERVE_FAKE_ENGINE"

DEFAULT_CACHE_RAM = 8 * 2**30


@dataclass(frozen=True)
class EngineSource:
    load: EngineFactory
    # The model id when the settings give no alias; None: from the model file's name.
    default_id: str | None = None
    owns_engines: bool = True  # False: the caller's engine outlives the app
    named_templates: NamedTemplates | None = None  # the chat templates the engine knows by name


def llama_source() -> EngineSource:
    from server.engine.llama.chat_builtin import LlamaNamedTemplates

    return EngineSource(load_llama_engine, named_templates=LlamaNamedTemplates())


def load_llama_engine(settings: Settings) -> Engine:
    # Imported here so that the API layer and its tests never need llama.cpp.
    from server.engine.llama.engine import LlamaEngine
    from server.engine.llama.model_files import default_model_id, resolve_model_path

    path = resolve_model_path(settings.model)
    cache = prompt_cache_config(settings)
    engine = LlamaEngine(
        str(path),
        model_id=settings.alias or default_model_id(path),
        n_slots=settings.parallel,
        n_ctx_per_seq=settings.ctx_size,
        n_batch=settings.batch_size,
        n_threads=settings.threads,
        n_gpu_layers=settings.n_gpu_layers,
        rpc_servers=settings.rpc,
        tensor_split=settings.tensor_split,
        on_worker_lost=exit_for_lost_worker,
        fair_prefill=settings.fair_prefill,
        kv_unified=settings.kv_unified,
        prompt_cache=cache,
    )
    info = engine.info
    log.info(
        "loaded %s: %d slots x %d context tokens each, KV cache %.1f MiB",
        info.id,
        info.n_slots,
        info.n_ctx_per_seq,
        info.kv_cache_bytes / 2**20,
    )
    if cache is not None:
        log.info(
            "prompt cache: %d MiB of RAM%s, prefixes of %d tokens or more",
            cache.ram_bytes // 2**20,
            f", {cache.disk_bytes // 2**20} MiB in {cache.disk_dir}" if cache.disk_dir else "",
            cache.min_tokens,
        )
    return engine


def exit_for_lost_worker(endpoint: str, why: str) -> None:
    """A head whose RPC worker is gone cannot go on (llama.cpp would abort mid-decode): exit now, saying why.

    Exit status 3, at once: streams in flight end with a closed connection, and an orchestrator
    restarting the head reconnects it to the workers that are back.
    """
    log.critical("the RPC worker %s is gone (%s): exiting; restart the head once the worker is back", endpoint, why)
    logging.shutdown()
    os._exit(3)


def prompt_cache_config(settings: Settings) -> PromptCacheConfig | None:
    """The prompt cache the settings ask for; None when it is off (no RAM and no directory)."""
    from server.engine.llama.model_files import mem_available_bytes

    if settings.cache_ram is not None:
        ram = settings.cache_ram * 2**20
    else:
        # Like llama-server's --cache-ram 8192, but never more than a quarter of what is free.
        available = mem_available_bytes()
        ram = min(DEFAULT_CACHE_RAM, available // 4) if available is not None else DEFAULT_CACHE_RAM
    disk_dir = Path(settings.cache_dir) if settings.cache_dir else None
    if ram == 0 and disk_dir is None:
        return None
    return PromptCacheConfig(
        ram_bytes=ram, min_tokens=settings.cache_min_tokens, disk_dir=disk_dir, disk_bytes=settings.cache_disk * 2**20
    )


def fake_engine_from_env() -> EngineSource | None:
    spec = os.environ.get(FAKE_ENGINE_ENV)
    if not spec:
        return None
    kwargs = json.loads(spec)
    reply = str(kwargs.pop("reply", "The quick brown fox jumps over the lazy dog."))

    def factory(settings: Settings) -> Engine:
        from server.engine.fake import FakeEngine

        log.warning("serving the FAKE test engine, because %s is set", FAKE_ENGINE_ENV)
        return FakeEngine(reply=lambda prompt: reply, **kwargs)

    return EngineSource(factory, default_id=str(kwargs.get("model_id", "fake-model")))


def engine_source(engine: Engine | None, factory: EngineFactory | None) -> EngineSource:
    """The source ``create_app``'s arguments ask for, else the environment's fake, else llama.cpp."""
    if engine is not None:
        return EngineSource(lambda settings: engine, default_id=engine.info.id, owns_engines=False)
    if factory is not None:
        return EngineSource(factory)
    return fake_engine_from_env() or llama_source()
