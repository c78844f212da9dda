"""Scheduling scenarios for ``make bench``: fair prefill, and priority with fair share between keys.

Each compares two server configurations in ONE run, interleaved round by round (the machine is
shared and noisy, so only ratios from one run mean anything):

* fair prefill: the time to first token of a ~20-token request sent 0.5 s after a ~4,000-token
  prompt started, on a server with ``--fair-prefill`` and one with ``--no-fair-prefill``; and the
  long prompt's own TTFT on each.
* priority and fair share: an interactive key's TTFT p95 unloaded, then under a saturating load
  from a batch key (priority 10, in the config), on a server that preempts (``--preempt-after``)
  and on one that does not; and the same load where the interactive requests queue with the batch
  ones (same key and priority: first come, first served).

It prints figures and passes no judgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from benchmarks.bench import percentile, spawned_server

LONG_TOKENS = 4000
SHORT_TOKENS = 20
# Three tokens per repetition in SmolLM2's vocabulary.
_WORDS = "the lighthouse keeper "


def long_prompt(round_no: int, tokens: int = LONG_TOKENS) -> str:
    # A different first word each round, so no slot's cached prefix shortens the prefill.
    return f"Round {round_no} story {time.monotonic_ns()}: " + _WORDS * (tokens // 3 - 4)


async def ttft(client: httpx.AsyncClient, url: str, body: dict[str, object], key: str | None = None) -> float:
    """Seconds from sending a streaming completion to its first text (NaN when it failed)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    start = time.perf_counter()
    first = float("nan")
    async with client.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, headers=headers) as r:
        if r.status_code != 200:
            await r.aread()
            return first
        async for line in r.aiter_lines():
            if first != first and line.startswith("data: {") and json.loads(line[6:])["choices"][0].get("text"):
                first = time.perf_counter() - start
    return first


def _body(prompt: str, max_tokens: int, **extra: object) -> dict[str, object]:
    return {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, **extra}


# ---- fair prefill ------------------------------------------------------------------------------


async def _fair_round(url: str, round_no: int) -> tuple[float, float]:
    async with httpx.AsyncClient(timeout=300) as client:
        long_task = asyncio.create_task(ttft(client, url, _body(long_prompt(round_no), 4)))
        await asyncio.sleep(0.5)
        short = await ttft(client, url, _body(f"Q{round_no}: " + _WORDS * (SHORT_TOKENS // 3 - 1), 4))
        return short, await long_task


def fair_prefill(rounds: int, batch_size: int) -> dict[str, object]:
    ctx = str(LONG_TOKENS + 512)
    common = ["--ctx-size", ctx, "--batch-size", str(batch_size)]
    results: dict[str, list[tuple[float, float]]] = {"fair": [], "fifo": []}
    with (
        spawned_server(2, [*common, "--fair-prefill"]) as fair_url,
        spawned_server(2, [*common, "--no-fair-prefill"]) as fifo_url,
    ):
        for i in range(rounds):  # interleaved: each round runs both, one after the other
            for name, url in (("fair", fair_url), ("fifo", fifo_url)):
                results[name].append(asyncio.run(_fair_round(url, i * 2 + (name == "fifo"))))
    out: dict[str, object] = {"rounds": rounds, "batch_size": batch_size}
    for name, rows in results.items():
        out[f"{name}_short_ttft_median"] = round(statistics.median(r[0] for r in rows), 3)
        out[f"{name}_long_ttft_median"] = round(statistics.median(r[1] for r in rows), 3)
    out["short_ttft_fifo_over_fair"] = round(out["fifo_short_ttft_median"] / out["fair_short_ttft_median"], 1)  # type: ignore[operator]
    out["long_ttft_fair_over_fifo"] = round(out["fair_long_ttft_median"] / out["fifo_long_ttft_median"], 2)  # type: ignore[operator]
    return out


# ---- priority and fair share -------------------------------------------------------------------

BATCH_KEY, UI_KEY = "bench-batch-key", "bench-interactive-key"


@contextlib.contextmanager
def _keys_config() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "keys.toml"
        path.write_text(f'[[keys]]\nkey = "{BATCH_KEY}"\npriority = 10\n\n[[keys]]\nkey = "{UI_KEY}"\n')
        yield str(path)


async def _interactive(url: str, n: int, key: str, load_streams: int, load_key: str) -> list[float]:
    """TTFT of ``n`` sequential interactive requests while ``load_streams`` batch clients saturate."""
    stop = asyncio.Event()
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=load_streams + 4)) as client:

        async def batch_client(j: int) -> None:
            while not stop.is_set():
                await ttft(client, url, _body(f"Batch job {j} {time.monotonic_ns()}: " + _WORDS * 30, 48), load_key)

        load = [asyncio.create_task(batch_client(j)) for j in range(load_streams)]
        await asyncio.sleep(1.0 if load_streams else 0.0)  # the queue fills first
        times = []
        for i in range(n):
            times.append(await ttft(client, url, _body(f"Hello {i} {time.monotonic_ns()}", 8), key))
        stop.set()
        for t in load:
            t.cancel()
        await asyncio.gather(*load, return_exceptions=True)
    return times


def priority_share(rounds: int, parallel: int, load_streams: int, preempt_after: float) -> dict[str, object]:
    samples: dict[str, list[float]] = {"unloaded": [], "priority": [], "priority_no_preempt": [], "fifo": []}
    with (
        _keys_config() as config,
        spawned_server(parallel, ["--config", config, "--preempt-after", str(preempt_after)]) as url,
        spawned_server(parallel, ["--config", config, "--preempt-after", "0"]) as no_preempt_url,
    ):
        for _ in range(rounds):  # interleaved: each round runs every configuration
            samples["unloaded"] += asyncio.run(_interactive(url, 5, UI_KEY, 0, BATCH_KEY))
            samples["priority"] += asyncio.run(_interactive(url, 5, UI_KEY, load_streams, BATCH_KEY))
            samples["priority_no_preempt"] += asyncio.run(
                _interactive(no_preempt_url, 5, UI_KEY, load_streams, BATCH_KEY)
            )
            # The same load, but the interactive requests queue as batch ones: first come, first served.
            samples["fifo"] += asyncio.run(_interactive(url, 5, BATCH_KEY, load_streams, BATCH_KEY))
    out: dict[str, object] = {
        "rounds": rounds,
        "parallel": parallel,
        "load_streams": load_streams,
        "preempt_after": preempt_after,
    }
    for name, values in samples.items():
        ok = [v for v in values if v == v]
        out[f"{name}_ttft_p50"] = round(percentile(ok, 0.5), 3)
        out[f"{name}_ttft_p95"] = round(percentile(ok, 0.95), 3)
        out[f"{name}_failed"] = len(values) - len(ok)
    out["priority_p95_over_unloaded"] = round(out["priority_ttft_p95"] / out["unloaded_ttft_p95"], 1)  # type: ignore[operator]
    out["no_preempt_p95_over_unloaded"] = round(out["priority_no_preempt_ttft_p95"] / out["unloaded_ttft_p95"], 1)  # type: ignore[operator]
    out["fifo_p95_over_unloaded"] = round(out["fifo_ttft_p95"] / out["unloaded_ttft_p95"], 1)  # type: ignore[operator]
    return out
