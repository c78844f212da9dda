"""Side by side with llama.cpp's own ``llama-server`` (``--compare-llama-server PATH``).

Both servers are started on the bundled model with the same slots and per-slot context and the
same default threads (llama.cpp's: the physical cores), and the same streaming load runs against
each, interleaved round by round so that the machine's noise falls on both alike. Ours runs twice:
with its default KV pool per slot (what llama-server runs when given ``-np``), and with one unified
pool (``--kv-unified``). Reported per level and layout: aggregate tokens/s, ITL p50
and TTFT p95, each averaged over the rounds, and ours / theirs.
"""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from benchmarks.bench import LevelReport, run_level
from benchmarks.serving import free_port, serving


@contextmanager
def llama_server(binary: str, model: str, parallel: int, ctx_per_slot: int) -> Iterator[str]:
    port = free_port()
    cmd = [binary, "-m", model, "--port", str(port), "-np", str(parallel), "-c", str(ctx_per_slot * parallel)]
    with serving([*cmd, "--no-webui"], port, ready_seconds=120) as url:
        yield url


def _mean(reports: list[LevelReport], attr: str) -> float:
    return round(statistics.fmean(getattr(r, attr) for r in reports), 4)


def compare(
    ours: Mapping[str, str], theirs: str, levels: list[int], rounds: int, requests: int, max_tokens: int
) -> dict[str, object]:
    """``ours``: our servers by the name of what sets them apart (the KV layout), each against ``theirs``."""
    urls = {**ours, "llama-server": theirs}
    runs: dict[tuple[str, int], list[LevelReport]] = {}

    async def one_round() -> None:
        for n in levels:
            for name, url in urls.items():
                runs.setdefault((name, n), []).append(await run_level(url, n, requests, max_tokens))

    async def warm() -> None:
        for url in urls.values():
            await run_level(url, 1, 1, 8)

    asyncio.run(warm())
    for _ in range(rounds):
        asyncio.run(one_round())
    rows = []
    for name in ours:
        for n in levels:
            a, b = runs[(name, n)], runs[("llama-server", n)]
            row: dict[str, object] = {"ours": name, "streams": n, "errors": sum(r.errors for r in a + b)}
            for attr in ("tokens_per_second", "itl_p50", "ttft_p95"):
                row[f"ours_{attr}"], row[f"theirs_{attr}"] = _mean(a, attr), _mean(b, attr)
            row["tokens_per_second_ratio"] = round(row["ours_tokens_per_second"] / row["theirs_tokens_per_second"], 3)  # type: ignore[operator]
            row["itl_p50_ratio"] = round(row["ours_itl_p50"] / row["theirs_itl_p50"], 3)  # type: ignore[operator]
            row["ttft_p95_ratio"] = round(row["ours_ttft_p95"] / row["theirs_ttft_p95"], 3)  # type: ignore[operator]
            rows.append(row)
    return {"rounds": rounds, "requests_per_client": requests, "max_tokens": max_tokens, "levels": rows}


def format_compare(result: dict[str, object]) -> str:
    head = (
        "| ours | streams | tokens/s ours | tokens/s llama-server | ratio | ITL p50 ours | ITL p50 llama-server "
        "| ratio | TTFT p95 ours | TTFT p95 llama-server | ratio |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["levels"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {r['ours']} | {r['streams']} | {r['ours_tokens_per_second']:.1f} | {r['theirs_tokens_per_second']:.1f} "
            f"| {r['tokens_per_second_ratio']:.2f}x | {r['ours_itl_p50'] * 1000:.1f} ms "
            f"| {r['theirs_itl_p50'] * 1000:.1f} ms | {r['itl_p50_ratio']:.2f}x | {r['ours_ttft_p95'] * 1000:.0f} ms "
            f"| {r['theirs_ttft_p95'] * 1000:.0f} ms | {r['ttft_p95_ratio']:.2f}x |"
        )
    return "\n".join(lines)
