"""Streaming load benchmark against a live server (``make bench``; ``python -m benchmarks.bench``).

For each concurrency level it runs that many concurrent streaming chat requests (``--rounds`` per
client) and reports aggregate generated tokens/s, time to first token and inter-token latency
(p50/p95), and errors. ``--engine-only`` measures the engine's in-process batched decode rate, the
ceiling the HTTP figures are compared against. ``--spawn`` starts a server on the bundled model.

It is a benchmark, not a test: it prints figures and passes no judgement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import httpx

from benchmarks.serving import free_port, serving

log = logging.getLogger("benchmarks.bench")

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class StreamResult:
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)
    tokens: int = 0
    error: str | None = None

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens after the first over the time from first to last: the rate without the prefill."""
        span = sum(self.gaps)
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else None


@dataclass
class LevelReport:
    concurrency: int
    requests: int
    errors: int
    tokens: int
    seconds: float
    tokens_per_second: float
    ttft_p50: float
    ttft_p95: float
    itl_p50: float
    itl_p95: float
    decode_tokens_per_second_per_stream: float


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def one_stream(client: httpx.AsyncClient, url: str, max_tokens: int) -> StreamResult:
    result = StreamResult()
    body = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        # llama.cpp's sampling defaults, as the engine-only measurement uses them; ignore_eos makes
        # every request generate exactly max_tokens, so runs compare like with like.
        "temperature": 0.8,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.0,
        "ignore_eos": True,
    }
    start = time.perf_counter()
    last = start
    content_chunks = 0
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                result.error = f"HTTP {r.status_code}"
                await r.aread()
                return result
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content"):
                        content_chunks += 1
                        now = time.perf_counter()
                        if result.ttft is None:
                            result.ttft = now - start
                        else:
                            result.gaps.append(now - last)
                        last = now
    except httpx.HTTPError as exc:
        result.error = type(exc).__name__
    # A server that sends no usage (some llama-server builds): one token per content chunk.
    result.tokens = result.tokens or content_chunks
    return result


