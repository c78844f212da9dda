"""The parts of the RPC support that need no worker: endpoints, placement from the load log, settings."""

from __future__ import annotations

import socket

import pytest

from server.cli.preflight import check_rpc
from server.engine.llama.loading import parse_layers, parse_placement
from server.engine.llama.rpc import RpcError, parse_endpoint, probe, rpc_supported
from server.settings import ConfigError, Settings, load


def test_make_install_builds_llama_cpp_with_rpc() -> None:
    # Not a skip: without RPC the split tests in tests/model skip, so this one fails and says why.
    assert rpc_supported(), "llama.cpp lacks its RPC backend: `make install` builds it with -DGGML_RPC=ON"


def test_endpoints_are_host_and_port() -> None:
    assert parse_endpoint("127.0.0.1:50052") == ("127.0.0.1", 50052)
    assert parse_endpoint("[::1]:9") == ("::1", 9)
    for bad in ("127.0.0.1", ":50052", "host:0", "host:http", "host:70000"):
        with pytest.raises(RpcError):
            parse_endpoint(bad)


def test_probe_tells_a_listener_from_nobody() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert probe(f"127.0.0.1:{port}") is None
    assert probe(f"127.0.0.1:{port}") is not None  # closed now: refused


def test_placement_comes_from_llama_cpps_load_log() -> None:
    lines = [
        "load_tensors: offloading 30 repeating layers to GPU\n",
        "load_tensors:   CPU_Mapped model buffer size =    15.75 MiB\n",
        "load_tensors: RPC0[127.0.0.1:50052] model buffer size =    34.00 MiB\n",
        "load_tensors: RPC1[127.0.0.1:50053] model buffer size =    34.50 MiB\n",
    ]
    assert parse_placement(lines) == {
        "CPU_Mapped": round(15.75 * 2**20),
        "RPC0[127.0.0.1:50052]": 34 * 2**20,
        "RPC1[127.0.0.1:50053]": round(34.5 * 2**20),
    }


def test_layers_per_device_come_from_the_load_log_too() -> None:
    lines = [
        f"load_tensors: layer {i:3d} assigned to device {'RPC0' if i < 15 else 'RPC1'}, is_swa = 0\n" for i in range(30)
    ]
    lines.append("load_tensors: layer  30 assigned to device CPU, is_swa = 0\n")
    assert parse_layers(lines) == {"RPC0": 15, "RPC1": 15, "CPU": 1}


def test_rpc_and_tensor_split_take_llama_cpps_comma_lists_and_put_the_layers_on_the_workers() -> None:
    s = load({"rpc": ["10.0.0.2:50052,10.0.0.3:50052"], "tensor_split": ["3,1"]})
    assert s.rpc == ["10.0.0.2:50052", "10.0.0.3:50052"] and s.tensor_split == [3.0, 1.0]
    assert s.n_gpu_layers == 999  # llama.cpp offloads to RPC devices only with n_gpu_layers > 0
    assert load({"rpc": ["10.0.0.2:50052"], "n_gpu_layers": 10}).n_gpu_layers == 10  # given: kept
    assert Settings().n_gpu_layers == 0 and Settings().rpc == []


def test_an_unreachable_worker_is_refused_before_loading() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ConfigError, match=rf"127\.0\.0\.1:{port} cannot be reached"):
            check_rpc(Settings(rpc=[f"127.0.0.1:{port}"]))
    with pytest.raises(ConfigError, match="not an RPC endpoint"):
        check_rpc(Settings(rpc=["nowhere"]))


def test_rpc_wait_waits_for_a_worker_that_starts_after_the_head(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    import server.cli.preflight as preflight

    monkeypatch.setattr(preflight, "RPC_WAIT_POLL_SECONDS", 0.05)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        # The "worker" starts listening 0.3 s after the head began to wait for it.
        timer = threading.Timer(0.3, s.listen)
        timer.start()
        started = time.monotonic()
        check_rpc(Settings(rpc=[f"127.0.0.1:{port}"], rpc_wait=10))
        assert 0.25 < time.monotonic() - started < 5
        timer.join()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # never listens: the wait ends with the usual refusal
        with pytest.raises(ConfigError, match=r"after waiting 0\.2 s"):
            check_rpc(Settings(rpc=[f"127.0.0.1:{port}"], rpc_wait=0.2))
