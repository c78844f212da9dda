"""Decode throughput of the bundled model loaded locally vs split over two loopback RPC workers.

``python -m benchmarks.rpc_split`` (or ``make bench-rpc``). Both engines run in this process, one
after the other and again (interleaved, to average out a noisy machine); the workers are real
``llamaserve rpc-worker`` processes on free 127.0.0.1 ports. On loopback a split costs only the RPC
protocol's own overhead: a round trip per device boundary per step, with no network in it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import ExitStack

from benchmarks.engine_decode import measure_engine_decode
from benchmarks.serving import free_port
from server.engine.llama.engine import LlamaEngine
from server.engine.llama.model_files import bundled_model_path
from server.engine.llama.rpc import probe, rpc_supported


def _worker(stack: ExitStack, threads: int) -> str:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "rpc-worker", "--port", str(port), "--threads", str(threads)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    endpoint = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while probe(endpoint, timeout=0.5) is not None:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the rpc-worker on {endpoint} did not start")
        time.sleep(0.1)
    return endpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rpc_split", description=__doc__.splitlines()[0])
    p.add_argument("--streams", default="1,4", help="concurrent sequences (default: %(default)s)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per sequence (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="threads of each worker and of the head (default: 1)")
    args = p.parse_args(argv)
    if not rpc_supported():
        raise SystemExit("llama.cpp was built without RPC: run `make install`")
    streams = [int(x) for x in args.streams.split(",")]
    path = str(bundled_model_path())
    ctx = 64 + args.tokens + 64
    rows: dict[str, dict[int, list[float]]] = {"local": {}, "split": {}}
    with ExitStack() as stack:
        endpoints = [_worker(stack, args.threads), _worker(stack, args.threads)]
        shape = {"n_slots": max(streams), "n_ctx_per_seq": ctx, "n_threads": args.threads}
        engines = {
            "local": LlamaEngine(path, model_id="local", **shape),
            "split": LlamaEngine(
                path, model_id="split", rpc_servers=endpoints, tensor_split=[1.0, 1.0], n_gpu_layers=999, **shape
            ),
        }
        try:
            for _ in range(args.rounds):
                for kind, engine in engines.items():
                    for n in streams:
                        rate = measure_engine_decode(path, n, args.tokens, engine=engine)
                        rows[kind].setdefault(n, []).append(rate)
        finally:
            for engine in engines.values():
                engine.close()
    out = {
        "streams": {n: {k: round(max(rows[k][n]), 1) for k in rows} for n in streams},
        "split_vs_local": {n: round(max(rows["split"][n]) / max(rows["local"][n]), 2) for n in streams},
    }
    sys.stdout.write(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
