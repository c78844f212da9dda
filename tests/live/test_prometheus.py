"""A real Prometheus scrapes a live llamaserve; PromQL answers must match the traffic the test sent.

Also: promtool accepts the live /metrics output, config/alerts.yml and config/prometheus.yml.
Needs the ``prometheus`` and ``promtool`` binaries (Debian package ``prometheus``; scripts/test-deps.sh
installs it); skipped where they are missing.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.api.app import create_app
from server.engine.fake import FakeEngine
from server.settings import Settings
from tests.conftest import ROOT
from tests.helpers.live import free_port, live_server

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")

pytestmark = [
    pytest.mark.live,
    pytest.mark.prometheus,
    pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None, reason="prometheus/promtool not installed"),
]

CHAT = "/v1/chat/completions"
REPLY = "hello world"  # the fake engine's reply to every prompt but "long": 11 byte tokens
ALERTS = ROOT / "config" / "alerts.yml"


def fake_app(*, max_queue: int) -> Any:
    engine = FakeEngine(reply=lambda p: "z" * 100_000 if "long" in p else REPLY, n_slots=1, step_delay=0.005)
    return create_app(Settings(max_queue=max_queue), engine=engine)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@contextmanager
def prometheus(target: str, workdir: Path) -> Iterator[str]:
    """A real Prometheus scraping ``target`` (host:port) every second; yields its base URL."""
    assert PROMETHEUS is not None
    port = free_port()
    config = workdir / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(str(ALERTS))}]\n"
        "scrape_configs:\n"
        "  - job_name: llamaserve\n"
        f"    static_configs: [{{targets: [{json.dumps(target)}]}}]\n"
    )
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (workdir / "prometheus.log").read_text()
        try:
            return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, "prometheus to start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(prom: str, expr: str) -> float | None:
    """The value of a one-series instant query, or None when it has no series."""
    result = query(prom, expr)
    assert len(result) <= 1, f"{expr} gave {len(result)} series"
    return float(result[0]["value"][1]) if result else None


def chat(url: str, content: str = "hi", **extra: Any) -> httpx.Response:
    return httpx.post(f"{url}{CHAT}", json={"messages": [{"role": "user", "content": content}], **extra}, timeout=30)


def stream_all(url: str) -> str:
    text = ""
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", f"{url}{CHAT}", json=body, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                text += json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
            elif line == "data: [DONE]":
                return text
    raise AssertionError("stream ended without [DONE]")


def test_prometheus_sees_what_the_server_did(tmp_path: Path) -> None:
    with live_server(fake_app(max_queue=0)) as url, prometheus(url.removeprefix("http://"), tmp_path) as prom:
        # A first scrape before any traffic, so rate() has a zero to start from.
        wait_until(lambda: scalar(prom, 'up{job="llamaserve"}') == 1, "the first scrape")
        wait_until(lambda: scalar(prom, "llamaserve_slots") == 1, "the first llamaserve sample")

        # 3 plain and 2 streaming requests, each generating REPLY.
        prompt_tokens = set()
        for _ in range(3):
            r = chat(url)
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == REPLY
            prompt_tokens.add(r.json()["usage"]["prompt_tokens"])
        (hi_tokens,) = prompt_tokens
        for _ in range(2):
            assert stream_all(url) == REPLY

        # One stream cancelled mid-way; while it holds the only slot, one request is refused (no queue).
        long_body = {"messages": [{"role": "user", "content": "long"}], "stream": True}
        with httpx.stream("POST", f"{url}{CHAT}", json=long_body, timeout=30) as r:
            # Not `for ... break`: abandoning httpx's line iterator closes the connection at once.
            lines = r.iter_lines()
            while '"content":"z"' not in next(lines):
                pass
            assert chat(url).status_code == 429
        # Leaving the block closed the connection mid-stream: the server cancels the request.
        # One prompt longer than the context, one malformed request.
        assert chat(url, "x" * 3000).json()["error"]["code"] == "context_length_exceeded"
        assert chat(url, messages="not a list").status_code == 400  # overrides the messages field
        wait_until(lambda: httpx.get(f"{url}/health").json()["slots_busy"] == 0, "the cancelled slot to free")

        ok = f'llamaserve_requests_total{{endpoint="{CHAT}",status="200"}}'
        bad = f'llamaserve_requests_total{{endpoint="{CHAT}",status="400"}}'
        # A scrape can fall between any two of these requests (CI once caught one between the two 400s),
        # so the wait is for a scrape that holds the last request and the freed slot, not only the
        # cancelled stream; every assertion below reads that scrape or a later one.
        wait_until(
            lambda: (
                scalar(prom, ok) == 6
                and scalar(prom, "llamaserve_requests_cancelled_total") == 1
                and scalar(prom, bad) == 2
                and scalar(prom, "llamaserve_slots_busy") == 0
            ),
            "prometheus to scrape the final counts",
        )
        assert scalar(prom, f'llamaserve_requests_total{{endpoint="{CHAT}",status="429"}}') == 1
        assert scalar(prom, 'llamaserve_request_success_total{finish_reason="stop"}') == 5
        # Per-model series carry the model; HTTP-level ones do not (one series per status, whatever the model).
        assert scalar(prom, 'llamaserve_request_success_total{finish_reason="stop",model="fake-model"}') == 5
        assert scalar(prom, f'llamaserve_requests_total{{endpoint="{CHAT}",status="200",model=""}}') == 6
        for reason in ("queue_full", "context_overflow", "invalid"):
            assert scalar(prom, f'llamaserve_requests_rejected_total{{reason="{reason}"}}') == 1, reason
        # Every sequence that got a token has a TTFT, the cancelled one too; sizes only for successes.
        assert scalar(prom, "llamaserve_time_to_first_token_seconds_count") == 6
        assert scalar(prom, "llamaserve_request_generation_tokens_count") == 5
        assert scalar(prom, "llamaserve_request_generation_tokens_sum") == 5 * len(REPLY)
        assert scalar(prom, "llamaserve_request_prompt_tokens_sum") == 5 * hi_tokens
        # The "long" prompt is the "hi" prompt with two more bytes.
        assert scalar(prom, "llamaserve_prompt_tokens_total") == 6 * hi_tokens + 2
        generated = scalar(prom, "llamaserve_generation_tokens_total")
        assert generated is not None and generated > 5 * len(REPLY)  # plus what the cancelled stream got
        # Repeats of one prompt in the one slot reuse all but its last token.
        cached = scalar(prom, "llamaserve_prompt_cache_hit_tokens_total")
        assert cached is not None and cached >= 4 * (hi_tokens - 1)

        # Distributions through PromQL, as a dashboard would read them. 11 tokens lie in the (8, 16] bucket.
        # Per model, as the README's example queries aggregate: one series, named by its model.
        def quantile(q: float, histogram: str) -> float:
            expr = f"histogram_quantile({q}, sum by (model, le) (rate({histogram}_bucket[1m])))"
            (result,) = query(prom, expr)
            assert result["metric"] == {"model": "fake-model"}, result
            return float(result["value"][1])

        p50_tokens = quantile(0.5, "llamaserve_request_generation_tokens")
        assert 8 < p50_tokens <= 16
        p50_ttft = quantile(0.5, "llamaserve_time_to_first_token_seconds")
        assert math.isfinite(p50_ttft) and p50_ttft > 0
        p95_itl = quantile(0.95, "llamaserve_inter_token_latency_seconds")
        assert math.isfinite(p95_itl) and p95_itl > 0

        # Gauges back at rest; the pool and model are described; process metrics come along.
        assert scalar(prom, "llamaserve_slots_busy") == 0
        assert scalar(prom, "llamaserve_requests_running") == 0
        assert scalar(prom, "llamaserve_requests_waiting") == 0
        info = query(prom, "llamaserve_model_info")
        assert [s["metric"]["model"] for s in info] == ["fake-model"]
        assert info[0]["metric"]["n_parallel"] == "1" and info[0]["metric"]["n_ctx"] == "2048"
        assert (scalar(prom, "process_resident_memory_bytes") or 0) > 0
        # The one slot last ran the cancelled stream, and a cancel frees its KV cells.
        assert scalar(prom, "llamaserve_kv_cache_usage_ratio") == 0

        # The example alerts load and evaluate against real series without errors (and none fire).
        def rules_healthy() -> bool:
            groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
            rules = [rule for g in groups for rule in g["rules"]]
            assert {rule["name"] for rule in rules} == {
                "LlamaserveQueueBackingUp",
                "LlamaserveTimeToFirstTokenHigh",
                "LlamaserveKVCacheNearlyFull",
            }
            return all(rule["health"] == "ok" and rule["state"] == "inactive" for rule in rules)

        wait_until(rules_healthy, "the alert rules to evaluate")


def test_promtool_accepts_the_live_metrics() -> None:
    assert PROMTOOL is not None
    with live_server(fake_app(max_queue=4)) as url:
        assert chat(url).status_code == 200
        assert chat(url, messages="bad").status_code == 400
        body = httpx.get(f"{url}/metrics", timeout=10).content
    assert b"llamaserve_request_success_total" in body
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_promtool_accepts_the_shipped_configs_and_the_alerts_fire_when_they_should() -> None:
    assert PROMTOOL is not None
    for args in (
        ["check", "rules", str(ALERTS)],
        ["check", "config", str(ROOT / "config" / "prometheus.yml")],
        # Synthetic series: each alert fires on the condition it names and stays quiet otherwise.
        ["test", "rules", str(Path(__file__).with_name("alerts_test.yml"))],
    ):
        check = subprocess.run([PROMTOOL, *args], capture_output=True, timeout=60)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
