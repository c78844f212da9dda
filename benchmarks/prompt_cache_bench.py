"""Multi-user chat that forces eviction: the prompt cache against cache off and llama.cpp's llama-server.

``--users`` users (default 16), each with its own ~``--system-tokens`` system prompt, ``--turns``
turns each, visited round robin, one request at a time, against ``--parallel`` slots (fewer than
the users, so every user's cells are evicted between their turns); streaming, ``--max-tokens`` new
tokens a turn at temperature 0. Configurations, one server each, in one run:

* ``off``: llamaserve with ``--cache-ram 0``;
* ``ram``: llamaserve with its RAM tier;
* ``disk``: llamaserve with ``--cache-dir``, run once to fill the disk, then restarted (RAM cold,
  disk warm) and measured: its turn 1 is "the first turn back" of each user;
* ``llama-server``: llama.cpp's own server with its default ``--cache-ram``, when ``--llama-server``
  gives its binary.

``--configs`` gives the order; ``a+b`` runs two side by side, turn by turn (user 0 on a, user 0 on
b, user 1 on a, ...), so on a shared machine their ratio comes from the same minutes of load. The
default runs ``ram+llama-server`` that way.

Per configuration: TTFT p50/p95 of turns 2+, TTFT p50 of turn 1, prompt tokens computed (not
cached; llama-server's ``timings.prompt_n``, which like llamaserve's count includes the last prompt
token both decode again for its logits), the cached share of turns 2+, and generated tokens per
second of its own requests. A benchmark: it prints figures and passes no judgement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.bench import percentile
from benchmarks.serving import free_port, serving

log = logging.getLogger("benchmarks.prompt_cache_bench")

WORDS = (
    "river",
    "stone",
    "light",
    "garden",
    "window",
    "paper",
    "silver",
    "morning",
    "quiet",
    "market",
    "story",
    "bridge",
    "winter",
    "forest",
    "letter",
    "candle",
    "music",
    "harbor",
    "field",
    "cloud",
    "mountain",
    "village",
    "kitchen",
    "engine",
    "signal",
    "mirror",
    "orange",
    "history",
    "planet",
    "travel",
    "doctor",
    "teacher",
    "number",
    "answer",
    "question",
    "simple",
    "careful",
    "bright",
    "ancient",
)


@dataclass
class Turn:
    user: int
    turn: int
    ttft: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int


@dataclass
class Report:
    config: str
    turns: list[Turn] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, float | str]:
        later = [t for t in self.turns if t.turn > 1]
        first = [t for t in self.turns if t.turn == 1]
        prompt_later = sum(t.prompt_tokens for t in later)
        return {
            "config": self.config,
            "ttft_p50_turns_2plus": round(percentile([t.ttft for t in later], 0.5), 3),
            "ttft_p95_turns_2plus": round(percentile([t.ttft for t in later], 0.95), 3),
            "ttft_p50_turn_1": round(percentile([t.ttft for t in first], 0.5), 3),
            "computed_prompt_tokens": sum(t.prompt_tokens - t.cached_tokens for t in self.turns),
            "cached_share_turns_2plus": round(sum(t.cached_tokens for t in later) / prompt_later, 3)
            if prompt_later
            else 0.0,
            "tokens_per_second": round(sum(t.completion_tokens for t in self.turns) / self.seconds, 2)
            if self.seconds
            else 0.0,
        }


def system_prompt(user: int, n_words: int) -> str:
    rng = random.Random(user)
    words = " ".join(rng.choice(WORDS) for _ in range(n_words))
    return f"You are assistant number {user}. Remember these notes and answer briefly. Notes: {words}."


async def one_turn(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, str]], max_tokens: int
) -> tuple[float, str, int, int, int]:
    """One streamed turn: (TTFT, reply text, prompt tokens, cached prompt tokens, completion tokens)."""
    body = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft: float | None = None
    text = ""
    usage: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            timings = chunk.get("timings") or timings
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - start
                    text += piece
    prompt = int(usage.get("prompt_tokens", 0))
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
    if timings and "prompt_n" in timings:  # llama-server: prompt_n is what it computed
        cached = prompt - int(timings["prompt_n"])
    return ttft or float("nan"), text, prompt, cached, int(usage.get("completion_tokens", 0))


async def workload(targets: list[tuple[str, str]], args: argparse.Namespace) -> list[Report]:
    """The chat workload against each ``(config, url)`` target, interleaved turn by turn.

    Each target keeps its own chats (its own replies), so the servers see the same prompts up to
    their answers; side by side, they share whatever load the machine has at that moment.
    """
    reports = [Report(config) for config, _ in targets]
    chats = {
        config: [[{"role": "system", "content": system_prompt(u, args.system_tokens)}] for u in range(args.users)]
        for config, _ in targets
    }
    # A new connection for every turn, for every server: llama-server (cpp-httplib) closes the
    # connection after each streamed response although it answered "Keep-Alive" (its content
    # provider returns false once the stream is done, which cpp-httplib takes for a cancel), so a
    # pooled connection reused for the next turn races that close and loses it now and then
    # ("Server disconnected without sending a response"). A fresh TCP connect costs well under a
    # millisecond on 127.0.0.1, and both servers pay it alike.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        for turn in range(1, args.turns + 1):
            for u in range(args.users):
                for (config, url), report in zip(targets, reports, strict=True):
                    chat = chats[config][u]
                    chat.append(
                        {"role": "user", "content": f"Question {turn}: what do the notes say about {WORDS[u + turn]}?"}
                    )
                    began = time.perf_counter()
                    ttft, text, prompt, cached, completion = await one_turn(client, url, chat, args.max_tokens)
                    report.seconds += time.perf_counter() - began
                    chat.append({"role": "assistant", "content": text})
                    report.turns.append(Turn(u, turn, ttft, prompt, cached, completion))
                    log.info("%s user %d turn %d: ttft %.3f s, %d/%d cached", config, u, turn, ttft, cached, prompt)
    return reports


def llamaserve_cmd(port: int, args: argparse.Namespace, extra: list[str]) -> list[str]:
    return [
        sys.executable, "-m", "server", "--port", str(port), "--parallel", str(args.parallel),
        "--ctx-size", str(args.ctx_size), "--no-browser", "--log-level", "warning", *extra,
    ]  # fmt: skip


def server_cmd(config: str, port: int, args: argparse.Namespace, cache_dir: str) -> list[str]:
    if config == "off":
        return llamaserve_cmd(port, args, ["--cache-ram", "0"])
    if config == "ram":
        return llamaserve_cmd(port, args, ["--cache-ram", str(args.cache_ram)])
    if config == "disk":
        return llamaserve_cmd(port, args, ["--cache-ram", str(args.cache_ram), "--cache-dir", cache_dir])
    from server.engine.llama.model_files import bundled_model_path

    # The same slots and context per slot as llamaserve (-c is the whole context, split among -np
    # slots), and its default prompt cache (--cache-ram 8192 MiB, idle slots saved).
    model = args.model or str(bundled_model_path())
    return [args.llama_server, "-m", model, "--port", str(port), "-np", str(args.parallel),
            "-c", str(args.ctx_size * args.parallel)]  # fmt: skip


def run_group(configs: list[str], args: argparse.Namespace, cache_dir: str) -> list[Report]:
    """Run the configurations side by side (one server each, interleaved turn by turn)."""
    if "disk" in configs:
        port = free_port()
        with serving(server_cmd("disk", port, args, cache_dir), port) as url:
            asyncio.run(workload([("disk (filling)", url)], args))  # its states reach the disk
    with contextlib.ExitStack() as stack:
        targets = []
        for config in configs:
            port = free_port()
            targets.append((config, stack.enter_context(serving(server_cmd(config, port, args, cache_dir), port))))
        return asyncio.run(workload(targets, args))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prompt_cache_bench", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=16)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--system-tokens", type=int, default=1000, help="words in each system prompt (about as many tokens)")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--ctx-size", type=int, default=2048, help="context tokens per slot")
    p.add_argument("--cache-ram", type=int, default=4096, help="MiB for llamaserve's RAM tier")
    p.add_argument(
        "--configs",
        default="off,ram+llama-server,disk",
        help="configurations in order; a+b runs a and b side by side, interleaved turn by turn",
    )
    p.add_argument("--llama-server", help="llama.cpp's llama-server binary (the reference; left out if not given)")
    p.add_argument("--model", help="GGUF for llama-server (default: the bundled SmolLM2, which llamaserve serves)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    groups = [[c for c in g.split("+") if c != "llama-server" or args.llama_server] for g in args.configs.split(",")]
    summaries = []
    with tempfile.TemporaryDirectory(prefix="llamaserve-cache-") as cache_dir:
        for group in [g for g in groups if g]:
            try:
                done = [r.summary() for r in run_group(group, args, cache_dir)]
                log.info("%s", json.dumps(done))  # each group's figures as soon as they are in
                summaries += done
            except (SystemExit, httpx.HTTPError) as exc:  # one server's failure leaves the others' figures
                log.error("%s failed: %s", "+".join(group), exc)
    by = {str(s["config"]): s for s in summaries}
    ratios: dict[str, float] = {}
    if "ram" in by and "llama-server" in by:
        ratios["ttft_p50_llama_server_over_ram"] = round(
            float(by["llama-server"]["ttft_p50_turns_2plus"]) / float(by["ram"]["ttft_p50_turns_2plus"]), 2
        )
        ratios["cached_share_ram_over_llama_server"] = round(
            float(by["ram"]["cached_share_turns_2plus"])
            / max(float(by["llama-server"]["cached_share_turns_2plus"]), 1e-9),
            2,
        )
    if "off" in by and "disk" in by:
        ratios["first_turn_back_off_over_disk"] = round(
            float(by["off"]["ttft_p50_turn_1"]) / float(by["disk"]["ttft_p50_turn_1"]), 2
        )
    out = {"workload": vars(args), "results": summaries, "ratios": ratios}
    if args.json:
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 0
    head = (
        "| config | TTFT p50 turns 2+ | TTFT p95 turns 2+ | TTFT p50 turn 1 | prompt tokens computed "
        "| cached share turns 2+ | tokens/s |"
    )
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        rows.append(
            f"| {s['config']} | {s['ttft_p50_turns_2plus']} s | {s['ttft_p95_turns_2plus']} s "
            f"| {s['ttft_p50_turn_1']} s "
            f"| {s['computed_prompt_tokens']} | {float(s['cached_share_turns_2plus']):.1%} | {s['tokens_per_second']} |"
        )
    sys.stdout.write("\n".join(rows) + "\n" + "".join(f"{k}: {v}\n" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