async def run_level(url: str, concurrency: int, rounds: int, max_tokens: int) -> LevelReport:
    results: list[StreamResult] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0), limits=limits) as client:

        async def worker() -> None:
            for _ in range(rounds):
                results.append(await one_stream(client, url, max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    ok = [r for r in results if r.error is None]
    tokens = sum(r.tokens for r in ok)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    return LevelReport(
        concurrency=concurrency,
        requests=len(results),
        errors=len(results) - len(ok),
        tokens=tokens,
        seconds=round(seconds, 3),
        tokens_per_second=round(tokens / seconds, 1) if seconds else 0.0,
        ttft_p50=round(percentile(ttfts, 0.5), 4),
        ttft_p95=round(percentile(ttfts, 0.95), 4),
        itl_p50=round(percentile(gaps, 0.5), 4),
        itl_p95=round(percentile(gaps, 0.95), 4),
        decode_tokens_per_second_per_stream=round(
            statistics.fmean(d for r in ok if (d := r.decode_tokens_per_second) is not None), 1
        )
        if ok
        else 0.0,
    )


@contextmanager
def spawned_server(parallel: int, extra: list[str]) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "server", "--port", str(port), "--parallel", str(parallel), "--no-browser"]
    with serving([*cmd, "--ctx-size", "1024", *extra], port, ready_seconds=120) as url:
        yield url


def engine_only(levels: list[int], max_tokens: int) -> list[dict[str, float]]:
    from benchmarks.engine_decode import measure_engine_decode
    from server.engine.llama.model_files import bundled_model_path

    path = str(bundled_model_path())
    return [
        {"concurrency": n, "engine_tokens_per_second": round(measure_engine_decode(path, n, max_tokens, repeats=3), 1)}
        for n in levels
    ]


def format_table(reports: list[LevelReport]) -> str:
    head = (
        "| streams | tokens/s (all streams) | decode tokens/s per stream | TTFT p50 | TTFT p95 | ITL p50 | ITL p95 "
        "| requests | errors |"
    )
    rows = [head, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        rows.append(
            f"| {r.concurrency} | {r.tokens_per_second:.1f} | {r.decode_tokens_per_second_per_stream:.1f} "
            f"| {r.ttft_p50 * 1000:.0f} ms | {r.ttft_p95 * 1000:.0f} ms "
            f"| {r.itl_p50 * 1000:.1f} ms | {r.itl_p95 * 1000:.1f} ms | {r.requests} | {r.errors} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server to load (default: %(default)s)")
    p.add_argument("--spawn", action="store_true", help="start a server on the bundled model instead of --url")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated levels (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="requests per client per level (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default: %(default)s)")
    p.add_argument("--engine-only", action="store_true", help="also measure in-process engine decode, no HTTP")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--compare-llama-server", metavar="PATH", help="also run llama.cpp's llama-server, side by side")
    p.add_argument("--compare-rounds", type=int, default=3, help="interleaved rounds of the comparison")
    p.add_argument("--fair-prefill", action="store_true", help="run the fair-prefill scenario (fair vs FIFO)")
    p.add_argument("--priority", action="store_true", help="run the priority / fair-share scenario")
    p.add_argument("--scenario-rounds", type=int, default=3, help="interleaved rounds of each scenario")
    p.add_argument(
        "--preempt-after",
        type=float,
        default=0.25,
        help="the priority scenario's --preempt-after (default: %(default)s)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    levels = [int(x) for x in args.concurrency.split(",")]

    out: dict[str, object] = {"machine": {"cpus": os.cpu_count()}, "max_tokens": args.max_tokens}
    if args.engine_only:
        out["engine"] = engine_only(levels, args.max_tokens)

    async def all_levels(url: str) -> list[LevelReport]:
        await run_level(url, 1, 1, 8)  # warm-up, not reported
        return [await run_level(url, n, args.rounds, args.max_tokens) for n in levels]

    if args.spawn:
        with spawned_server(max(levels), []) as url:
            reports = asyncio.run(all_levels(url))
            if args.compare_llama_server:
                out["compare"] = _compare(url, args, levels)
    else:
        reports = asyncio.run(all_levels(args.url))
    _scenarios(out, args)
    out["http"] = [asdict(r) for r in reports]
    if reports and reports[0].tokens_per_second:
        out["speedup_at_max_vs_1"] = round(reports[-1].tokens_per_second / reports[0].tokens_per_second, 2)
    engine_rows: list[dict[str, float]] = out.get("engine", [])  # type: ignore[assignment]
    single = [r for r in reports if r.concurrency == 1]
    engine_single = [e["engine_tokens_per_second"] for e in engine_rows if e["concurrency"] == 1]
    if single and engine_single and engine_single[0]:
        # Like with like: both rates leave the prompt's prefill out.
        out["http_decode_vs_engine_1_stream"] = round(
            single[0].decode_tokens_per_second_per_stream / engine_single[0], 2
        )

    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    sys.stdout.write(format_table(reports) + "\n")
    if "speedup_at_max_vs_1" in out:
        sys.stdout.write(f"\nthroughput at {levels[-1]} streams / 1 stream: {out['speedup_at_max_vs_1']}x\n")
    for row in engine_rows:
        sys.stdout.write(f"engine in-process, {row['concurrency']} seqs: {row['engine_tokens_per_second']} tokens/s\n")
    if "http_decode_vs_engine_1_stream" in out:
        ratio = out["http_decode_vs_engine_1_stream"]
        sys.stdout.write(f"single stream over HTTP / engine in-process (decode rates): {ratio}x\n")
    _print_extras(out)
    return 0


def _compare(url: str, args: argparse.Namespace, levels: list[int]) -> dict[str, object]:
    from benchmarks.compare import compare, llama_server
    from server.engine.llama.model_files import bundled_model_path

    compared = sorted({1, max(levels)})
    with (
        spawned_server(max(levels), ["--kv-unified"]) as unified,
        llama_server(args.compare_llama_server, str(bundled_model_path()), max(levels), 1024) as theirs,
    ):
        ours = {"KV per slot": url, "unified KV": unified}
        return compare(ours, theirs, compared, args.compare_rounds, args.rounds, args.max_tokens)


def _scenarios(out: dict[str, object], args: argparse.Namespace) -> None:
    from benchmarks import scenarios

    # Each is logged as it ends: a long run's first figures are not lost to a later failure.
    if args.fair_prefill:
        out["fair_prefill"] = scenarios.fair_prefill(args.scenario_rounds, batch_size=256)
        log.info("fair prefill: %s", json.dumps(out["fair_prefill"]))
    if args.priority:
        out["priority"] = scenarios.priority_share(
            args.scenario_rounds, parallel=2, load_streams=4, preempt_after=args.preempt_after
        )
        log.info("priority and fair share: %s", json.dumps(out["priority"]))


def _print_extras(out: dict[str, object]) -> None:
    if "compare" in out:
        from benchmarks.compare import format_compare

        sys.stdout.write("\nside by side with llama-server (interleaved rounds):\n")
        sys.stdout.write(format_compare(out["compare"]) + "\n")  # type: ignore[arg-type]
    for name in ("fair_prefill", "priority"):
        if name in out:
            sys.stdout.write(f"\n{name}: {json.dumps(out[name])}\n")


if __name__ == "__main__":
    sys.exit(main())
