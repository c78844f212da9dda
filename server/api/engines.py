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

from server.engine.base import Engine
from server.prompting.named import NamedTemplates
from server.settings import Settings

log = logging.getLogger(__name__)

EngineFactory = Callable[[Settings], Engine]

# For tests only: tests/live/test_shutdown.py runs the real CLI (`python -m server`) as a subprocess
# and needs it to serve the fake engine. The value is a JSON object of FakeEngine arguments ("reply"
# a fixed string). Deliberately not a setting: it is in no --help, config file or README table.
FAKE_ENGINE_ENV = "_LLAMASERVE_FAKE_ENGINE"


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
    )
    info = engine.info
    log.info(
        "loaded %s: %d slots x %d context tokens each, KV cache %.1f MiB",
        info.id,
        info.n_slots,
        info.n_ctx_per_seq,
        info.kv_cache_bytes / 2**20,
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
