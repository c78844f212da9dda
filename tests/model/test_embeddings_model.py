"""Embeddings share the engine's loaded model: the weights once in memory, the engine's threads."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from server.engine.base import EngineError, SamplingParams
from server.engine.llama.engine import LlamaEngine
from server.protocol import EmbeddingRequest
from server.services.embeddings import EmbeddingsService
from tests.fixtures.tiny_llama3 import N_EMBD

pytestmark = pytest.mark.model


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Every model load, context creation and free llama.cpp is asked for, in order."""
    seen: list[tuple[str, Any]] = []
    load, init = llama_cpp.llama_model_load_from_file, llama_cpp.llama_init_from_model
    free, free_model = llama_cpp.llama_free, llama_cpp.llama_model_free

    def spy_load(path: bytes, params: Any) -> Any:
        model = load(path, params)
        seen.append(("load", model))
        return model

    def spy_init(model: Any, params: Any) -> Any:
        seen.append(("context", (model, params.n_threads, params.n_threads_batch, bool(params.embeddings))))
        return init(model, params)

    def spy_free(ctx: Any) -> None:
        seen.append(("free", None))
        free(ctx)

    def spy_free_model(model: Any) -> None:
        seen.append(("free_model", model))
        free_model(model)

    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", spy_load)
    monkeypatch.setattr(llama_cpp, "llama_init_from_model", spy_init)
    monkeypatch.setattr(llama_cpp, "llama_free", spy_free)
    monkeypatch.setattr(llama_cpp, "llama_model_free", spy_free_model)
    return seen


async def test_the_embeddings_context_uses_the_engines_model_and_threads(
    tiny_llama3_gguf: Path, calls: list[tuple[str, Any]]
) -> None:
    engine = LlamaEngine(str(tiny_llama3_gguf), model_id="tiny", n_slots=1, n_ctx_per_seq=256, n_threads=3)
    service = EmbeddingsService.for_engine(engine, model_id="tiny")
    try:
        result = await service.create(EmbeddingRequest(model="tiny", input=["hello", "world"]))
    finally:
        service.close()
        engine.close()
    assert [len(d.embedding) for d in result.data] == [N_EMBD, N_EMBD]
    loads = [model for what, model in calls if what == "load"]
    assert len(loads) == 1, "the GGUF was loaded more than once"
    contexts = [args for what, args in calls if what == "context"]
    assert contexts == [(loads[0], 3, 3, False), (loads[0], 3, 3, True)]


def test_closing_the_engine_closes_its_embedders_before_the_model(
    tiny_llama3_gguf: Path, calls: list[tuple[str, Any]]
) -> None:
    engine = LlamaEngine(str(tiny_llama3_gguf), model_id="tiny", n_slots=1, n_ctx_per_seq=256)
    embedder = engine.make_embedder(128)
    assert len(embedder.embed(engine.tokenize("hello", add_special=True, parse_special=False))) == N_EMBD
    del calls[:]
    engine.close()
    assert [what for what, _ in calls] == ["free", "free", "free_model"]
    with pytest.raises(EngineError):
        embedder.embed([1, 2, 3])
    embedder.close()  # closing again, as the embeddings service does, is harmless


async def test_pooling_follows_the_flag_else_the_file_else_mean(smollm2_path: str) -> None:
    engine = LlamaEngine(smollm2_path, model_id="smol", n_slots=1, n_ctx_per_seq=256)
    try:
        ids = engine.tokenize("The cat sat on the mat.", add_special=True, parse_special=False)
        by_pooling: dict[str, list[float]] = {}
        for pooling in ("mean", "cls", "last"):
            embedder = engine.make_embedder(128, pooling=pooling)  # type: ignore[arg-type]
            by_pooling[pooling] = embedder.embed(ids)
            embedder.close()
        default = engine.make_embedder(128)
        assert getattr(default, "pooling", None) == "mean"  # a decoder model's file says none: mean
        assert default.embed(ids) == pytest.approx(by_pooling["mean"], abs=1e-5)
        default.close()
        assert by_pooling["cls"] != pytest.approx(by_pooling["mean"], abs=1e-3)
        assert by_pooling["last"] != pytest.approx(by_pooling["mean"], abs=1e-3)
        assert by_pooling["last"] != pytest.approx(by_pooling["cls"], abs=1e-3)
        # usage counts what was embedded, the special tokens the tokenizer adds included.
        service = EmbeddingsService.for_engine(engine, model_id="smol", pooling="last")
        result = await service.create(EmbeddingRequest(input="The cat sat on the mat."))
        assert result.usage.prompt_tokens == len(ids)
        assert result.data[0].embedding == pytest.approx(by_pooling["last"], abs=1e-5)
        service.close()
    finally:
        engine.close()


async def test_usage_counts_the_bos_the_tokenizer_adds(tiny_llama3_gguf: Path) -> None:
    engine = LlamaEngine(str(tiny_llama3_gguf), model_id="tiny", n_slots=1, n_ctx_per_seq=256)
    service = EmbeddingsService.for_engine(engine, model_id="tiny")
    try:
        bare = engine.tokenize("hello world", add_special=False, parse_special=False)
        result = await service.create(EmbeddingRequest(input=["hello world"]))
        assert result.usage.prompt_tokens == len(bare) + 1  # BOS, which is embedded too
    finally:
        service.close()
        engine.close()


def _thread_switches() -> int:
    """Voluntary context switches of every thread of this process so far (Linux)."""
    total = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                total += sum(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    return total


def switches_per_step_before_and_after_an_embedding(model_path: str) -> tuple[float, float]:
    """Thread switches per decode step on a long-lived "engine thread", before and after one
    embedding computed in a long-lived pool thread (what ``asyncio.to_thread`` uses)."""
    n_cpus = len(os.sched_getaffinity(0))
    engine = LlamaEngine(model_path, model_id="smollm2", n_slots=1, n_ctx_per_seq=512, n_threads=n_cpus)
    engine_thread, to_thread_pool = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    prompt = engine.tokenize("Once upon a time", add_special=True, parse_special=False)

    def switches_per_step() -> float:
        engine.begin(0, prompt, SamplingParams(temperature=0.0))
        engine.step()  # the prefill
        before = _thread_switches()
        for _ in range(20):
            engine.step()
        per_step = (_thread_switches() - before) / 20
        engine.release(0, keep_cache=False)
        return per_step

    try:
        baseline = engine_thread.submit(switches_per_step).result()
        embedder = engine.make_embedder(256)
        to_thread_pool.submit(embedder.embed, embedder.tokenize("hello world")).result()
        return baseline, engine_thread.submit(switches_per_step).result()
    finally:
        engine_thread.shutdown()
        to_thread_pool.shutdown()
        engine.close()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts thread switches in /proc")
def test_an_embedding_from_a_pooled_thread_leaves_the_engines_decode_as_fast(smollm2_path: str) -> None:
    # OpenMP (llama.cpp's CPU threads) sleeps at every barrier of a decode, not spins, once it manages
    # more threads than there are CPUs: a decode from a long-lived pool thread must not leave its
    # team behind (server/engine/llama/own_thread.py). With the engine on every CPU that is one too many.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: llama.cpp runs no OpenMP team")
    # In a fresh process: the teams this test process's earlier engines left behind would count too.
    script = (
        "import sys; from tests.model.test_embeddings_model import switches_per_step_before_and_after_an_embedding"
        " as m; print(*m(sys.argv[1]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, smollm2_path],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    baseline, after = map(float, out.stdout.split())
    # Spinning barriers switch about never; sleeping ones about 200 times per step of this model.
    assert after < baseline + 20, (baseline, after)
